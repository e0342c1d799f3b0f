"""Symlinks are data (issue 12, item 11), end to end through the CLI on real containerd:
a repository holding absolute links and links out of the tree runs; each step sees its
links as they were, resolved only inside its container; an artifact keeps its links
(a virtualenv's ``bin/python -> /usr/bin/python3``) through the store, a dependent and
``--out``/``kata export``; a named link to a directory of the workspace carries the
directory; nothing on the host is read or written through any of them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

CONFIG = """\
pipeline: links
steps:
  - name: see
    image: kata.local/busybox:latest
    commands:
      - test "$(readlink host-secret)" = "{secret}"
      - test ! -e host-secret
      - test "$(readlink up)" = ../..
      - test "$(readlink alias)" = src && cat alias/a.txt
  - name: realvenv
    image: kata.local/busybox:latest
    inputs: ["pyenv/**"]
    artifacts: [pyenv/]
    commands: ["test -L pyenv/bin/python3 && test -L pyenv/lib64"]
  - name: venv
    image: kata.local/busybox:latest
    inputs: [none]
    artifacts: [venv/, result]
    commands:
      - mkdir -p venv/bin build/out
      - ln -s /usr/bin/python3 venv/bin/python
      - ln -s python venv/bin/python3
      - ln -s {secret} venv/planted
      - echo app > build/out/app
      - ln -s /workspace/build/out result
  - name: use
    image: kata.local/busybox:latest
    inputs: [none]
    depends_on: [venv]
    commands:
      - test "$(readlink venv/bin/python)" = /usr/bin/python3
      - test -L venv/planted && test ! -e venv/planted
      - test -d result && test ! -L result && cat result/app
"""


def _links(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): os.readlink(p) for p in sorted(root.rglob("*"))
            if p.is_symlink()}


def test_links_are_data_from_repository_to_export(tmp_path, containerd_daemon, runtime):
    secret = tmp_path / "host-only" / "secret"
    secret.parent.mkdir()
    secret.write_text("host data\n")
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("through the alias\n")
    (repo / ".kata-ci.yaml").write_text(CONFIG.format(secret=secret))
    os.symlink(secret, repo / "host-secret")  # absolute, and not in any container
    os.symlink("../..", repo / "up")
    os.symlink("src", repo / "alias")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(repo / "pyenv")],
                   check=True)  # a real virtualenv: bin/python3 -> /usr/bin/python3, lib64 -> lib
    venv_links = _links(repo / "pyenv")
    assert venv_links["bin/python3"] == "/usr/bin/python3"
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)

    valid = kata("validate")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    out = tmp_path / "out"
    first = kata("run", "--out", str(out))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "see | through the alias" in first.stdout.splitlines()
    assert "use | app" in first.stdout.splitlines()
    assert _links(out / "venv") == {"venv/bin/python": "/usr/bin/python3",
                                    "venv/bin/python3": "python", "venv/planted": str(secret)}
    assert (out / "venv" / "result").is_dir() and not (out / "venv" / "result").is_symlink()
    assert (out / "venv" / "result" / "app").read_text() == "app\n"
    assert _links(out / "realvenv" / "pyenv") == venv_links  # exported as the same links
    assert secret.read_text() == "host data\n"

    second = kata("run")  # the links are keyed as links: all cached
    assert second.returncode == 0 and "4 cached, 0 ran" in second.stdout.splitlines()[-1]
    os.unlink(repo / "up")
    os.symlink("../../..", repo / "up")  # a retargeted link is a changed input
    third = kata("run")
    assert "[CACHE] see: MISS" in third.stdout.splitlines()
    assert third.returncode == 1  # see checks the old target

    from store import Store

    with Store.open(tmp_path / "store") as s:
        run_id = s.list_runs(pipeline="links", limit=3)[-1].id
    later = tmp_path / "later"
    exp = kata("export", "--run", run_id, "--step", "venv", "--out", str(later))
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert _links(later) == {"venv/bin/python": "/usr/bin/python3", "venv/bin/python3": "python",
                             "venv/planted": str(secret)}
    assert secret.read_text() == "host data\n"
