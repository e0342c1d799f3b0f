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

from support.buildgrid_exec import buildgrid_execution, kata_logstream
from support.images import busybox_image
from support.postgres import postgres_cluster
from support.proxy import FaultProxy
from support.registry import docker_registry, push_image
from test_remote_exec import kata, worker_of, worker_pool, worker_starting  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """As test_remote_exec's, with its PostgreSQL cluster as ``grid[0].db``."""
    base = tmp_path_factory.mktemp("grid")
    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(base / "bgd", db, logstream=logs) as bg, \
            docker_registry(base / "registry") as registry:
        push_image(registry, "kata/busybox", "1", busybox_image())
        bg.logstream, bg.db = logs, db
        yield bg, f"{registry.removeprefix('http://')}/kata/busybox:1"


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


def test_a_connection_to_the_scheduler_gone_silent_mid_step_is_replaced(grid, one_worker,
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


def test_ctrl_c_cancels_the_operation_and_the_worker_stops_the_steps_container(grid,
                                                                              one_worker,
                                                                              kata):
    """SIGINT to `kata run` while its step runs on a worker: the run ends at once (exit
    130), the client cancels the operation on the scheduler (CancelOperation), the worker
    stops the step's container, and the worker takes the next run's step."""
    bg, image = grid
    pipeline = {"pipeline": "ctrlc", "steps": [
        {"name": "long", "image": image, "inputs": ["src/**"],
         "commands": ["echo started", "sleep 300"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (worker,) = one_worker
    run = _start(kata, bg.url)
    try:
        worker_starting(run, one_worker)
        time.sleep(1)  # its container runs
        run.send_signal(signal.SIGINT)
        out, err = _end(run, 30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    deadline = time.monotonic() + 60
    while "was withdrawn: stopping it" not in worker.text():
        assert time.monotonic() < deadline, worker.text()
        time.sleep(0.2)
    # the slot is free again: a short step of the next run runs on this one worker
    pipeline["steps"][0]["commands"] = ["echo again"]
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    again = kata("run", "--remote-executor", bg.url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert worker_of(kata, "long") == "w1"


def test_a_scheduler_hung_mid_step_then_back_loses_nothing(grid, one_worker, kata):
    """BuildGrid SIGSTOPped for 45 s while a step runs (past the client's idle watch, so it
    cuts its stream and opens new connections to a server that takes them and never
    answers; the worker's long poll times out too), then SIGCONTed: the step's result
    arrives, the run passes, and the worker is still serving."""
    bg, image = grid
    pipeline = {"pipeline": "hung", "steps": [
        {"name": "slow", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["sleep 2", "mkdir -p out", "cp src/a.txt out/"]},
        {"name": "after", "image": image, "depends_on": ["slow"],
         "commands": ["cat out/a.txt"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = _start(kata, bg.url)
    try:
        worker_starting(run, one_worker)
        bg.pause()
        try:
            time.sleep(45)
            assert run.poll() is None, run.communicate()
        finally:
            bg.resume()
        out, err = _end(run, 180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    assert "after | hello from the client" in out
    assert one_worker[0].proc.poll() is None, one_worker[0].text()


def test_postgresql_crashing_under_the_scheduler_mid_step_loses_nothing(grid, one_worker,
                                                                        kata):
    """The scheduler's PostgreSQL crashes (``pg_ctl stop -m immediate``) while two steps
    run on a worker, and is back 5 s later: BuildGrid reconnects, the worker reports its
    results, the client gets them, and the run passes."""
    bg, image = grid
    pipeline = {"pipeline": "pg", "settings": {"max_parallel": 2}, "steps": [
        {"name": f"s{i}", "image": image, "inputs": ["src/**"], "artifacts": [f"o{i}"],
         "commands": ["sleep 3", f"cp src/a.txt o{i}"]} for i in (1, 2)] + [
        {"name": "after", "image": image, "depends_on": ["s1", "s2"],
         "commands": ["cat o1 o2"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = _start(kata, bg.url)
    try:
        worker_starting(run, one_worker)
        bg.db.crash()
        try:
            time.sleep(5)
        finally:
            bg.db.start()
        out, err = _end(run, 240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    assert out.count("after | hello from the client") == 2, out
    assert one_worker[0].proc.poll() is None, one_worker[0].text()


def test_the_workers_containerd_killed_mid_step_the_run_still_passes(grid, one_worker, kata):
    """The worker's own containerd SIGKILLed while its step runs: the step is not lost
    for good: the run passes (the step run again), and the worker serves the next run."""
    import os
    import signal as sig

    from kata.runtimes.containerd.daemon import daemon_paths

    bg, image = grid
    pipeline = {"pipeline": "ctrd", "steps": [
        {"name": "slow", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["sleep 3", "mkdir -p out", "cp src/a.txt out/"]},
        {"name": "after", "image": image, "depends_on": ["slow"],
         "commands": ["cat out/a.txt"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (worker,) = one_worker
    run = _start(kata, bg.url)
    try:
        worker_starting(run, one_worker)
        time.sleep(1)
        pid = int(daemon_paths(worker.state).pidfile.read_text().split()[0])
        os.kill(pid, sig.SIGKILL)
        out, err = _end(run, 240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    print(out + err + worker.text()[-3000:])
    assert run.returncode == 0, out + err + worker.text()[-3000:]
    assert "after | hello from the client" in out
    assert worker.proc.poll() is None, worker.text()


def test_a_worker_whose_disk_is_full_says_so_and_keeps_serving(grid, kata):  # noqa: F811
    """A worker whose state directory (its input roots) is a 96 MiB tmpfs is given a step
    whose inputs do not fit: the run ends with a message naming the worker and the full
    disk, no half-written input root stays, and the worker serves the next step."""
    import os
    import secrets as tokens
    from pathlib import Path

    from test_remote_exec import Worker

    bg, image = grid
    state = Path(f"/tmp/kt-w-{tokens.token_hex(3)}")
    state.mkdir(mode=0o711)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0711", "tmpfs", str(state)],
                   check=True)
    worker = Worker("full", bg.url, bg.logstream, state=state)
    try:
        worker.wait_ready()
        (kata.repo / "big").write_bytes(os.urandom(120 << 20))
        pipeline = {"pipeline": "full", "steps": [
            {"name": "big", "image": image, "inputs": ["big"], "commands": ["wc -c big"]}]}
        (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        run = kata("run", "--remote-executor", bg.url)
        print(run.stdout + run.stderr + worker.text()[-3000:])
        assert run.returncode == 1, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
        # the admission check refuses inputs larger than the free space before writing
        # any; a disk that fills while writing says the same (OSError ENOSPC)
        assert "worker full: its disk is full (" in run.stdout, run.stdout
        assert "--state-dir" in run.stdout and "OSError" not in run.stdout
        assert "Traceback" not in worker.text(), worker.text()
        assert not list((state / "worker").glob("lease-*"))
        assert worker.proc.poll() is None, worker.text()
        (kata.repo / "big").write_bytes(b"small now\n")
        again = kata("run", "--remote-executor", bg.url)
        assert again.returncode == 0, again.stdout + again.stderr + worker.text()[-3000:]
        assert worker_of(kata, "big") == "full"
    finally:
        worker.close()


def test_ctrl_c_while_the_executor_does_not_answer_ends_the_run_at_once(grid, one_worker,  # noqa: F811
                                                                        kata):
    """Every connection to the scheduler goes silent (new ones too) after a first step
    ran remotely; the next step's input upload waits on it, and would retry for
    reconnect_for (5 minutes). Ctrl-C then ends the run within seconds (exit 130)."""
    import os

    bg, image = grid
    (kata.repo / "big").write_bytes(os.urandom(8 << 20))
    pipeline = {"pipeline": "cut", "steps": [
        {"name": "one", "image": image, "inputs": ["src/**"], "artifacts": ["o"],
         "commands": ["cp src/a.txt o"]},
        {"name": "two", "image": image, "depends_on": ["one"], "inputs": ["big"],
         "commands": ["wc -c big"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        run = _start(kata, f"grpc://127.0.0.1:{proxy.port}")
        try:
            assert run.stdout is not None
            for line in run.stdout:
                if line.startswith("[PASS] one"):
                    proxy.tripped.set()  # new connections are black holes too
                    proxy.blackhole()
                    break
            time.sleep(3)
            assert run.poll() is None
            run.send_signal(signal.SIGINT)
            started = time.monotonic()
            out, err = _end(run, 60)
            took = time.monotonic() - started
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err
    assert took < 15, took


def test_a_scheduler_hung_from_the_start_ends_the_remote_part_once(grid, kata):  # noqa: F811
    """A scheduler that takes connections and never answers (hung, a proxy in front of a
    dead one): each step's first call waited out its own deadline (60 s for the input
    upload), then every later step again, so a run was bounded only by the steps' count
    and the 5-minute window. The run's first call to the scheduler (GetCapabilities) now
    gives it up after FIRST_CONTACT_ANSWER seconds: one step says so, with the fix; the
    other steps meant for it fail at once naming that; nothing runs here instead (the
    run asked for remote machines, docs/remote.md)."""
    import json

    bg, image = grid
    steps = [{"name": f"s{i}", "image": image, "inputs": ["src/**"], "commands": ["true"]}
             for i in range(4)]
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(
        {"pipeline": "hung", "settings": {"fail_fast": False, "max_parallel": 2},
         "steps": steps}, sort_keys=False))
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        proxy.tripped.set()  # every connection is a black hole: accepted, never answered
        url = f"grpc://127.0.0.1:{proxy.port}"
        run = subprocess.Popen([*kata.base, "run", "--remote-executor", url, "--json"],
                               cwd=kata.repo, env=kata.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            out, err = _end(run, 200)  # a bound on a hang, far above the first contact's
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 1, out + err
    assert "Traceback" not in err, err
    failed = [json.loads(line) for line in out.splitlines() if '"fail"' in line]
    messages = [f.get("message", "") for f in failed if f.get("reason")]
    assert len(messages) == 4, out
    first = [m for m in messages if "given up for this run" in m]
    assert len(first) == 1, messages
    assert f"remote execution at {url} given up for this run: GetCapabilities: " \
        "DEADLINE_EXCEEDED" in first[0], first[0]
    assert "hung or overloaded" in first[0] and "remote.connect_timeout" in first[0], first[0]
    later = [m for m in messages if m not in first]
    assert all(f"remote execution at {url} was given up earlier in this run" in m
               for m in later), later


def test_ctrl_c_while_a_remote_result_downloads_ends_the_run_at_once(grid, one_worker,  # noqa: F811
                                                                     kata):
    """Ctrl-C while the client lays a big output of a remote step into its workspace (the
    sync, a ByteStream read over a slow link): the sync went on to its end (minutes here)
    before the run stopped. It is now given up at once: exit 130, the step not recorded
    (it runs again next time), the store sound, nothing left in the client's containerd."""
    bg, image = grid
    pipeline = {"pipeline": "bigout", "steps": [
        {"name": "big", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["mkdir -p out", "head -c 50000000 /dev/urandom > out/big",
                      "cp src/a.txt out/"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (worker,) = one_worker
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        proxy.delay = 0.25  # 64 KiB a quarter second: the 50 MB output takes ~3 minutes
        run = _start(kata, f"grpc://127.0.0.1:{proxy.port}")
        try:
            deadline = time.monotonic() + 180
            while ": done (ok)" not in worker.text():  # the result is in: the client fetches
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, worker.text()
                time.sleep(0.2)
            while proxy.down < (1 << 20):  # into the big file's ByteStream read
                assert run.poll() is None, run.communicate()
                time.sleep(0.2)
            run.send_signal(signal.SIGINT)
            out, err = _end(run, 60)  # a bound on a hang, far below the download's time
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 130, out + err
    assert "Traceback" not in err, err
    verify = kata("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    plan = kata("run", "--dry-run", "--remote-executor", bg.url)
    assert "big" in plan.stdout and "HIT" not in plan.stdout, plan.stdout
    again = kata("run", "--remote-executor", bg.url)
    assert again.returncode == 0, again.stdout + again.stderr
