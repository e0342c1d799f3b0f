"""The cached path in instructions: a fully cached `kata run` vs `kata validate` vs Python.

    apt-get install valgrind                 # this script installs nothing
    python3 bench/noop_instructions.py [--levels 10] [--width 100]

Wall times of a 200-ms process move 2-5x with the other load of a shared machine; the
instructions a process executes (valgrind's callgrind, ``Ir``) do not. This counts them for
three fresh processes on the graph of ``bench/bazel_side_by_side.py`` (``levels`` x
``width`` steps, each above level 0 depending on two of the level below), every step
recorded as realised in a store of its own and the image tag in kata's tag record (so no
containerd is involved, as in a real no-op):
- ``python3 -c pass`` (the interpreter's own start, this machine's site included),
- ``kata validate --offline`` (always parses the config),
- ``kata run`` (the no-op; after one warm-up run, as a user's second run: replayed from
  its no-op record, ``kata.realise.noop``), and the same with ``KATA_FAST_NOOP=0`` (the
  full path: load, compile, plan, realise).
Printed: each count, the no-op / validate ratio (issue 11's limit <= 1.3x; same ratio as
``bench/bazel_side_by_side.py`` prints in wall time), and the no-op / python ratio.
Then the same interpreter and no-op without ``site`` (``python3 -S``, the libraries'
directory on PYTHONPATH instead): what a clean install costs, without this machine's
``.pth`` files (an editable-install finder, a sandbox's certifi hook), which import
``pathlib``, ``typing``, ``re`` and more before kata starts. ``-m`` itself (``runpy``)
is in both figures; a console script imports ``re`` instead.
Without ``valgrind`` on PATH it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from bazel_side_by_side import kata_config, record_cached  # noqa: E402
from timing import kata_env  # noqa: E402

IMAGE = "docker.io/library/busybox:1.36"
DIGEST = "sha256:" + "ab" * 32


def instructions(argv: list[str], *, cwd: Path, env: dict[str, str]) -> int:
    """Instructions executed by ``argv`` (callgrind's ``Collected``)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--width", type=int, default=100)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count with. Install it with\n"
              "    apt-get install valgrind\nand run this again.")
        return
    from kata.runtimes.tags import FILE_NAME, ImageTags
    from store import Store

    tmp = Path(tempfile.mkdtemp(prefix="kata-noop-ir-"))
    try:
        repo = tmp / "repo"
        repo.mkdir()
        (repo / ".kata-ci.yaml").write_text(kata_config(args.levels, args.width, IMAGE))
        store = tmp / "store"
        record_cached(repo, store, DIGEST)
        with Store.open(store) as s:
            ImageTags(Path(s.state_dir) / FILE_NAME).record({IMAGE: DIGEST})
        env = {**kata_env(store), "KATA_CONTAINERD_ADDRESS": str(tmp / "no-containerd.sock")}
        kata = [sys.executable, "-m", "kata"]
        time.sleep(2.1)  # files this old may go in the no-op record (git's racy rule)
        warm = subprocess.run([*kata, "run"], cwd=repo, env=env, capture_output=True, text=True)
        n = args.levels * args.width
        if warm.returncode != 0 or f"({n} cached, 0 ran)" not in warm.stdout:
            raise SystemExit(f"the no-op is not fully cached:\n{warm.stdout[-1500:]}{warm.stderr}")
        subprocess.run([*kata, "validate", "--offline"], cwd=repo, env=env, capture_output=True)
        py = instructions([sys.executable, "-c", "pass"], cwd=repo, env=env)
        validate = instructions([*kata, "validate", "--offline"], cwd=repo, env=env)
        noop = instructions([*kata, "run"], cwd=repo, env=env)
        full = instructions([*kata, "run"], cwd=repo, env={**env, "KATA_FAST_NOOP": "0"})
        print(f"graph: {args.levels} x {args.width} = {n} steps, every step cached")
        print(f"instructions: python3 -c pass {py / 1e6:,.0f} M; kata validate --offline "
              f"{validate / 1e6:,.0f} M; kata run (no-op) {noop / 1e6:,.0f} M")
        ratio = noop / validate
        print(f"no-op / validate: {ratio:.2f}x (limit <= 1.3x: "
              f"{'met' if ratio <= 1.3 else 'NOT met'})")
        print(f"no-op / python3 -c pass: {noop / py:.1f}x; kata's own (beyond the "
              f"interpreter's start): {(noop - py) / 1e6:,.0f} M")
        print(f"the full path (KATA_FAST_NOOP=0: load, compile, plan, realise; it rewrites "
              f"the record): {full / 1e6:,.0f} M; replayed / full: {noop / full:.2f}x")
        import sysconfig

        bare = {**env, "PYTHONPATH": os.pathsep.join((str(ROOT), sysconfig.get_paths()["purelib"]))}
        time.sleep(2.1)  # -S has its own sys.path, so its own record: written by a first run
        subprocess.run([sys.executable, "-S", "-m", "kata", "run"], cwd=repo, env=bare,
                       capture_output=True)
        py_s = instructions([sys.executable, "-S", "-c", "pass"], cwd=repo, env=bare)
        noop_s = instructions([sys.executable, "-S", "-m", "kata", "run"], cwd=repo, env=bare)
        runpy_s = instructions([sys.executable, "-S", "-c", "import runpy"], cwd=repo, env=bare)
        print(f"without site (python3 -S, as a clean install): python3 -c pass {py_s / 1e6:,.0f} M;"
              f" kata run (no-op) {noop_s / 1e6:,.0f} M; beyond the interpreter's start "
              f"{(noop_s - py_s) / 1e6:,.0f} M, of which -m's runpy {(runpy_s - py_s) / 1e6:,.0f} M "
              f"and kata's own {(noop_s - runpy_s) / 1e6:,.0f} M")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
