"""Kata's own CPU per container step: a first build of N independent trivial steps.

    python3 bench/step_cpu_bench.py [N] [--profile FILE]

Starts a private embedded containerd under /tmp, imports the busybox test image, writes
a pipeline of N (default 200) independent `true` steps, compiles it, and realises it
in this process against a fresh store (every step misses and runs in a container).
Kata's own CPU is this process's user+sys time (every thread: the realiser loop, gRPC,
FIFO readers, store writes), measured with getrusage(RUSAGE_SELF) around the realise;
containerd, its shims and runc are other processes and are not counted. The same graph
is run twice (two fresh stores) and the better figure is kept.

Prints the CPU per step against the target (<= 20 ms) and against the floor, bare
`runc run` of the same bundle (wall time per step, measured in the same run).
`--profile FILE` writes a cProfile of the second realise (all threads are not
profiled: only the thread that calls it and what it runs inline).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes import FakeStep, compile_steps  # noqa: E402
from kata.realise.realiser import Realiser, RealiseOptions  # noqa: E402
from kata.runtimes.base import StepSpec  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd.spec import build_spec  # noqa: E402
from store import Store  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import BUSYBOX_REF, busybox_image, busybox_layer, write_oci_archive  # noqa: E402

TARGET_MS = 20.0


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_cpu() -> float:
    """What this process's own children cost (`ip`, CNI plugins kata runs), once reaped."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def realise_once(base: Path, rt, digest: str, n: int, tag: str, profile: str | None) -> tuple[float, float]:
    """(kata CPU seconds, wall seconds) of a first build of n trivial steps."""
    repo = base / f"repo-{tag}"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    steps = [FakeStep(f"s{i}", commands=(f"true {i}",)) for i in range(n)]
    graph = compile_steps(repo, steps, digest=digest)
    store = Store.open(base / f"store-{tag}")
    opts = RealiseOptions(repo_root=repo, work_root=Path(store.state_dir) / "work",
                          max_parallel=2)
    realiser = Realiser(graph, store=store, runtime=rt, emit=lambda e: None, options=opts)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    c0, w0 = cpu(), time.perf_counter()
    result = realiser.run()
    c1, w1 = cpu(), time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    assert result.ok, [(s.name, s.message) for s in result.steps.values() if s.status != "passed"]
    store.close()
    return c1 - c0, w1 - w0


def runc_floor(base: Path, digest: str, n: int = 20) -> float:
    bundle = base / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    import io

    with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as tar:
        tar.extractall(bundle / "rootfs", filter="fully_trusted")
    cfg = build_spec(StepSpec(image=digest, argv=("true",)), container_id="bench", image_env=())
    cfg["root"] = {"path": str(bundle / "rootfs")}
    del cfg["linux"]["cgroupsPath"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    times = []
    for i in range(n):
        t = time.perf_counter()
        subprocess.run(["runc", "--root", str(base / "runc"), "run", "--bundle", str(bundle),
                        f"floor-{i}"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    args = sys.argv[1:]
    profile = None
    if "--profile" in args:
        i = args.index("--profile")
        profile = args[i + 1]
        del args[i:i + 2]
    n = int(args[0]) if args else 200
    with embedded_containerd("ks") as paths, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(paths.root.parent))
        try:
            rt.import_image(write_oci_archive(busybox_image(), base / "bb.tar"))
            digest = rt.resolve_image(BUSYBOX_REF)
            runs = [realise_once(base, rt, digest, n, "a", None),
                    realise_once(base, rt, digest, n, "b", profile)]
            floor = runc_floor(base, digest)
        finally:
            rt.close()
    cpu_s, wall_s = min(runs)
    per_step = cpu_s / n * 1e3
    print(f"first build of {n} independent `true` steps, max_parallel 2 (best of 2):")
    print(f"  wall {wall_s:.2f} s = {wall_s / n * 1e3:.1f} ms per step")
    print(f"  kata's own CPU (user+sys, this process) {cpu_s:.2f} s = {per_step:.1f} ms per step "
          f"| ratio {per_step / TARGET_MS:.2f}x the 20 ms target (target <= 1.0x)")
    print(f"  bare `runc run` of `true` (the floor, wall): {floor * 1e3:.1f} ms per step "
          f"| kata CPU / runc wall {per_step / (floor * 1e3):.2f}x")


if __name__ == "__main__":
    main()
