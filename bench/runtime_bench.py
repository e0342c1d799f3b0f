"""Per-step cost of the containerd runtime against `ctr run --rm` and bare runc.

    python3 bench/runtime_bench.py [N]

Starts a private embedded containerd under /tmp, imports the busybox test image,
then times N (default 50) trivial `true` steps one after another through
ContainerdRuntime.run, through `ctr run --rm` (ctr only here, never in kata) on the
same daemon and image, and through `runc run` of a prepared bundle (the floor);
then 8 concurrent steps' throughput against sequential. Prints medians and ratios.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kata.runtimes.base import StepSpec  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd.spec import build_spec  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import BUSYBOX_REF, busybox_image, busybox_layer, write_oci_archive  # noqa: E402
from timing import timed  # noqa: E402


def ms(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=10)
    return f"median {statistics.median(xs) * 1e3:6.1f} ms (p10 {q[0] * 1e3:.1f}, p90 {q[-1] * 1e3:.1f})"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with embedded_containerd("kb") as paths:
        base = paths.root.parent
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(base))
        rt.import_image(write_oci_archive(busybox_image(), base / "bb.tar"))
        digest = rt.resolve_image(BUSYBOX_REF)
        spec = StepSpec(image=digest, argv=("true",))
        never = threading.Event()
        sink = lambda s, line: None  # noqa: E731

        def kata_step() -> None:
            assert rt.run(spec, sink, never) == 0

        def ctr_step() -> None:
            subprocess.run(["ctr", "-a", paths.address, "-n", "kata", "run", "--rm",
                            "--snapshotter", "overlayfs", BUSYBOX_REF,
                            f"ctr-{secrets.token_hex(6)}", "true"], check=True)

        bundle = base / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        import io

        with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as tar:
            tar.extractall(bundle / "rootfs")
        cfg = build_spec(spec, container_id="bench", image_env=())
        cfg["root"] = {"path": str(bundle / "rootfs")}
        del cfg["linux"]["cgroupsPath"]
        (bundle / "config.json").write_text(json.dumps(cfg))

        def runc_step() -> None:
            subprocess.run(["runc", "--root", str(base / "runc"), "run", "--bundle", str(bundle),
                            f"b-{secrets.token_hex(6)}"], check=True, stdin=subprocess.DEVNULL)

        for fn in (kata_step, ctr_step, runc_step):  # warm up
            fn()
        # interleaved, so that load from elsewhere on the machine hits all three alike
        kata_t, ctr_t, runc_t = [], [], []
        for _ in range(n):
            kata_t += timed(kata_step, 1)
            ctr_t += timed(ctr_step, 1)
            runc_t += timed(runc_step, 1)
        print(f"{n} sequential `true` steps on one daemon and image:")
        print(f"  kata runtime : {ms(kata_t)}")
        print(f"  ctr run --rm : {ms(ctr_t)}")
        print(f"  runc run     : {ms(runc_t)}   (floor: no containerd)")
        k, c, r = (statistics.median(x) for x in (kata_t, ctr_t, runc_t))
        print(f"  kata / ctr   : {k / c:.2f}x (target <= 0.75x)")
        print(f"  kata / runc  : {k / r:.2f}x the floor")

        total = 40
        t = time.perf_counter()
        for _ in range(total):
            kata_step()
        seq = total / (time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: kata_step(), range(total)))
        par = total / (time.perf_counter() - t)
        print(f"{total} steps: sequential {seq:.1f} steps/s, 8 concurrent {par:.1f} steps/s "
              f"({par / seq:.2f}x on this machine's 2 cores)")
        left = rt.leftovers()
        print("leftovers after the run:", "none" if not any(left.values()) else left)
        rt.close()


if __name__ == "__main__":
    main()
