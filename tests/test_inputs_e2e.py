"""Stale inputs, end to end (issue 9, item 1): a file rewritten with the same size and the
same mtime (`cp -p` of a file whose mtime was set with `touch -d`) is read again, by
`kata run --no-cache` and by a plain `kata run`. Real git, real containerd, the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from support.cli import KataProcess
from support.git import git_env

pytestmark = pytest.mark.integration

PIPELINE = """\
pipeline: stale
steps:
  - name: show
    image: kata.local/busybox:latest
    commands: [cat vendor/lib.txt]
"""


def _sh(cwd, script: str) -> None:
    """The issue's shell lines as typed, with the tests' git identity (support/git.py)."""
    subprocess.run(["sh", "-ec", script], cwd=cwd, env=git_env(), check=True,
                   capture_output=True)


def _run(kata: KataProcess, *args: str) -> tuple[dict, list[str]]:
    """`kata run --json ARGS`: (the step's cache event, the step's output lines)."""
    proc = kata("run", "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    (cache,) = [e for e in events if e["event"] == "cache" and e["step"] == "show"]
    return cache, [e["text"] for e in events if e["event"] == "output"]


def test_cp_p_with_the_same_size_and_mtime_is_seen(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "work" / "repo"
    (repo / "vendor").mkdir(parents=True)
    (repo / ".kata-ci.yaml").write_text(PIPELINE)
    # the reproduction, verbatim (plus a v3 for the plain run)
    _sh(repo, """
        git init -q .
        mkdir -p ../v1 ../v2 ../v3
        echo "lib v1.0" > ../v1/lib.txt; echo "lib v2.0" > ../v2/lib.txt
        echo "lib v3.0" > ../v3/lib.txt
        touch -d @1 ../v1/lib.txt ../v2/lib.txt ../v3/lib.txt
        cp -p ../v1/lib.txt vendor/lib.txt; git add -A; git commit -qm init
    """)
    time.sleep(3)  # past the racily-clean window: the stat cache records vendor/lib.txt
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)

    plain = kata("run")  # the plain lines, once, as the issue shows them
    assert plain.returncode == 0, plain.stdout + plain.stderr
    lines = plain.stdout.splitlines()
    assert "[CACHE] show: MISS" in lines and "show | lib v1.0" in lines
    v1, _ = _run(kata)
    assert v1["hit"]

    ino = os.stat(repo / "vendor/lib.txt").st_ino
    _sh(repo, "cp -p ../v2/lib.txt vendor/lib.txt")
    st = os.stat(repo / "vendor/lib.txt")
    # what the stat cache saw before, but for ctime: the case under test
    assert (st.st_ino, st.st_size, st.st_mtime_ns) == (ino, 9, 10**9)

    fresh = kata("run", "--no-cache")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    lines = fresh.stdout.splitlines()
    assert "[CACHE] show: MISS" in lines
    assert "show | lib v2.0" in lines and "show | lib v1.0" not in lines

    # what --no-cache recorded is v2's result: a plain run hits it, under another key
    v2, out = _run(kata)
    assert v2["hit"] and v2["key"] != v1["key"] and out == []

    # and a plain run after the next same-size, same-mtime edit is a MISS that sees it
    _sh(repo, "cp -p ../v3/lib.txt vendor/lib.txt")
    v3, out = _run(kata)
    assert not v3["hit"] and v3["key"] not in (v1["key"], v2["key"])
    assert out == ["lib v3.0"]
