"""kata's embedded containerd: start, reuse, lock, status/stop, clear errors."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.runtimes.containerd import daemon as daemon_mod
from kata.runtimes.containerd.daemon import (
    daemon_paths, daemon_status, ensure_daemon, read_pid, stop_daemon,
)
from support.images import busybox_image, write_oci_archive

ROOT = Path(__file__).resolve().parent.parent


def kata(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "kata", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def private_dir():
    base = Path(f"/tmp/kd-{secrets.token_hex(4)}")
    base.mkdir()
    yield base
    stop_daemon(daemon_paths(base))
    subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.integration
def test_started_once_then_reused_even_when_raced(private_dir):
    paths = daemon_paths(private_dir)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_daemon(paths))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pid = read_pid(paths)
    assert pid is not None and results == [paths.address] * 3
    assert ensure_daemon(paths) == paths.address and read_pid(paths) == pid
    out = subprocess.run(["pgrep", "-f", f"containerd --config {paths.config}"],
                         capture_output=True, text=True).stdout.split()
    assert out == [str(pid)]
    assert daemon_status(paths)["running"] is True
    assert stop_daemon(paths) is True
    assert daemon_status(paths)["running"] is False
    assert stop_daemon(paths) is False


@pytest.mark.integration
def test_a_starter_killed_before_its_pid_file_leaves_no_daemon_behind(private_dir):
    """A kata (a worker starting its containerd again after that daemon was killed) is
    SIGKILLed between starting the daemon and writing its pid file: the file still names
    the dead daemon. read_pid trusted it, so `stop_daemon` (a worker's teardown, `kata
    daemon stop`) said nothing ran and the live daemon was left for ever; and a daemon
    still starting (its socket not answering yet) got a second one beside it on the
    same root. Both now go by the socket's listener and the pid file's process."""
    paths = daemon_paths(private_dir)
    ensure_daemon(paths)
    pid = read_pid(paths)
    assert pid is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.pidfile.write_text(f"{dead.pid}\n")  # the killed daemon's pid
    assert read_pid(paths) == pid  # the socket's listener
    assert ensure_daemon(paths) == paths.address
    assert stop_daemon(paths) is True, "the running daemon was not found"
    out = subprocess.run(["pgrep", "-f", f"containerd --config {paths.config}"],
                         capture_output=True, text=True).stdout.split()
    assert out == [], out
    # a daemon started by a kata killed before it answered: waited for, never doubled
    ensure_daemon(paths)
    first = read_pid(paths)
    paths.socket.unlink()  # as if it were still starting: no socket yet
    done: list[str] = []
    t = threading.Thread(target=lambda: done.append(ensure_daemon(paths, timeout=5)))
    t.start()
    t.join(30)
    out = subprocess.run(["pgrep", "-f", f"containerd --config {paths.config}"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out  # the silent one replaced, not left beside a second
    assert read_pid(paths) == int(out[0]) and done == [paths.address]
    assert first is not None


@pytest.mark.integration
def test_cli_image_and_daemon_commands(private_dir, tmp_path):
    cfg = tmp_path / "kata.yaml"
    cfg.write_text(f"containerd:\n  state_dir: {private_dir}\n")
    env = {"KATA_CONFIG": str(cfg)}
    archive = write_oci_archive(busybox_image(), tmp_path / "bb.tar")
    r = kata("image", "import", str(archive), env=env)
    assert r.returncode == 0, r.stderr
    assert busybox_image().digest in r.stdout
    r = kata("image", "ls", env=env)
    assert r.returncode == 0 and "kata.local/busybox:latest" in r.stdout
    r = kata("daemon", "status", env=env)
    assert r.returncode == 0 and "running (pid" in r.stdout
    r = kata("image", "rm", "kata.local/busybox:latest", env=env)
    assert r.returncode == 0 and "removed kata.local/busybox:latest" in r.stdout
    r = kata("image", "rm", "kata.local/busybox:latest", env=env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert "kata.local/busybox:latest" in r.stderr and "kata image ls" in r.stderr
    r = kata("image", "pull", "not a ref", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = kata("daemon", "stop", env=env)
    assert r.returncode == 0 and "stopped" in r.stdout
    r = kata("daemon", "status", env=env)
    assert "not running" in r.stdout


def test_long_state_dir_gets_a_short_socket(tmp_path):
    paths = daemon_paths(tmp_path / ("x" * 120))
    assert len(str(paths.socket)) <= 107
    assert paths.root == tmp_path / ("x" * 120) / "root"
    default = daemon_paths()
    assert str(default.socket) == "/run/kata/containerd/containerd.sock"
    assert str(default.root) == "/var/lib/kata/containerd/root"


def test_clear_errors_when_not_root_or_missing(monkeypatch, tmp_path):
    paths = daemon_paths(tmp_path / "d")
    real = shutil.which
    monkeypatch.setattr(daemon_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(KataError) as err:
        ensure_daemon(paths)
    assert err.value.reason == "runtime.not_root"
    monkeypatch.setattr(daemon_mod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(daemon_mod.shutil, "which", lambda name: None)
    with pytest.raises(KataError) as err:
        ensure_daemon(paths)
    assert err.value.reason == "runtime.containerd_missing"
    assert "apt install containerd" in err.value.message
    monkeypatch.setattr(daemon_mod.shutil, "which", lambda name: None if name == "runc" else real(name))
    with pytest.raises(KataError) as err:
        ensure_daemon(paths)
    assert err.value.reason == "runtime.runc_missing"


@pytest.mark.integration
def test_a_daemon_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    paths = daemon_paths(tmp_path / "d")
    # a config containerd refuses: it exits at once and we report its log
    monkeypatch.setattr(daemon_mod, "_config_text", lambda p: "version = [\n")
    with pytest.raises(KataError) as err:
        ensure_daemon(paths, timeout=20)
    assert err.value.reason == "runtime.daemon_failed"
