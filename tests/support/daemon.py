"""An embedded containerd for the integration tests: one per xdist worker.

It lives under a short temp dir (/tmp/kt-<worker>-<rand>: unix socket paths are
limited to 108 bytes), is started through kata's own daemon module (so the tests
exercise it), and is stopped and removed at the end of the session. When it
cannot start the tests fail with the daemon's error, they never skip.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kata.runtimes.containerd.daemon import DaemonPaths, daemon_paths, ensure_daemon, stop_daemon
from procs.leftovers import force_rmtree


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextmanager
def embedded_containerd(prefix: str = "kt") -> Iterator[DaemonPaths]:
    """Start a private containerd for the duration of the block; yields its paths."""
    base = Path(f"/tmp/{prefix}-{worker_id()}-{secrets.token_hex(3)}")
    base.mkdir(mode=0o711)
    paths = daemon_paths(base)
    try:
        ensure_daemon(paths)
        yield paths
    finally:
        stop_daemon(paths)
        # snapshots are unmounted by then; anything still mounted below base is a leak
        # the tests report, but it must not keep the next session from starting
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True)
        force_rmtree(str(base))  # any depth a failed test left
