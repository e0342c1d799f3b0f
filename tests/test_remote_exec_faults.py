"""Faults of the remote execution infrastructure under a running step, with real BuildGrid
on PostgreSQL, real `kata worker`s and a TCP proxy between the client and the scheduler:
a connection that goes silent for good (half-open: no RST ever comes), a slow link, the
scheduler hung, Ctrl-C of the client. The run ends in bounded time and says why."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import yaml

from support.proxy import FaultProxy
from test_remote_exec import grid, kata, worker_of, worker_pool, worker_starting  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def one_worker(grid):  # noqa: F811
    with worker_pool(grid, names=("w1",)) as pool:
        yield pool


def _start(kata, url: str) -> subprocess.Popen:  # noqa: F811
    return subprocess.Popen([*kata.base, "run", "--remote-executor", url], cwd=kata.repo,
                            env=kata.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _end(run: subprocess.Popen, limit: float) -> tuple[str, str]:
    try:
        return run.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGINT)  # its cleanup runs: no mount left behind
        try:
            out, err = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
        raise AssertionError(f"kata run did not end within {limit}s:\n{out}{err}") from None


def test_a_connection_to_the_scheduler_gone_silent_mid_step_is_replaced(grid, one_worker,  # noqa: F811
                                                                        kata):
    """The client's connection to the scheduler goes silent for good while a step runs (a
    NAT or load balancer that dropped its state; the scheduler's host lost power and came
    back): no RST ever comes, so gRPC believes the connection alive. The client must not
    wait on it for ever: it opens a new connection, follows the operation again
    (WaitExecution) and the run passes."""
    bg, image = grid
    pipeline = {"pipeline": "silent", "steps": [
        {"name": "slow", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["sleep 3", "mkdir -p out", "cp src/a.txt out/"]},
        {"name": "after", "image": image, "depends_on": ["slow"],
         "commands": ["cat out/a.txt"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        run = _start(kata, f"grpc://127.0.0.1:{proxy.port}")
        try:
            worker_starting(run, one_worker)
            proxy.blackhole()
            out, err = _end(run, 150)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 0, out + err
    assert "after | hello from the client" in out
    assert proxy.connections >= 2  # a new connection replaced the silent one
    assert worker_of(kata, "slow") == "w1"
