"""`kata` as a real process, the way the CLI tests drive it: never a traceback."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


class KataProcess:
    """Runs ``python -m kata [--containerd ADDR] ARGS`` in ``repo`` with ``KATA_STORE=store``.

    ``drop`` names environment variables the test must not inherit (e.g. a secret
    the test wants to be missing); ``extra`` on a call adds variables for that call.
    """

    def __init__(self, repo: Path, *, store: Path, address: str | None = None,
                 drop: tuple[str, ...] = (), timeout: float = 120) -> None:
        self.repo = repo
        self.timeout = timeout
        self.base = [sys.executable, "-m", "kata"] + (["--containerd", address] if address else [])
        self.env = {k: v for k, v in os.environ.items() if k not in drop}
        self.env.update(KATA_STORE=str(store), PYTHONPATH=str(ROOT))

    def __call__(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        env: Mapping[str, str] = {**self.env, **extra} if extra else self.env
        proc = subprocess.run([*self.base, *args], cwd=self.repo, env=env, capture_output=True,
                              text=True, timeout=self.timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc


def run_on_pty(argv: list[str], cwd: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal (120 x 40) as its stdin, stdout and stderr; its
    exit status and everything it wrote, escape sequences and all."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(60), b"".join(chunks).decode("utf-8", "replace")
