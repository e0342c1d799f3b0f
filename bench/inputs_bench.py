"""Input hashing of a generated 50,000-file tree: cold (no stat cache) and warm.

    python3 bench/inputs_bench.py [FILES]

Figures printed against, in the same run: `sha256sum` over the same files (the cost of
reading and hashing everything) and a bare Python walk + lstat (the floor of a warm run).
Target: warm <= 0.2x cold. The page cache is warm for both runs (the tree was just
written), so "cold" means "no stat cache", the case a stat cache exists for.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kata.inputs import MemoryStatCache, Snapshot  # noqa: E402
from timing import timed_call as timed  # noqa: E402


def generate(root: Path, files: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    total = 0
    per_dir = 100
    for i in range(files):
        d = root / f"d{i // (per_dir * 50)}" / f"s{(i // per_dir) % 50}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        size = min(int(rnd.expovariate(1 / 4096)), 256 * 1024)
        (d / f"f{i}.txt").write_bytes(rnd.randbytes(size))
        total += size
    return total


def walk_lstat(root: str) -> int:
    n = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    e.stat(follow_symlinks=False)
                    n += 1
    return n


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    root = Path(tempfile.mkdtemp(prefix="kata-inputs-bench-"))
    try:
        gen_s, total = timed(lambda: generate(root, files))
        time.sleep(2.1)  # let the newest files' ctime age past the racy-clean window
        sha_s, _ = timed(lambda: subprocess.run(
            f"find {root} -type f -print0 | xargs -0 sha256sum > /dev/null", shell=True, check=True))
        walk_s, n = timed(lambda: walk_lstat(str(root)))
        assert n == files
        cache = MemoryStatCache()
        cold_s, cold = timed(lambda: Snapshot(root, cache).input_set())
        warm_s, warm = timed(lambda: Snapshot(root, cache).input_set())
        warm2_s, _ = timed(lambda: Snapshot(root, cache).input_set())
        assert warm.digest == cold.digest and len(cold.files) == files
        # every file settled (ctime past the racy window): the warm runs measure cache hits
        assert len(cache.entries) == files, (len(cache.entries), files)
        warm_s = min(warm_s, warm2_s)
        print(f"tree: {files} files, {total / 2**20:.0f} MiB (generated in {gen_s:.1f} s), walk mode")
        print(f"  sha256sum over the files (floor, cold) {sha_s * 1000:8.0f} ms")
        print(f"  python walk + lstat (floor, warm)      {walk_s * 1000:8.0f} ms")
        print(f"  cold input hashing (no stat cache)     {cold_s * 1000:8.0f} ms   {cold_s / sha_s:5.2f}x sha256sum")
        print(f"  warm input hashing (stat cache hit)    {warm_s * 1000:8.0f} ms   {warm_s / walk_s:5.2f}x walk+lstat")
        print(f"  warm / cold                            {warm_s / cold_s:8.3f}      (target <= 0.2)")
        # the same tree as an (all untracked) git work tree: the listing is git's
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        git_cache = MemoryStatCache()
        gcold_s, gcold = timed(lambda: Snapshot(root, git_cache).input_set())
        gwarm_s, gwarm = timed(lambda: Snapshot(root, git_cache).input_set())
        assert gwarm.digest == gcold.digest == cold.digest
        print(f"  git mode (ls-files -co): cold {gcold_s * 1000:.0f} ms, warm {gwarm_s * 1000:.0f} ms, "
              f"warm / cold {gwarm_s / gcold_s:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
