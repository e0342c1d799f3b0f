"""A hostile step on a remote worker: a workspace nested deeper than Python recurses
(``mkdir -p d/d/...``, 1,500 levels). The worker packs it, the client writes it back,
a dependent on a worker reads it, and the worker removes each lease's input root: real
BuildGrid with PostgreSQL, a real registry, a real `kata worker`."""

from __future__ import annotations

import time

import pytest
import yaml

from procs.leftovers import remove_tree
from test_remote_exec import grid, kata, worker_of, worker_pool  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

DEEP = "d/" * 1500


def _leases_left(worker, timeout: float = 15) -> list[str]:
    """The lease input roots still in the worker's work root once it settles."""
    root = worker.state / "worker"
    deadline = time.monotonic() + timeout
    while True:
        left = [p.name for p in root.iterdir() if p.name.startswith("lease-")] \
            if root.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_a_remote_step_nesting_its_workspace_deeper_than_python_recurses(grid, kata):  # noqa: F811
    bg, image = grid
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "deep", "steps": [
        {"name": "make", "image": image, "inputs": ["src/**"], "artifacts": ["d/"],
         "commands": [f"mkdir -p {DEEP} && echo bottom > {DEEP}f"]},
        {"name": "use", "image": image, "inputs": ["src/**"], "depends_on": ["make"],
         "commands": [f"cat {DEEP}f"]}]}))
    with worker_pool(grid, names=("wdeep",)) as (worker,):
        try:
            run = kata("run", "--remote-executor", bg.url)
            assert run.returncode == 0, run.stdout + run.stderr + worker.text()
            assert "use | bottom" in run.stdout.splitlines()
            assert worker_of(kata, "make") == worker_of(kata, "use") == "wdeep"
            assert "crashed" not in worker.text(), worker.text()
            assert _leases_left(worker) == []
        finally:  # what a failure left must not stop the worker's own clean-up
            for lease in (worker.state / "worker").glob("lease-*"):
                remove_tree(str(lease))
    for child in kata.repo.parent.iterdir():
        remove_tree(str(child))
