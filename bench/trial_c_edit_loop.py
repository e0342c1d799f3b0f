"""Kata's edit-compile loop on a real C project (zlib, the trial of tests/test_trial_zlib.py)
against ``make -j2`` in a configured tree on the host (the anchor, measured in the same run).

    python3 bench/trial_c_edit_loop.py [--repeat 5]

Needs what the trial test needs (``bash .ci/install``: zlib's tarball and mmdebstrap; the
image is cached under /var/cache/kata-test) and a containerd kata can reach (its own,
started on first use, as ``kata run`` does). Each figure is the median of ``--repeat``
iterations, kata and make interleaved so both see the same load; the load average is
printed before and after (the machine is shared: quote it with the figures):

1. a comment appended to deflate.c, then the pipeline up to ``test`` / ``make -j2 static``
   and zlib's test programs (Kata recompiles the 5 objects of its compile step and hits
   the rest by early cutoff; make recompiles one object and relinks);
2. a comment appended to zutil.h (Kata: three compile steps, 15 objects, two at a time;
   make: the same 15 objects and the links);
3. nothing changed: ``kata run`` (the replayed no-op) / ``make -j2 static``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from support.images import debian_image_archive  # noqa: E402
from test_trial_zlib import PACKAGES, PIPELINE, ZLIB_ORIG  # noqa: E402
from timing import kata_env  # noqa: E402

IMAGE = "kata.local/debian-zlib:bookworm"
TEST = "echo hello world | ./minigzip | ./minigzip -d >/dev/null && ./example tmpst >/dev/null"


def _tree(dest: Path) -> Path:
    with tarfile.open(ZLIB_ORIG) as tar:
        tar.extractall(dest, filter="data")
    return dest / "zlib-1.2.13.dfsg"


def _sh(cwd: Path, cmd: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{cmd!r} failed in {cwd}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    n = ap.parse_args().repeat
    work = Path(tempfile.mkdtemp(prefix="kata-c-bench-"))
    try:
        env = kata_env(work / "store")
        kata = f"{sys.executable} -m kata"
        repo = _tree(work / "kata")
        (repo / ".kata-ci.yaml").write_text(PIPELINE.replace("IMAGE", IMAGE))
        for git in ("init -q -b main", "add -A", "-c user.name=b -c user.email=b@b commit -qm zlib"):
            _sh(repo, f"git {git}")
        archive = debian_image_archive(include=PACKAGES, ref=IMAGE)
        _sh(repo, f"{kata} image import {archive}", env)
        _sh(repo, f"{kata} run --step test", env)
        plain = _tree(work / "make")
        _sh(plain, "./configure --static >/dev/null && make -s -j2 static", None)

        def one(cwd: Path, edit: str, cmd: str, e: dict[str, str] | None) -> float:
            if edit:
                with open(cwd / edit, "a") as f:
                    f.write(f"/* edit {time.time_ns()} */\n")
            t = time.perf_counter()
            _sh(cwd, cmd, e)
            return time.perf_counter() - t

        print(f"load average before: {os.getloadavg()}  (2 cores here; repeat {n})")
        cases = (("comment in deflate.c", "deflate.c"), ("comment in zutil.h", "zutil.h"),
                 ("nothing changed", ""))
        for label, edit in cases:
            ks, ms = [], []
            for _ in range(n):
                ks.append(one(repo, edit, f"{kata} run --step test", env))
                ms.append(one(plain, edit, f"make -s -j2 static && {TEST}", None))
            k, m = statistics.median(ks), statistics.median(ms)
            print(f"{label:22}  kata {k:6.2f} s   make -j2 {m:6.2f} s   kata/make {k / m:6.1f}x")
        print(f"load average after:  {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
