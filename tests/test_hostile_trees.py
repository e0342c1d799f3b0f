"""Hostile trees: a step that leaves a directory nested deeper than Python's recursion
limit (a few thousand levels, ``mkdir d && cd d`` in a loop) in its workspace or in an
artifact. Kata must stay up: no traceback, a clear failure where the tree cannot be
stored, and nothing left on the host (the step's workspace is removed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from procs.leftovers import remove_tree
from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def _deep(levels: int) -> str:
    """Shell making ``d/d/.../d/f``, ``levels`` directories deep (relative paths: the
    whole path stays below PATH_MAX, ~2 bytes a level)."""
    return f"p=$(printf 'd/%.0s' $(seq {levels})); mkdir -p $p && echo bottom > ${{p}}f"


def _repo(tmp_path: Path, steps: list[dict]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "deep", "steps": steps}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "deep")
    return repo


@pytest.fixture
def deep_tmp(tmp_path):
    """``tmp_path``, removed at the end by a remover that takes any depth: pytest's own
    clean-up of old temporary directories (``shutil.rmtree``) cannot."""
    yield tmp_path
    for child in tmp_path.iterdir():
        remove_tree(str(child))


def _workspaces_left(store: Path) -> list[str]:
    work = store / "local" / "work"
    assert work.is_dir()  # where the runs' workspaces are (run_cmds: <state dir>/work)
    return [p.name for p in work.iterdir()]


def test_a_step_leaving_a_deeper_tree_than_python_recurses_is_cleaned_up(
        deep_tmp, containerd_daemon, runtime):
    tmp_path = deep_tmp
    repo = _repo(tmp_path, [{"name": "deep", "image": IMAGE, "inputs": ["x"],
                             "commands": [_deep(1500)]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    run = kata("run")  # KataProcess asserts no traceback
    assert run.returncode == 0, run.stdout + run.stderr
    assert _workspaces_left(tmp_path / "store") == []


def test_an_artifact_deeper_than_python_recurses_is_stored_passed_on_and_exported(
        deep_tmp, containerd_daemon, runtime):
    tmp_path = deep_tmp
    path = "d/" * 1500 + "f"
    repo = _repo(tmp_path, [
        {"name": "make", "image": IMAGE, "inputs": ["x"], "artifacts": ["d/"],
         "reports": {"junit": ["d/"]},  # its .xml files are looked for at any depth
         "commands": [_deep(1500)]},
        {"name": "use", "image": IMAGE, "inputs": ["x"], "depends_on": ["make"],
         "commands": [f"cat {path}"]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    out = tmp_path / "out"
    run = kata("run", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "use | bottom" in run.stdout.splitlines()
    fd = os.open(out / "make", os.O_RDONLY)  # below PATH_MAX from here, not from /
    try:
        assert os.open(path, os.O_RDONLY, dir_fd=fd) >= 0
    finally:
        os.close(fd)
    assert _workspaces_left(tmp_path / "store") == []
    again = kata("export", "--out", str(out))  # over the deep tree the run wrote there
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_step_nesting_directories_in_its_root_filesystem_leaves_nothing(
        deep_tmp, containerd_daemon, runtime):
    """The same tree under /tmp, outside the workspace: it lands in the step's root
    filesystem layer (a direct step's ``upper``, kata's to remove), not in a mount."""
    from support.fixtures import assert_clean

    tmp_path = deep_tmp
    repo = _repo(tmp_path, [{"name": "deep", "image": IMAGE, "inputs": ["x"],
                             "commands": ["cd /tmp && " + _deep(1500)]}])
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    run = kata("run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cleanup failed" not in run.stderr, run.stderr
    assert_clean(runtime)
