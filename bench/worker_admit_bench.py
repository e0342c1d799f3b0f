"""What a `kata worker`'s check of a leased input root costs (``kata.executor.admit.
check_input_root``), against the least that writing that input root costs (the anchor:
making its directories and writing its files, as ``files.materialise`` does, with the
bytes already in memory).

    python3 bench/worker_admit_bench.py [FILES]     # default 50,000 files, 100 a directory

Prints both times and their ratio (target: the check is a small fraction of the write).
Timings are noisy on a loaded machine: print ``uptime`` beside them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kata.executor import action as act  # noqa: E402
from kata.executor import admit  # noqa: E402
from kata.executor.files import digest_of, message_bytes  # noqa: E402
from kata.remote._api.build.bazel.remote.execution.v2 import (  # noqa: E402
    remote_execution_pb2 as re_pb2,
)


def tree(files: int, per_dir: int = 100):  # noqa: ANN201
    """(root digest, hash -> Directory, [(relative path, bytes)])."""
    directories, subs, blobs = {}, [], []
    for i in range(max(1, files // per_dir)):
        d = re_pb2.Directory()
        for j in range(per_dir):
            data = f"{i}-{j}\n".encode()
            d.files.add(name=f"f{j:03d}", digest=digest_of(data))
            blobs.append((f"d{i:04d}/f{j:03d}", data))
        dg = digest_of(message_bytes(d))
        directories[dg.hash] = d
        subs.append((f"d{i:04d}", dg))
    ws = re_pb2.Directory()
    for name, dg in subs:
        ws.directories.add(name=name, digest=dg)
    ws_digest = digest_of(message_bytes(ws))
    directories[ws_digest.hash] = ws
    root = re_pb2.Directory()
    root.directories.add(name=act.WORKSPACE_DIR, digest=ws_digest)
    root.files.add(name=act.SPEC_FILE, digest=digest_of(b"{}"))
    root_digest = digest_of(message_bytes(root))
    directories[root_digest.hash] = root
    return root_digest, directories, blobs


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    root, directories, blobs = tree(files)
    start = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        admit.check_input_root(root, directories, dest_len=60, free_bytes=1 << 40)
    check = (time.perf_counter() - start) / rounds
    with tempfile.TemporaryDirectory(prefix="kt-admit-bench-") as tmp:
        start = time.perf_counter()
        for rel, data in blobs:
            path = os.path.join(tmp, rel)
            if rel.endswith("/f000"):
                os.mkdir(os.path.dirname(path))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, data)
            os.close(fd)
        write = time.perf_counter() - start
    print(f"input root of {len(blobs):,} files: check {check * 1000:.1f} ms, "
          f"write (anchor) {write * 1000:.1f} ms, ratio {check / write:.2f}x")


if __name__ == "__main__":
    main()
