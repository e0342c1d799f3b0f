"""Parity of remote execution with a local run (issue 13: a remote step runs "as locally"
and is recorded like a local one): the same pipeline run by `kata run` here and by a real
`kata worker` through a real BuildGrid (PostgreSQL scheduler) must leave the same outputs,
statuses and logs. Each test runs both and compares what each recorded."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml

from support.cli import KataProcess
from test_remote_exec import grid, kata, worker_of, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def both(kata, containerd_daemon, pipeline: dict, *runs: tuple[str, ...]):  # noqa: ANN001, F811
    """Run ``pipeline`` locally (its own store) and remotely (``kata``'s store) once per
    item of ``runs`` (extra args; an item may be a callable, called between runs to edit
    the repo): {"local": [results], "remote": [results]}, each with its ``--out`` dir."""
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    local = KataProcess(kata.repo, store=kata.repo.parent / f"store-local-{secrets.token_hex(3)}",
                        address=containerd_daemon.address, timeout=300)
    bg = kata.grid_url
    got: dict[str, list] = {"local": [], "remote": []}
    for item in runs:
        if callable(item):
            item()
            continue
        for where, proc, extra in (("local", local, ()), ("remote", kata,
                                                            ("--remote-executor", bg))):
            out = kata.repo.parent / f"out-{where}-{secrets.token_hex(3)}"
            res = proc("run", *extra, *item, "--out", str(out))
            res.out = out
            got[where].append(res)
    return got


@pytest.fixture
def remote_kata(grid, kata):  # noqa: F811
    kata.grid_url = grid[0].url
    kata.image = grid[1]
    return kata


def test_cache_paths_are_restored_as_the_steps_users_on_a_worker_as_locally(
        grid, workers, remote_kata, containerd_daemon):  # noqa: F811
    """`cache.paths` come back before the next run of the step "as the step's user's and
    writable by it" (docs/config.md). On a worker they came back as the materialised
    inputs do, root's and read-only: a step with a `user:` could not add to its cache (npm
    ci, pip, cargo all write there), and failed where it passes locally."""
    kata = remote_kata
    pipeline = {"pipeline": "caches", "steps": [
        {"name": "build", "image": kata.image, "user": "1000:1000", "inputs": ["src/**"],
         "cache": {"paths": ["c/"]}, "artifacts": ["count", "owners"],
         "commands": ["mkdir -p c/sub", "echo run >> c/sub/log",
                      "wc -l < c/sub/log > count", "stat -c '%u %g %A %n' c c/sub c/sub/log "
                      "> owners"]}]}

    def edit() -> None:
        (kata.repo / "src" / "a.txt").write_text("edited: the step runs again\n")

    got = both(kata, containerd_daemon, pipeline, (), edit, ())
    for where in ("local", "remote"):
        for res in got[where]:
            assert res.returncode == 0, where + res.stdout + res.stderr
    assert worker_of(kata, "build") in {"w1", "w2"}
    second = {w: got[w][1].out / "build" for w in ("local", "remote")}
    assert (second["local"] / "count").read_text().strip() == "2"
    assert (second["local"] / "owners").read_text() == (
        "1000 1000 drwxr-xr-x c\n1000 1000 drwxr-xr-x c/sub\n1000 1000 -rw-r--r-- c/sub/log\n")
    for name in ("count", "owners"):
        assert (second["remote"] / name).read_text() == (second["local"] / name).read_text()
