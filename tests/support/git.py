"""Running git in tests: the one helper (a fixed identity; the repository is the one named,
never one the environment points at, as ``kata.git`` does for Kata itself)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from kata.git import repo_environ

IDENTITY = {"GIT_AUTHOR_NAME": "Kata Test", "GIT_AUTHOR_EMAIL": "kata@example.invalid",
            "GIT_COMMITTER_NAME": "Kata Test", "GIT_COMMITTER_EMAIL": "kata@example.invalid"}


def git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without repository-locating GIT_* variables, with
    a fixed author/committer identity and a HOME."""
    env = repo_environ(base)
    env.update(IDENTITY)
    env.setdefault("HOME", os.environ.get("HOME", "/root"))
    return env


def git(cwd: str | os.PathLike[str], *args: str, env: Mapping[str, str] | None = None) -> str:
    """``git -C cwd ARGS``; asserts success (showing git's stderr) and returns stdout, stripped."""
    proc = subprocess.run(["git", "-C", str(Path(cwd)), *args], capture_output=True, text=True,
                          env=dict(env) if env is not None else git_env())
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def repo_from_tarball(tarball: Path, root: Path, top: str, config: str, message: str,
                      fetch: str) -> Path:
    """A real project's source tarball extracted under ``root`` (its top directory ``top``)
    with ``config`` as its .kata-ci.yaml, committed on ``main``: the repository path.
    RuntimeError naming ``fetch`` (how .ci/install gets it) when the tarball is missing."""
    import tarfile

    if not tarball.exists():
        raise RuntimeError(f"{tarball} is missing: run `bash .ci/install` ({fetch})")
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    repo = root / top
    (repo / ".kata-ci.yaml").write_text(config)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return repo

