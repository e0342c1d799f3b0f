"""A `kata worker` stopped by SIGTERM (a deploy, a scale-down) hands its leases back at
once: it stops its running steps and reports each lease to the scheduler as not done
(UNAVAILABLE, bot status BOT_TERMINATING), so BuildGrid re-queues the step and another
worker runs it, instead of the step waiting out the scheduler's bot-session keep-alive.

Real BuildGrid on PostgreSQL, two real workers with their own containerd, a real
registry. The scheduler's keep-alive here is far longer than the run is given: a step
that waited for it would fail the run's deadline."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import yaml

from support.buildgrid_exec import buildgrid_execution, kata_logstream
from support.cli import KataProcess
from support.images import busybox_image
from support.postgres import postgres_cluster
from support.registry import docker_registry, push_image
from test_remote_exec import worker_of, worker_pool, worker_starting

pytestmark = pytest.mark.integration

KEEPALIVE = 900  # seconds: a lease only the keep-alive freed would outlast the run's limit


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    base = tmp_path_factory.mktemp("grid")
    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(base / "bgd", db, logstream=logs,
                                keepalive=KEEPALIVE) as bg, \
            docker_registry(base / "registry") as registry:
        push_image(registry, "kata/busybox", "1", busybox_image())
        bg.logstream = logs
        yield bg, f"{registry.removeprefix('http://')}/kata/busybox:1"


@pytest.fixture
def kata(tmp_path, containerd_daemon, grid):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("hello from the client\n")
    proc = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    config = tmp_path / "kata-config.yaml"
    config.write_text(f"remote:\n  logstream: {grid[0].logstream}\n")
    proc.env["KATA_CONFIG"] = str(config)
    return proc


def test_a_sigtermed_worker_hands_its_step_to_another_at_once(grid, kata):
    bg, image = grid
    pipeline = {"pipeline": "handback", "steps": [
        {"name": "slow", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["echo started", "sleep 4", "mkdir -p out", "cp src/a.txt out/"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with worker_pool(grid) as workers:
        run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url],
                               cwd=kata.repo, env=kata.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            victim = worker_starting(run, workers)
            time.sleep(1.0)  # mid-step: its container is running
            victim.proc.send_signal(signal.SIGTERM)
            assert victim.proc.wait(60) == 0, victim.text()
            out, err = run.communicate(timeout=150)  # far below KEEPALIVE
        finally:
            if run.poll() is None:  # SIGTERM: the client removes its workspace mounts
                run.send_signal(signal.SIGTERM)
                try:
                    run.wait(30)
                except subprocess.TimeoutExpired:
                    run.kill()
                    run.wait()
        assert run.returncode == 0, out + err + victim.text()
        assert "[PASS] slow" in out
        survivor = next(w for w in workers if w is not victim)
        assert worker_of(kata, "slow") == survivor.name
        assert ": done (ok)" in survivor.text()
        assert "handed back" in victim.text(), victim.text()
        assert "done (ok)" not in victim.text()  # its step was stopped, not finished
        assert "stopped on SIGTERM" in victim.text().splitlines()[-1], victim.text()


def test_a_sigtermed_worker_says_it_stops_idle_or_waiting_for_its_scheduler(grid):
    """A `kata worker` SIGTERMed with no lease (idle, its long poll waiting for work)
    logged nothing and vanished; now it says it is stopping, ends its bot session at the
    scheduler (not at the keep-alive) and exits 0 with a last line naming the signal. The
    same for one still waiting for a scheduler that took its connection and never
    answered (hung), which it had not even said it was waiting for."""
    from support.proxy import FaultProxy
    from test_remote_exec import Worker

    bg, _image = grid
    with worker_pool(grid, names=("idle",)) as (idle,):
        idle.wait_ready()
        idle.proc.send_signal(signal.SIGTERM)
        assert idle.proc.wait(60) == 0, idle.text()
        text = idle.text()
        assert "stopping: 0 lease(s) held" in text, text
        assert "told the scheduler (bot session" in text, text
        assert text.splitlines()[-1].endswith("kata worker idle: stopped on SIGTERM"), text
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        proxy.tripped.set()  # accepted, never answered
        hung = Worker("hung", f"grpc://127.0.0.1:{proxy.port}", bg.logstream)
        try:
            deadline = time.monotonic() + 120
            while "waiting for it" not in hung.text():  # it says what to check, once
                assert hung.proc.poll() is None, hung.text()
                assert time.monotonic() < deadline, hung.text()
                time.sleep(0.2)
            assert "kata doctor --worker-executor" in hung.text(), hung.text()
            hung.proc.send_signal(signal.SIGTERM)
            assert hung.proc.wait(60) == 0, hung.text()
            text = hung.text()
            assert "stopping: 0 lease(s) held" in text, text
            assert text.splitlines()[-1].endswith("kata worker hung: stopped on SIGTERM"), text
        finally:
            hung.close()
