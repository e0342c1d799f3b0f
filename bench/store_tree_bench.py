"""Pack/extract a big tree through the store vs tar + zstd on the same tree.

    python3 bench/store_tree_bench.py [--files 50000] [--mb 500] [--dir /tmp/kata-bench-tree]

Prints: pack+store vs `tar -cf - | zstd -T0 -3 > file`; extract vs `zstd -d | tar -x`;
second consumer of an unpacked tree vs the first extraction. Page cache warm for both
sides (the tree is read once before timing). Targets: <= 1.5x, <= 1.5x, <= 0.01x.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store import Store  # noqa: E402

WORDS = [w.encode() for w in "the quick brown fox jumps over a lazy dog while build artifacts "
         "compile link package test deploy cache store tree digest zstd python kata".split()]


def generate(root: str, files: int, total_mb: int) -> None:
    marker = os.path.join(root, ".generated")
    want = f"{files} {total_mb}\n"
    if os.path.exists(marker) and open(marker).read() == want:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(42)
    mean = total_mb * 1_000_000 // files
    per_dir = 100
    text = b" ".join(rng.choice(WORDS) for _ in range(400_000))
    noise = os.urandom(4 << 20)
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir // 50:03d}", f"s{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        size = min(int(rng.expovariate(1 / mean)), 4 << 20)
        src = text if i % 3 else noise
        off = rng.randrange(0, max(1, len(src) - size))
        with open(os.path.join(d, f"f{i}.dat"), "wb") as fh:
            fh.write(src[off:off + size])
        if i % 10 == 0:
            os.chmod(os.path.join(d, f"f{i}.dat"), 0o755)
    with open(marker, "w") as fh:
        fh.write(want)


CPU = {"self": 0.0, "children": 0.0}


def timed(fn) -> float:
    """Wall time of fn(); CPU time (this process + children) is added to CPU."""
    import resource
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
                   + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    return wall


def cpu_of(fn) -> tuple[float, float]:
    wall = timed(fn)
    return wall, CPU["last"]


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--dir", default="/tmp/kata-bench-tree")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (the box is shared)")
    args = ap.parse_args()
    generate(args.dir, args.files, args.mb)
    nfiles = sum(len(f) for _, _, f in os.walk(args.dir))
    size = sum(os.path.getsize(os.path.join(p, n)) for p, _, fs in os.walk(args.dir) for n in fs)
    print(f"tree: {nfiles} files, {size / 1e6:.0f} MB at {args.dir}; {os.cpu_count()} cores")
    work = tempfile.mkdtemp(prefix="kata-bench-", dir="/tmp")
    try:
        sh(f"tar -cf - -C {args.dir} . > /dev/null")  # warm the page cache for both sides
        tzst = os.path.join(work, "tree.tar.zst")
        # Best of N, interleaved: the box is shared, the minimum is the least disturbed run.
        t_tar = t_pack = float("inf")
        cpu_tar = cpu_pack = float("inf")
        digest = ""
        for i in range(args.repeat):
            wall, cpu = cpu_of(lambda: sh(f"tar -cf - -C {args.dir} . | zstd -q -f -T0 -3 -o {tzst}"))
            t_tar, cpu_tar = min(t_tar, wall), min(cpu_tar, cpu)
            s = Store.open(os.path.join(work, f"store{i}"))

            def pack() -> None:
                nonlocal digest
                digest = s.put_tree(args.dir)
            wall, cpu = cpu_of(pack)
            t_pack, cpu_pack = min(t_pack, wall), min(cpu_pack, cpu)
            if i < args.repeat - 1:
                s.close()
                shutil.rmtree(os.path.join(work, f"store{i}"))
        obj = os.path.getsize(s.objects.path(digest))
        print(f"pack+store  {t_pack:7.2f} s  ({obj / 1e6:.0f} MB)   tar|zstd -T0 -3  {t_tar:7.2f} s  "
              f"({os.path.getsize(tzst) / 1e6:.0f} MB)   ratio {t_pack / t_tar:.2f}x (target <= 1.5x); "
              f"CPU {cpu_pack:.2f} s vs {cpu_tar:.2f} s = {cpu_pack / cpu_tar:.2f}x")

        t_untar = t_extract = float("inf")
        cpu_untar = cpu_extract = float("inf")
        for i in range(args.repeat):
            out_tar = os.path.join(work, f"x-tar{i}")
            os.mkdir(out_tar)
            wall, cpu = cpu_of(lambda: sh(f"zstd -q -d -c {tzst} | tar -xf - -C {out_tar}"))
            t_untar, cpu_untar = min(t_untar, wall), min(cpu_untar, cpu)
            out_store = os.path.join(work, f"x-store{i}")
            wall, cpu = cpu_of(lambda: s.extract_tree(digest, out_store))
            t_extract, cpu_extract = min(t_extract, wall), min(cpu_extract, cpu)
            subprocess.run(["rm", "-rf", out_tar, out_store])
        print(f"extract     {t_extract:7.2f} s             zstd -d | tar -x  {t_untar:7.2f} s"
              f"             ratio {t_extract / t_untar:.2f}x (target <= 1.5x); "
              f"CPU {cpu_extract:.2f} s vs {cpu_untar:.2f} s = {cpu_extract / cpu_untar:.2f}x")

        t_first = timed(lambda: s.unpacked(digest))
        t_second = timed(lambda: s.unpacked(digest))
        print(f"unpacked    first {t_first:.2f} s, second consumer {t_second * 1e3:.3f} ms"
              f"   ratio {t_second / t_first:.1e}x (target <= 0.01x)")
        s.close()
    finally:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
