"""Per-step cost of the sandbox: seccomp + cgroup limits against neither, same run.

    python3 bench/sandbox_bench.py [N]

Starts a private embedded containerd under /tmp, imports the busybox test image and
runs, interleaved (so load from elsewhere on the machine hits both alike), N (default
40) steps of each kind through ContainerdRuntime.run, once per OCI runtime (crun, the
default where it can run, then runc: ``containerd.oci_runtime``, kata/oci_runtime.py), with

- sandbox: the spec kata builds (containerd's seccomp profile, memory/cpu/pids limits;
           crun gets the profile compiled once by kata in place of its rules:
           seccompbpf.py);
- bare:    the same spec without ``linux.seccomp`` and with no memory/cpu/pids limits
           (devices still denied), patched in for this benchmark only.

Two workloads: a trivial ``true`` step (what the sandbox adds to starting a step:
loading the BPF filter, which runc also compiles per container and crun gets compiled
from kata, writing three more cgroup files) and a
syscall-heavy step (``dd bs=1`` of 200,000 bytes: 400,000 read/write syscalls, each
through the filter). Per step it measures the wall time and the CPU time of everything
the step costs: the embedded containerd, its shims and the OCI runtime (in a cgroup of
their own), the container's processes (under a cgroup parent of the benchmark's own) and
this process, the step's deferred release included. The ratio held to the
target <= 1.05x is the CPU one: on a shared 2-core machine at load 15-30, wall medians of
a 200 ms step move by more than the 5% being measured, CPU time less (both are printed).
Less, not enough: at load ~10 the ratio of the two CPU medians of the 200 ms build-like
step moved between 0.96x and 1.13x from run to run. The figure held is therefore the
median of the paired ratios (each sandboxed step over the bare one run next to it), which
cancels load that drifts during the run; the ratio of medians is printed beside it. Printed for the runtime ``auto`` picks on this host, for runc (what every step
paid before crun), and each runtime's CPU per container (``<runtime> run`` of the same
bundle).
"""

from __future__ import annotations

import io
import json
import os
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
from kata.runtimes.containerd.seccompbpf import bpf_annotations  # noqa: E402
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
        if binary == "crun" and cfg["linux"]["seccomp"]:  # as kata hands crun the profile:
            cfg["annotations"] = bpf_annotations(cfg["linux"]["seccomp"])  # compiled, in
            del cfg["linux"]["seccomp"]  # place of its rules (seccompbpf.py, task.py)
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


class DaemonCpu:
    """CPU seconds used by the embedded containerd and everything it starts (its shims and
    the OCI runtime they run), from a cgroup of its own (v1 cpuacct or v2 cpu.stat), plus
    this process's (kata's side of each step). Far less sensitive to other load on the
    machine than wall time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        v1 = Path("/sys/fs/cgroup/cpuacct")
        self.root = v1 if v1.is_dir() else Path("/sys/fs/cgroup")
        self.dir = self.root / f"kata-sandbox-bench-{os.getpid()}"
        self.dir.mkdir()
        (self.dir / "cgroup.procs").write_text(str(pid))
        # the containers themselves: under a cgroup parent of this benchmark's own (their
        # usage stays counted in the parent after each container's cgroup is removed)
        self.parent = f"/kata-sandbox-bench-{os.getpid()}-steps"
        self.saved_parent = spec_module.CGROUP_PARENT
        spec_module.CGROUP_PARENT = self.parent

    @staticmethod
    def _usage(d: Path) -> float:
        if (d / "cpuacct.usage").exists():
            return int((d / "cpuacct.usage").read_text()) / 1e9
        if not (d / "cpu.stat").exists():
            return 0.0  # no container has run yet
        stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def seconds(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (self._usage(self.dir) + self._usage(self.root / self.parent.lstrip("/"))
                + own.ru_utime + own.ru_stime)

    def close(self) -> None:
        spec_module.CGROUP_PARENT = self.saved_parent
        try:
            (self.root / "cgroup.procs").write_text(str(self.pid))
        except OSError:  # the daemon is gone
            pass
        self.dir.rmdir()
        for hierarchy in Path("/sys/fs/cgroup").iterdir():  # the parent, in each controller
            for d in (hierarchy / self.parent.lstrip("/"), Path("/sys/fs/cgroup") /
                      self.parent.lstrip("/")):
                try:
                    d.rmdir()
                except OSError:
                    pass


def compare(rt, digest: str, n: int, cpu: DaemonCpu) -> tuple[float, dict[str, float]]:
    """Interleaved sandbox/bare medians per workload on ``rt``, wall and CPU (the
    step's release included): (worst held CPU ratio, {workload: sandboxed median
    seconds})."""
    never = threading.Event()
    spent: list[float] = []

    def sink(stream: str, line: bytes) -> None:
        pass

    def step(argv: tuple[str, ...]) -> float:
        before = cpu.seconds()
        seconds, status = timed_call(
            lambda: rt.run(StepSpec(image=digest, argv=argv), sink, never))
        rt.drain()  # the deferred release belongs to this step
        spent.append(cpu.seconds() - before)
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
        with_c: list[float] = []
        bare_c: list[float] = []
        for i in range(n):
            if i % 2:  # alternate which goes first
                with_t.append(step(argv))
                with_c.append(spent[-1])
                bare_t.append(bare(argv))
                bare_c.append(spent[-1])
            else:
                bare_t.append(bare(argv))
                bare_c.append(spent[-1])
                with_t.append(step(argv))
                with_c.append(spent[-1])
        w, b = statistics.median(with_t), statistics.median(bare_t)
        wc, bc = statistics.median(with_c), statistics.median(bare_c)
        # each sandboxed step next to the bare one run right before or after it: the
        # median of those ratios cancels load that drifts during the run
        paired = statistics.median(x / y for x, y in zip(with_c, bare_c))
        sandboxed[name] = w
        verdict = ("ok" if paired <= TARGET else "OVER") if held else "worst case"
        if held:
            worst = max(worst, paired)
        print(f"  {name:14s}: CPU sandbox {wc * 1e3:6.1f} ms, bare {bc * 1e3:6.1f} ms "
              f"(ratio of medians {wc / bc:.3f}x), median paired ratio {paired:.3f}x "
              f"({verdict}); wall {w * 1e3:6.1f} / {b * 1e3:6.1f} ms = {w / b:.3f}x")
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
            cpu = DaemonCpu(int(paths.pidfile.read_text()))
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
                results[name] = compare(each, digest, n, cpu)
            worst = results[rt.oci.name][0]
            cpu.close()
            print(f"per-step CPU ratio (median paired, worst held workload) on {rt.oci.name} "
                  f"(the default here) {worst:.3f}x against the target {TARGET:.2f}x: "
                  f"{'met' if worst <= TARGET else 'NOT met'}")
            if "runc" in results and rt.oci.name != "runc":
                print(f"  runc's, for comparison (every step ran on runc before): "
                      f"{results['runc'][0]:.3f}x")
                print(f"  (wall medians: the two runtimes ran one after the other, not "
                      f"interleaved; load {os.getloadavg()[0]:.0f})")
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
