"""Fixtures for the store's tests: a local store and one shared through sshfs over loopback.

The sshfs fixture starts its own sshd (generated host key, a temporary authorized_keys,
a free port on 127.0.0.1, its own config file) and never touches the system's sshd
configuration or ~/.ssh. Missing tools fail the test loudly; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _need(tool: str) -> str:
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if not path:
        pytest.fail(f"{tool} is required for the shared-store tests (apt: sshfs openssh-server)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    port: int
    key: Path
    proc: subprocess.Popen

    def mount(self, remote: Path, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_need("sshfs"), "-p", str(self.port),
             "-o", f"IdentityFile={self.key},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes,dir_cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0",
             f"root@127.0.0.1:{remote}", str(mountpoint)],
            check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    sshd_bin = _need("/usr/sbin/sshd")
    _need("ssh-keygen")
    _need("sshfs")
    _need("fusermount")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPidFile {d / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        "MaxStartups 100\nMaxSessions 100\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir sshd insists on
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"))
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.05)
    try:
        yield Sshd(port=port, key=d / "client_key", proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Shared:
    """One store reachable at two paths, as two hosts would see it."""

    kind: str
    path_a: Path
    path_b: Path
    state_a: Path
    state_b: Path


def _umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["fusermount", "-u", str(path)], capture_output=True).returncode == 0:
            return
        if not os.path.ismount(path):
            return
        time.sleep(0.1)
    subprocess.run(["fusermount", "-uz", str(path)], capture_output=True)


@pytest.fixture(params=["local", pytest.param("sshfs", marks=pytest.mark.integration)])
def shared(request: pytest.FixtureRequest, tmp_path: Path):
    """A store root for the contract suite: a local dir, or an sshfs mount (two mounts)."""
    if request.param == "local":
        root = tmp_path / "store"
        yield Shared("local", root, root, tmp_path / "state-a", tmp_path / "state-b")
        return
    sshd: Sshd = request.getfixturevalue("sshd")
    remote = tmp_path / "remote"
    remote.mkdir()
    a, b = tmp_path / "mnt-a", tmp_path / "mnt-b"
    sshd.mount(remote, a)
    try:
        sshd.mount(remote, b)
        try:
            yield Shared("sshfs", a / "store", b / "store", tmp_path / "state-a", tmp_path / "state-b")
        finally:
            _umount(b)
    finally:
        _umount(a)


def run_py(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process (another "host") with the worktree importable."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
