"""`kata` as a real process, the way the CLI tests drive it: never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
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
