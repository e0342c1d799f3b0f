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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kata.runtimes.containerd.daemon import (
    DaemonPaths, _config_text, daemon_paths, ensure_daemon, socket_answers, stop_daemon,
)
from procs.leftovers import force_rmtree


def worker_id() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextmanager
def embedded_containerd(prefix: str = "kt", nofile: str = "") -> Iterator[DaemonPaths]:
    """Start a private containerd for the duration of the block; yields its paths.

    ``nofile`` ("SOFT:HARD"): started as a system containerd is, not by kata (which raises
    its own open-files limit first), under ``prlimit --nofile=SOFT:HARD``, as a unit's
    ``LimitNOFILE=`` would."""
    base = Path(f"/tmp/{prefix}-{worker_id()}-{secrets.token_hex(3)}")
    base.mkdir(mode=0o711)
    paths = daemon_paths(base)
    try:
        if nofile:
            _start_limited(paths, nofile)
        else:
            ensure_daemon(paths)
        yield paths
    finally:
        stop_daemon(paths)
        # snapshots are unmounted by then; anything still mounted below base is a leak
        # the tests report, but it must not keep the next session from starting
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True)
        force_rmtree(str(base))  # any depth a failed test left


def _start_limited(paths: DaemonPaths, nofile: str) -> None:
    for d in (paths.root, paths.state, paths.pidfile.parent, paths.socket.parent,
              paths.config.parent, paths.log.parent):
        d.mkdir(parents=True, exist_ok=True, mode=0o711)
    paths.config.write_text(_config_text(paths))
    with open(paths.log, "ab") as log:  # prlimit execs containerd: the pid is containerd's
        proc = subprocess.Popen(["prlimit", f"--nofile={nofile}", "containerd", "--config",
                                 str(paths.config), "--log-level", "warn"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    paths.pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 30
    while not socket_answers(paths.socket, timeout=0.5):
        assert proc.poll() is None and time.monotonic() < deadline, paths.log.read_text()
        time.sleep(0.05)
