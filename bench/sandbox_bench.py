"""Per-step cost of the sandbox: seccomp + cgroup limits against neither, same run.

    python3 bench/sandbox_bench.py [N]

Starts a private embedded containerd under /tmp, imports the busybox test image and
runs, interleaved (so load from elsewhere on the machine hits both alike), N (default
40) steps of each kind through ContainerdRuntime.run, once per OCI runtime (crun, the
default where it can run, then runc: ``containerd.oci_runtime``, kata/oci_runtime.py), with

- sandbox: the spec kata builds (containerd's seccomp profile, memory/cpu/pids limits);
- bare:    the same spec without ``linux.seccomp`` and with no memory/cpu/pids limits
           (devices still denied), patched in for this benchmark only.

Two workloads: a trivial ``true`` step (what the sandbox adds to starting a step:
runc compiling and loading the BPF filter, writing three more cgroup files) and a
syscall-heavy step (``dd bs=1`` of 200,000 bytes: 400,000 read/write syscalls, each
through the filter). Prints medians and the ratio against the target <= 1.05x for the
runtime ``auto`` picks on this host, runc's for comparison (what every step paid before
crun), and each runtime's CPU per container (``<runtime> run`` of the same bundle).
"""

from __future__ import annotations

import io
import json
import resource
import secrets
import statistics
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kata.runtimes.base import StepSpec  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd import spec as spec_module  # noqa: E402
from kata.runtimes.containerd.config import RuntimeConfig  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import (BUSYBOX_REF, busybox_image, busybox_layer,  # noqa: E402
                            write_oci_archive)
from timing import timed_call  # noqa: E402

TARGET = 1.05
WORKLOADS = {  # name -> (argv, held to the target)
    "true": (("true",), True),
    "build-like": (("sh", "-c", "seq 1 100000 | sort -rn | md5sum >/dev/null; "
                    "find / -xdev | wc -l >/dev/null"), True),
    "400k syscalls": (("sh", "-c", "dd if=/dev/zero of=/dev/null bs=1 count=200000 "
                       "2>/dev/null"), False),
}


class Bare:
    """Patches spec.py's sandbox pieces out while active (this process only)."""

    def __enter__(self) -> None:
        self.saved = spec_module.seccomp_profile, spec_module.linux_resources
        spec_module.seccomp_profile = lambda caps: None  # type: ignore[assignment]
        spec_module.linux_resources = lambda limits: {  # type: ignore[assignment]
            "devices": [{"allow": False, "access": "rwm"}]}

    def __exit__(self, *exc: object) -> None:
        spec_module.seccomp_profile, spec_module.linux_resources = self.saved


def runtime_cpu(base: Path, n: int, binary: str = "runc") -> tuple[float, float]:
    """Median CPU seconds of `<binary> run` of `true` with kata's spec and with the bare one."""
    bundle = base / "bundle"
    if not (bundle / "rootfs").is_dir():
        (bundle / "rootfs").mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as tar:
            tar.extractall(bundle / "rootfs")
    step = StepSpec(image="sha256:" + "0" * 64, argv=("true",))
    configs = []
    for bare in (False, True):
        if bare:
            with Bare():
                cfg = spec_module.build_spec(step, container_id="bench", image_env=())
        else:
            cfg = spec_module.build_spec(step, container_id="bench", image_env=())
        cfg["root"] = {"path": str(bundle / "rootfs")}
        cfg["linux"]["cgroupsPath"] = f"/kata/bench-{secrets.token_hex(4)}"
        configs.append(json.dumps(cfg))
    times: list[list[float]] = [[], []]
    for i in range(n + 2):
        for which, cfg in enumerate(configs):
            (bundle / "config.json").write_text(cfg)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([binary, "--root", str(base / binary), "run", "--bundle",
                            str(bundle), f"b-{secrets.token_hex(6)}"], check=True,
                           stdin=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= 2:  # the first two are warm-up
                times[which].append(after.ru_utime + after.ru_stime
                                    - before.ru_utime - before.ru_stime)
    return statistics.median(times[0]), statistics.median(times[1])


def compare(rt, digest: str, n: int) -> tuple[float, dict[str, float]]:
    """Interleaved sandbox/bare medians per workload on ``rt``: (worst held ratio,
    {workload: sandboxed median seconds})."""
    never = threading.Event()

    def sink(stream: str, line: bytes) -> None:
        pass

    def step(argv: tuple[str, ...]) -> float:
        seconds, status = timed_call(
            lambda: rt.run(StepSpec(image=digest, argv=argv), sink, never))
        assert status == 0
        return seconds

    def bare(argv: tuple[str, ...]) -> float:
        with Bare():
            return step(argv)

    worst, sandboxed = 0.0, {}
    for name, (argv, held) in WORKLOADS.items():
        for _ in range(3):  # warm up
            step(argv)
            bare(argv)
        with_t: list[float] = []
        bare_t: list[float] = []
        for i in range(n):
            if i % 2:  # alternate which goes first
                with_t.append(step(argv))
                bare_t.append(bare(argv))
            else:
                bare_t.append(bare(argv))
                with_t.append(step(argv))
        w, b = statistics.median(with_t), statistics.median(bare_t)
        sandboxed[name] = w
        verdict = ("ok" if w / b <= TARGET else "OVER") if held else "worst case"
        if held:
            worst = max(worst, w / b)
        print(f"  {name:14s}: sandbox {w * 1e3:6.1f} ms, bare {b * 1e3:6.1f} ms, "
              f"ratio {w / b:.3f}x ({verdict})")
    return worst, sandboxed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    with embedded_containerd("ks") as paths:
        base = paths.root.parent
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(base))
        runc = None
        try:
            rt.import_image(write_oci_archive(busybox_image(), base / "bb.tar"))
            digest = rt.resolve_image(BUSYBOX_REF)
            # the bare spec really is bare, the sandboxed one really is not
            with Bare():
                s = spec_module.build_spec(StepSpec(image=digest, argv=("true",)),
                                           container_id="x", image_env=())
            assert s["linux"]["seccomp"] is None and "memory" not in s["linux"]["resources"]
            s = spec_module.build_spec(StepSpec(image=digest, argv=("true",)),
                                       container_id="x", image_env=())
            assert s["linux"]["seccomp"]["syscalls"] and s["linux"]["resources"]["pids"]
            runtimes = [(rt.oci.name, rt)]
            if rt.oci.name != "runc":
                runc = ContainerdRuntime.connect(address=paths.address, state_dir=str(base),
                                                 config=RuntimeConfig(oci_runtime="runc"))
                runtimes.append(("runc", runc))
            print(f"{n} steps of each kind, interleaved, one daemon and image, per OCI runtime "
                  f"(medians; target <= {TARGET:.2f}x; auto picks {rt.oci.name} here: "
                  f"{rt.oci.why}):")
            results = {}
            for name, each in runtimes:
                print(f" {name}:")
                results[name] = compare(each, digest, n)
            worst = results[rt.oci.name][0]
            print(f"per-step ratio on {rt.oci.name} (the default here) {worst:.3f}x against the "
                  f"target {TARGET:.2f}x: {'met' if worst <= TARGET else 'NOT met'}")
            if "runc" in results and rt.oci.name != "runc":
                print(f"  runc's, for comparison (every step ran on runc before): "
                      f"{results['runc'][0]:.3f}x")
                for wl, sec in results[rt.oci.name][1].items():
                    print(f"  sandboxed step {wl!r}: {rt.oci.name} / runc = "
                          f"{sec / results['runc'][1][wl]:.3f}x")
            for name, _ in runtimes:
                w, b = runtime_cpu(base, n, name)
                print(f"CPU of `{name} run` per container: sandbox {w * 1e3:.1f} ms, bare "
                      f"{b * 1e3:.1f} ms: +{(w - b) * 1e3:.1f} ms ({w / b:.3f}x)")
            left = rt.leftovers()
            print("leftovers after the run:", "none" if not any(left.values()) else left)
        finally:
            if runc is not None:
                runc.close()
            rt.close()


if __name__ == "__main__":
    main()
