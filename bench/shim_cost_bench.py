"""Where a container step's CPU goes, system-wide: kata, containerd, shims, OCI runtime.

    python3 bench/shim_cost_bench.py [--steps 200] [--rounds 1] [--max-parallel 2]
                                     [--modes task,shared,direct]

Needs `perf` (Debian: linux-perf); without it, says so and exits 0. Starts a private
embedded containerd under /tmp, imports the busybox test image and, per round, runs
`kata run` (a real process) on a first build of N independent `true` steps (network
"default") once per mode, interleaved: ``task``, containerd tasks with one shim per
container (host config ``containerd.step_runner: task``); ``shared``, tasks on shared
shims (``shared_shim: true``, kata/runtimes/containerd/shimgroup.py); ``direct``, kata's
own ``crun run`` per step (the default, kata/runtimes/containerd/direct.py). Around each run, ``perf record -a`` samples
every CPU (cpu-clock, 499 Hz); the samples are charged to processes by the fork tree
perf records: the embedded containerd and everything it started (``shim start``,
shim daemons, ``shim delete``, crun/runc, the step's own processes), and the kata
process and what it runs (``ip``, CNI plugins; on the direct path crun and the steps
themselves, told apart by command name). Everything else on the machine is "outside"
and not counted.

Prints CPU ms per step for each kind of process and both modes, the total against the
budget (66 ms of system CPU per step: what a first build of the 10x100 graph within 3x
Bazel's needs on this 2-core machine, docs/architecture.md), and each mode's ratio to
the first one. CPU times inflate with machine load: compare modes within one run.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import yaml  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd.daemon import read_pid  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import BUSYBOX_REF, busybox_image, write_oci_archive  # noqa: E402
from timing import kata_env  # noqa: E402

HZ = 499
BUDGET_MS = 66.0
_FORK = re.compile(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)")
CONFIGS = {"task": "containerd:\n  step_runner: task\n  shared_shim: false\n",
           "shared": "containerd:\n  step_runner: task\n  shared_shim: true\n",
           "direct": "containerd:\n  step_runner: direct\n"}
_KATA_CHILDREN = ("ip", "bridge", "host-local", "loopback", "portmap")
KINDS = ("kata", "kata's children (ip, CNI)", "containerd", "shim start", "shim daemon",
         "shim delete", "OCI runtime (crun/runc)", "the steps' own processes")


def classify(script: str, t0: float, t1: float, containerd: int, kata_parent: int
             ) -> collections.Counter:
    """Samples per kind of process (KINDS) between t0 and t1 (CLOCK_MONOTONIC s)."""
    parent: dict[int, int] = {}
    samples: collections.Counter = collections.Counter()
    for line in script.splitlines():
        m = _FORK.search(line)
        if m:
            child, ppid = int(m.group(1)), int(m.group(2))
            if child != ppid:
                parent.setdefault(child, ppid)
            continue
        if "PERF_RECORD" in line:
            continue
        parts = line.split()
        try:
            ts, pid = float(parts[-1].rstrip(":")), int(parts[-3].split("/")[0])
        except (IndexError, ValueError):
            continue
        if t0 <= ts <= t1:
            samples[(pid, " ".join(parts[:-3]))] += 1
    children = collections.defaultdict(set)
    for c, p in parent.items():
        children[p].add(c)
    shims = {pid for pid, comm in samples if comm.startswith("containerd-shi")}

    def root(pid: int) -> int:
        for _ in range(64):
            if pid in (containerd, kata_parent) or pid not in parent:
                return pid
            pid = parent[pid]
        return pid

    kinds: collections.Counter = collections.Counter()
    for (pid, comm), n in samples.items():
        r = root(pid)
        if pid == containerd:
            kind = "containerd"
        elif r == containerd:
            if comm.startswith("containerd-shi"):
                if parent.get(pid) != containerd:
                    kind = "shim daemon"
                elif children.get(pid, set()) & shims:
                    kind = "shim start"  # it forked a daemon
                else:  # a grouped start (no fork) counts as start only by its argv, which
                    kind = "shim delete"  # perf does not keep: see the docs' breakdown
            elif comm.startswith(("crun", "runc")):
                kind = "OCI runtime (crun/runc)"
            else:
                kind = "the steps' own processes"
        elif r == kata_parent:
            if comm.startswith(("python", "kata", "event_engine", "grpc")):
                kind = "kata"
            elif comm.startswith(("crun", "runc")):  # a direct step's crun
                kind = "OCI runtime (crun/runc)"
            elif comm.startswith(_KATA_CHILDREN):
                kind = "kata's children (ip, CNI)"
            else:  # a direct step's processes (and its wrapper sh, before it execs crun)
                kind = "the steps' own processes"
        else:
            continue
        kinds[kind] += n
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-parallel", type=int, default=2)
    ap.add_argument("--modes", default="task,shared,direct",
                    help="comma-separated, of: " + ", ".join(CONFIGS))
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    assert modes and all(m in CONFIGS for m in modes), args.modes
    if shutil.which("perf") is None:
        print("perf is not installed (apt-get install linux-perf): nothing measured")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="kt-shimbench-"))
    totals = {mode: collections.Counter() for mode in modes}
    walls = {mode: 0.0 for mode in totals}
    try:
        with embedded_containerd("ksb") as paths:
            containerd = read_pid(paths)
            assert containerd is not None
            with ContainerdRuntime.connect(address=paths.address,
                                           state_dir=str(paths.root.parent)) as rt:
                rt.import_image(write_oci_archive(busybox_image(), tmp / "busybox.tar"))
            repo = tmp / "repo"
            repo.mkdir()
            (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({
                "pipeline": "shim-cost", "settings": {"max_parallel": args.max_parallel},
                "steps": [{"name": f"s{i}", "image": BUSYBOX_REF, "commands": [f"true {i}"],
                           "network": "default"} for i in range(args.steps)]},
                sort_keys=False))
            for mode in modes:
                (tmp / f"{mode}.yaml").write_text(CONFIGS[mode])
            data = tmp / "perf.data"
            # one recording for all runs (perf's start, a scan of every process, takes
            # seconds on a loaded machine); each run is a window of its timestamps
            perf = subprocess.Popen(
                ["perf", "record", "-a", "-k", "mono", "-F", str(HZ), "-e", "cpu-clock",
                 "-o", str(data), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            windows = []
            try:
                time.sleep(3.0)
                for rnd in range(args.rounds):
                    for mode in modes:
                        cfg = f"{mode}.yaml"
                        env = {**kata_env(tmp / f"store-{rnd}-{cfg}"),
                               "KATA_CONFIG": str(tmp / cfg)}
                        t0 = time.monotonic()
                        proc = subprocess.run([sys.executable, "-m", "kata", "--containerd",
                                               paths.address, "run"], cwd=repo, env=env,
                                              capture_output=True, text=True)
                        t1 = time.monotonic()
                        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                        windows.append((mode, t0, t1))
            finally:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            script = subprocess.run(
                ["perf", "script", "-i", str(data), "--show-task-events", "-F",
                 "comm,pid,tid,cpu,time"], capture_output=True, text=True).stdout
            for mode, t0, t1 in windows:
                totals[mode] += classify(script, t0, t1, containerd, os.getpid())
                walls[mode] += t1 - t0
    finally:
        subprocess.run(["umount", "-R", "-l", str(tmp)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.steps * args.rounds
    print(f"first build of {args.steps} `true` steps (network default, max_parallel "
          f"{args.max_parallel}), {args.rounds} round(s); CPU ms per step, by perf:")
    print("  " + " " * 28 + "".join(f"{m:>10s}" for m in modes))

    def ms(mode: str, kind: str) -> float:
        return totals[mode][kind] / HZ / n * 1e3

    for kind in KINDS:
        print(f"  {kind:28s}" + "".join(f"{ms(m, kind):10.1f}" for m in modes))
    tot = {m: sum(ms(m, k) for k in KINDS) for m in modes}
    system = {m: tot[m] - ms(m, "kata") - ms(m, "kata's children (ip, CNI)") for m in modes}
    first = modes[0]
    print(f"  {'total':28s}" + "".join(f"{tot[m]:10.1f}" for m in modes)
          + " | vs " + first + ": " + ", ".join(f"{m} {tot[m] / tot[first]:.2f}x" for m in modes[1:]))
    print(f"  {'beyond kata':28s}" + "".join(f"{system[m]:10.1f}" for m in modes)
          + " | vs " + first + ": " + ", ".join(f"{m} {system[m] / system[first]:.2f}x"
                                                for m in modes[1:]))
    print(f"  total vs the {BUDGET_MS:.0f} ms budget (target <= 1.0x): "
          + ", ".join(f"{m} {tot[m] / BUDGET_MS:.2f}x" for m in modes))
    print("  wall per step: " + ", ".join(f"{m} {walls[m] / n * 1e3:.0f} ms" for m in modes))
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
