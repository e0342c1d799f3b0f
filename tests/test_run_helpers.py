"""Small pieces of `kata run`: reading HEAD without forking git, conditions for a local run."""

from __future__ import annotations

import subprocess

from kata.gitctx import _git
from kata.gitctx import head as git_head


def _sh(cwd, *args):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def test_git_head_matches_git(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    assert git_head(repo) == ("", "")
    _sh(repo, "git", "init", "-q", "-b", "feature/x")
    assert git_head(repo) == ("", "feature/x")  # no commit yet
    (repo / "f").write_text("x")
    _sh(repo, "git", "add", "f")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    expected = (_git(repo, "rev-parse", "HEAD"), "feature/x")
    (repo / "sub").mkdir()
    assert git_head(repo) == expected and git_head(repo / "sub") == expected
    _sh(repo, "git", "pack-refs", "--all")
    assert git_head(repo) == expected
    _sh(repo, "git", "worktree", "add", "-q", "-b", "other", str(tmp_path / "wt"))
    assert git_head(tmp_path / "wt") == (expected[0], "other")
    _sh(repo, "git", "checkout", "-q", "--detach")
    assert git_head(repo) == (expected[0], "HEAD")
