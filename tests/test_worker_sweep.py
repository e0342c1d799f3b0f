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
    import procs

    tagged = tmp_path / f"kata-worker-{procs.pid_tag()}-tag"  # this process, as named now
    tagged.mkdir()
    reused = tmp_path / f"kata-worker-{os.getpid()}.1-old"  # a dead worker whose pid is ours
    reused.mkdir()
    sweep_dead_workdirs(tmp_path, "kata-worker-")
    assert not gone.exists() and not reused.exists()
    assert live.is_dir() and foreign.is_dir() and other.is_dir() and tagged.is_dir()
    assert link.is_symlink() and target.is_dir()


def test_state_dir_is_the_workers_own_containerd_whatever_the_host_config_names(
        tmp_path, containerd_daemon):
    """``kata worker --state-dir DIR`` runs on DIR's own containerd, as its help says; a host
    config naming ``containerd.address`` took over silently (with DIR's FIFO and mount
    roots for a daemon that keeps neither there)."""
    import secrets
    import shutil
    import signal
    import time
    from pathlib import Path

    from kata.runtimes.containerd.daemon import daemon_paths, stop_daemon
    from support.cli import ROOT
    from support.registry import free_port

    config = tmp_path / "kata.yaml"
    config.write_text(f"containerd:\n  address: {containerd_daemon.address}\n")
    state = Path(f"/tmp/kt-ws-{secrets.token_hex(3)}")  # short: socket paths
    log = tmp_path / "worker.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kata", "worker", "--executor",
                 f"grpc://127.0.0.1:{free_port()}", "--state-dir", str(state)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT), "KATA_CONFIG": str(config)})
        try:
            deadline = time.monotonic() + 60
            while "containerd " not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        first = log.read_text().splitlines()[0]
        assert first.endswith(f"containerd {state}/containerd.sock"), first
    finally:
        stop_daemon(daemon_paths(state))
        subprocess.run(["umount", "-R", "-l", str(state)], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def test_a_state_dir_that_cannot_be_made_is_exit_2_naming_it(tmp_path):
    from support.cli import ROOT

    proc = subprocess.run([sys.executable, "-m", "kata", "worker", "--executor",
                           "grpc://127.0.0.1:1", "--state-dir", "/proc/kata-no/such"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "--state-dir /proc/kata-no/such: cannot create it" in proc.stderr
    assert "Traceback" not in proc.stderr
