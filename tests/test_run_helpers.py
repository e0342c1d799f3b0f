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


def test_a_failed_sweep_of_dead_leftovers_warns_and_the_run_goes_on(capsys):
    """What dead processes left (a netns another kata is tearing down, a CNI error) is not
    this run's fault: the sweep's error is one warning line and the runtime is handed out."""
    from kata.cli.run_cmds import LazyRuntime
    from kata.errors import KataError

    class Runtime:
        progress = None
        sweeps = 0

        def sweep(self):
            self.sweeps += 1
            raise KataError("runtime.cleanup", "sweep networks: CNI DEL for kata-d416 failed")

    lazy = LazyRuntime(None)
    rt = Runtime()
    lazy._rt = rt
    assert lazy._get(True) is rt and lazy._get(True) is rt
    assert rt.sweeps == 1  # once per run, failed or not
    err = capsys.readouterr().err
    assert err == ("kata: warning: could not clear what an earlier kata left: "
                   "sweep networks: CNI DEL for kata-d416 failed\n")
