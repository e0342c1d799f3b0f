"""Realisation lookups through the LMDB index, and gc over a big store.

    python3 bench/store_index_bench.py [--objects 100000] [--realisations 10000]

Prints: median per lookup; 10,000 lookups vs 10,000 os.stat of existing object files
(target <= 2x); gc over N objects / M realisations vs a bare os.scandir walk of the objects.
The store is populated directly in its on-disk layout (setup, not measured).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zstandard  # noqa: E402

from store import Realisation, Run, Store  # noqa: E402


def populate(s: Store, n_objects: int, n_reals: int) -> tuple[list[str], list[str]]:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    digests = []
    old = time.time() - 7 * 86400
    for i in range(n_objects):
        data = b"object %d" % i
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = s.objects.path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(cctx.compress(data))
        os.utime(path, (old, old))
        digests.append(digest)
    keys = []
    for i in range(n_reals):
        key = hashlib.sha256(b"key %d" % i).hexdigest()
        real = Realisation(outputs=digests[i * 2], log=digests[i * 2 + 1], created=old)
        path = s._realisation_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(real.encode())
        os.utime(path, (old, old))
        keys.append(key)
    _index_only(s, keys)
    return digests, keys


def _index_only(s: Store, keys: list[str]) -> None:
    for key in keys:
        s.get_realisation(key)  # file fallback, then indexed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--realisations", type=int, default=10_000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kata-ibench-", dir="/tmp")
    s = Store.open(os.path.join(work, "store"))
    t0 = time.perf_counter()
    digests, keys = populate(s, args.objects, args.realisations)
    print(f"setup: {args.objects} objects, {args.realisations} realisations in "
          f"{time.perf_counter() - t0:.1f} s")

    n_lookup = min(10_000, len(keys))
    lookup = keys[:n_lookup]
    paths = [s.objects.path(d) for d in digests[:n_lookup]]
    for key in lookup:  # warm
        s.get_realisation(key)
    samples = []
    for key in lookup[:2000]:
        t = time.perf_counter_ns()
        s.get_realisation(key)
        samples.append(time.perf_counter_ns() - t)
    best_lookup = best_stat = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for key in lookup:
            s.get_realisation(key)
        best_lookup = min(best_lookup, time.perf_counter() - t)
        t = time.perf_counter()
        for p in paths:
            os.stat(p)
        best_stat = min(best_stat, time.perf_counter() - t)
    print(f"lookup: median {statistics.median(samples) / 1000:.2f} us; {len(lookup)} lookups "
          f"{best_lookup * 1e3:.1f} ms vs {len(paths)} os.stat {best_stat * 1e3:.1f} ms: "
          f"ratio {best_lookup / best_stat:.2f}x (target <= 2x)")

    t = time.perf_counter()
    n = 0
    for prefix in os.scandir(s.objects.objects):
        for _entry in os.scandir(prefix.path):
            n += 1
    t_walk = time.perf_counter() - t
    t = time.perf_counter()
    for prefix in os.scandir(s.objects.objects):
        for entry in os.scandir(prefix.path):
            entry.stat()
    t_walk_stat = time.perf_counter() - t
    t = time.perf_counter()
    report = s.gc(dry_run=True)
    t_plan = time.perf_counter() - t
    keep = len(keys) // 2
    for i in range(0, 100):  # runs naming half the realisations as roots
        s.put_run(Run(id=f"run{i}", pipeline="ci", branch=f"b{i % 10}",
                      started=time.time() - 3600 + i,
                      realisations=tuple(keys[i * keep // 100:(i + 1) * keep // 100])))
    t = time.perf_counter()
    report = s.gc()
    t_gc = time.perf_counter() - t
    print(f"gc: scandir walk of {n} objects {t_walk:.2f} s (with stat {t_walk_stat:.2f} s); gc plan (dry run) {t_plan:.2f} s "
          f"({t_plan / t_walk:.1f}x the walk, {t_plan / t_walk_stat:.1f}x with stat); gc deleting {len(report.deleted_realisations)} realisations "
          f"and {len(report.deleted_objects)} objects {t_gc:.2f} s ({t_gc / t_walk:.1f}x the walk)")
    s.close()
    os.system(f"rm -rf {work}")


if __name__ == "__main__":
    main()
