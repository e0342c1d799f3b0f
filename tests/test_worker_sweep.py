"""What a killed `kata worker` leaves on disk is removed by the next one (real processes and
files; the end-to-end case, a worker SIGKILLed mid-step on BuildGrid, is in
test_remote_exec.py::test_a_worker_killed_mid_step_has_its_step_rerun_elsewhere)."""

from __future__ import annotations

import os
import subprocess
import sys

from kata.executor.worker import sweep_dead_workdirs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_this_users_directories_of_dead_workers_are_removed(tmp_path):
    dead = _dead_pid()
    gone = tmp_path / f"kata-worker-{dead}-abc"
    (gone / "lease-1-x" / "ws").mkdir(parents=True)
    (gone / "lease-1-x" / "ws" / "f").write_text("a workspace file")
    os.chmod(gone / "lease-1-x" / "ws", 0o555)  # artifacts arrive read-only
    live = tmp_path / f"kata-worker-{os.getpid()}-def"  # this process: alive
    live.mkdir()
    foreign = tmp_path / f"kata-worker-{dead}-ghi"  # another user's: never ours to remove
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / f"kata-worker-{dead}-lnk"  # a link is not followed
    link.symlink_to(target)
    other = tmp_path / "kata-worker-notapid"
    other.mkdir()
    sweep_dead_workdirs(tmp_path, "kata-worker-")
    assert not gone.exists()
    assert live.is_dir() and foreign.is_dir() and other.is_dir()
    assert link.is_symlink() and target.is_dir()
