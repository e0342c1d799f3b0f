"""Fixtures for the store's tests: a local store and one shared through sshfs over loopback.

The sshd behind the sshfs mounts is `support/sshfs.py`'s session fixture (shared with the
realiser's property test on an sshfs store). Missing tools fail the test loudly; nothing
is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.sshfs import Sshd, umount

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Shared:
    """One store reachable at two paths, as two hosts would see it."""

    kind: str
    path_a: Path
    path_b: Path
    state_a: Path
    state_b: Path


@pytest.fixture(params=["local", pytest.param("sshfs", marks=pytest.mark.integration)])
def shared(request: pytest.FixtureRequest, tmp_path: Path):
    """A store root for the contract suite: a local dir, or an sshfs mount (two mounts)."""
    if request.param == "local":
        root = tmp_path / "store"
        yield Shared("local", root, root, tmp_path / "state-a", tmp_path / "state-b")
        return
    sshd: Sshd = request.getfixturevalue("sshd")  # tests/conftest.py (support/sshfs.py)
    remote = tmp_path / "remote"
    remote.mkdir()
    a, b = tmp_path / "mnt-a", tmp_path / "mnt-b"
    sshd.mount(remote, a)
    try:
        sshd.mount(remote, b)
        try:
            yield Shared("sshfs", a / "store", b / "store", tmp_path / "state-a", tmp_path / "state-b")
        finally:
            umount(b)
    finally:
        umount(a)


def run_py(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process (another "host") with the worktree importable."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
