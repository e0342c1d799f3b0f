"""An sshd of the tests' own on 127.0.0.1, for stores shared through sshfs.

The session fixture ``sshd`` starts sshd with a generated host key, a temporary
authorized_keys, a free port on 127.0.0.1 and its own config file; it never touches the
system's sshd configuration or ~/.ssh. ``Sshd.mount(remote, mountpoint)`` mounts a
directory over loopback sshfs (no attribute or entry caching, as two hosts would see
it); ``umount(path)`` undoes it. Missing tools fail the test loudly; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


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


def umount(path: Path) -> None:
    for _ in range(50):
        if subprocess.run(["fusermount", "-u", str(path)], capture_output=True).returncode == 0:
            return
        if not os.path.ismount(path):
            return
        time.sleep(0.1)
    subprocess.run(["fusermount", "-uz", str(path)], capture_output=True)
