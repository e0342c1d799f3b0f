"""The commands users type all day, this checkout against a baseline checkout, paired.

    git worktree add /tmp/kata-base REV      # e.g. the commit a session started from
    (cd /tmp/kata-base && python3 -m kata.runtimes.containerd.protogen \\
        && python3 -m kata.remote.protogen)
    python3 bench/hot_paths_bench.py --baseline /tmp/kata-base [--history 200] [--repeat 8]

No containerd is involved (the image tag is in kata's tag record, every step recorded as
realised, as after a real first build: ``bazel_side_by_side.record_cached``). Each checkout
gets its own fixture, written by that checkout's own code (the key format may differ
between them): a 1,000-step graph (10 levels x 100, ``bench/bazel_side_by_side.py``) and a
5-step pipeline with ``--history`` recorded runs of it (each a real ``kata run``). Then,
alternating A (this checkout) and B (the baseline) so that the machine's load hits both
alike, ``--repeat`` times each:
- ``kata run`` of the 1,000-step graph, all hits: the no-op replay, and the full path
  (``KATA_FAST_NOOP=0``: load, compile, plan, realise);
- ``kata run`` of the 5-step pipeline, all hits, with the history behind it (both paths);
- ``kata runs``, ``kata why //s0_0`` and ``kata logs --step s0_0`` on that store.
Prints each command's median CPU (user+sys of the process, getrusage) and wall seconds for
A and B, and the median of the pair-by-pair ratios A/B: CPU is the steadier figure on a
shared machine. The load average is printed before and after. Bytecode is cached per
checkout beside the fixtures (an installed kata has its .pyc files).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMAGE = "docker.io/library/busybox:1.36"
DIGEST = "sha256:" + "ab" * 32

# run inside a process with the checkout first on sys.path: its own compile and keys
FIXTURE = r"""
import sys
from pathlib import Path
co, out, levels, width = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [str(co), str(co / "bench"), str(co / "tests")]
from bazel_side_by_side import kata_config, record_cached
from kata.runtimes.tags import FILE_NAME, ImageTags
from store import Store
repo = out / "repo"
repo.mkdir(parents=True)
(repo / ".kata-ci.yaml").write_text(kata_config(levels, width, sys.argv[5]))
record_cached(repo, out / "store", sys.argv[6])
with Store.open(out / "store") as s:
    ImageTags(Path(s.state_dir) / FILE_NAME).record({sys.argv[5]: sys.argv[6]})
"""


class Checkout:
    """One checkout's fixtures and the environment its ``python -m kata`` runs in."""

    def __init__(self, label: str, root: Path, tmp: Path) -> None:
        self.label, self.root, self.dir = label, root, tmp / label

    def env(self, fixture: str, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(self.root),
               "KATA_STORE": str(self.dir / fixture / "store"),
               "PYTHONPYCACHEPREFIX": str(self.dir / "pycache"),
               "KATA_CONTAINERD_ADDRESS": str(self.dir / "no-containerd.sock"), **extra}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def make(self, fixture: str, levels: int, width: int) -> None:
        subprocess.run([sys.executable, "-c", FIXTURE, str(self.root), str(self.dir / fixture),
                        str(levels), str(width), IMAGE, DIGEST], check=True,
                       env={**os.environ, "PYTHONPATH": str(self.root)})

    def argv(self, fixture: str, args: list[str]) -> tuple[list[str], Path]:
        return [sys.executable, "-m", "kata", *args], self.dir / fixture / "repo"

    def kata(self, fixture: str, *args: str, **extra: str) -> tuple[float, float]:
        """(cpu, wall) seconds of one ``kata ARGS`` in ``fixture``; exits on a failure."""
        argv, cwd = self.argv(fixture, list(args))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=self.env(fixture, **extra),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{self.label}: kata {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr.decode(errors='replace')[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return cpu, wall


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, required=True,
                    help="a checkout of the commit to compare with (git worktree add)")
    ap.add_argument("--history", type=int, default=200, help="runs recorded before timing")
    ap.add_argument("--repeat", type=int, default=8)
    args = ap.parse_args()
    if not (args.baseline / "kata" / "__init__.py").is_file():
        raise SystemExit(f"{args.baseline} is not a kata checkout (no kata/__init__.py)")
    tmp = Path(tempfile.mkdtemp(prefix="kata-hot-"))
    try:
        a, b = Checkout("this", ROOT, tmp), Checkout("baseline", args.baseline.resolve(), tmp)
        for c in (a, b):
            c.make("big", 10, 100)
            c.make("small", 1, 5)
            c.kata("big", "run")  # bytecode, and the no-op record of a user's second run
        for _ in range(args.history):  # interleaved too: the run ids' clocks alike
            a.kata("small", "run")
            b.kata("small", "run")
        cases = [
            ("1,000 steps, no-op replay", "big", ("run",), {}),
            ("1,000 steps, full path", "big", ("run",), {"KATA_FAST_NOOP": "0"}),
            (f"5 steps + {args.history} runs, no-op replay", "small", ("run",), {}),
            (f"5 steps + {args.history} runs, full path", "small", ("run",),
             {"KATA_FAST_NOOP": "0"}),
            ("kata runs", "small", ("runs",), {}),
            ("kata why //s0_0", "small", ("why", "//s0_0"), {}),
            ("kata logs --step s0_0", "small", ("logs", "--step", "s0_0"), {}),
        ]
        print(f"load average before: {load()}  (A = this checkout, B = {args.baseline})")
        print(f"{'command':<36} {'A cpu':>7} {'B cpu':>7} {'A/B cpu':>8} "
              f"{'A wall':>7} {'B wall':>7} {'A/B wall':>8}")
        for title, fixture, argv, extra in cases:
            pairs = []
            for i in range(args.repeat + 1):
                first, second = (a, b) if i % 2 == 0 else (b, a)  # who goes first alternates
                ra = first.kata(fixture, *argv, **extra)
                rb = second.kata(fixture, *argv, **extra)
                if first is b:
                    ra, rb = rb, ra
                if i:  # the first pair warms the page cache
                    pairs.append((ra, rb))
            med = lambda xs: statistics.median(xs)  # noqa: E731
            print(f"{title:<36} {med([p[0][0] for p in pairs]):7.3f} "
                  f"{med([p[1][0] for p in pairs]):7.3f} "
                  f"{med([p[0][0] / p[1][0] for p in pairs]):8.3f} "
                  f"{med([p[0][1] for p in pairs]):7.3f} {med([p[1][1] for p in pairs]):7.3f} "
                  f"{med([p[0][1] / p[1][1] for p in pairs]):8.3f}")
        print(f"load average after: {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
