"""Remote execution end to end (issue 13, item 2): `kata run --remote-executor` against a real
BuildGrid whose scheduler runs on a real PostgreSQL, with two real `kata worker` processes,
each with its own containerd, pulling the step image from a real registry, and a real
`kata logstream` server where the scheduler creates each job's log streams (the workers
write the step's output there, the client reads it while the step runs)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from support.buildgrid_exec import buildgrid_execution, kata_logstream
from support.cli import ROOT, KataProcess
from support.images import busybox_image
from support.postgres import postgres_cluster
from support.registry import docker_registry, push_image

pytestmark = pytest.mark.integration

SERVE = "trap 'exit 0' TERM; echo db-up; nc -ll -p 5432 -e echo pong & wait"
RAN_ON = re.compile(r"kata: ran on worker (\S+)")
GIVEN_TO = re.compile(r"kata: worker \S+ lost the step; the scheduler gave it to worker "
                      r"(\S+), whose output follows")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(BuildGrid, image reference in a registry both ends reach); ``grid[0].logstream``
    is the `kata logstream` URL its scheduler creates log streams at."""
    base = tmp_path_factory.mktemp("grid")
    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(base / "bgd", db, logstream=logs) as bg, \
            docker_registry(base / "registry") as registry:
        push_image(registry, "kata/busybox", "1", busybox_image())
        bg.logstream = logs
        yield bg, f"{registry.removeprefix('http://')}/kata/busybox:1"


class Worker:
    """One `kata worker` process with its own embedded containerd under /tmp/kt-w-*."""

    def __init__(self, name: str, url: str, logstream: str, state: Path | None = None,
                 env: dict[str, str] | None = None, extra: tuple[str, ...] = (),
                 wrap: tuple[str, ...] = ()) -> None:
        self.name = name
        if state is None:
            state = Path(f"/tmp/kt-w-{secrets.token_hex(3)}")  # short: socket paths
            state.mkdir(mode=0o711)
        self.state = state
        self.log = self.state / "worker.log"
        if "KATA_CONFIG" not in (env or {}):  # the tests' registry is on 127.0.0.1
            config = self.state / "kata-config.yaml"
            config.write_text("worker:\n  allow_private_registries: true\n")
            env = {**(env or {}), "KATA_CONFIG": str(config)}
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "kata", "worker", "--executor", url, "--name", name,
             "--state-dir", str(self.state), "--poll", "5", "--logstream", logstream,
             *extra],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "bot session" not in self.text():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.containerd.daemon import daemon_paths, socket_answers, stop_daemon

        paths = daemon_paths(self.state)
        if socket_answers(paths.socket):  # what a SIGKILLed worker left running: swept
            ContainerdRuntime.connect(address=paths.address, state_dir=str(self.state),
                                      sweep=True).close()
        stop_daemon(paths)
        subprocess.run(["umount", "-R", "-l", str(self.state)], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


@contextmanager
def worker_pool(grid, names: tuple[str, ...] = ("w1", "w2"), extra: tuple[str, ...] = (),
                env: dict[str, str] | None = None):
    bg, _image = grid
    pool = [Worker(name, bg.url, bg.logstream, extra=extra, env=env) for name in names]
    try:
        for w in pool:
            w.wait_ready()
        yield pool
    finally:
        for w in pool:
            w.close()


@pytest.fixture
def workers(grid):
    with worker_pool(grid) as pool:
        yield pool


@pytest.fixture
def uncached_workers(grid):
    """Two workers that keep no blobs (``--blob-cache 0``): every input is read from the
    CAS, as a worker that never saw it reads it."""
    with worker_pool(grid, extra=("--blob-cache", "0")) as pool:
        yield pool


@pytest.fixture
def kata(tmp_path, containerd_daemon, request):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("hello from the client\n")
    proc = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    if "grid" in request.fixturenames:  # the host config names the log stream server
        bg, _image = request.getfixturevalue("grid")
        config = tmp_path / "kata-config.yaml"
        config.write_text(f"remote:\n  logstream: {bg.logstream}\n")
        proc.env["KATA_CONFIG"] = str(config)
    return proc


def ten_steps(image: str) -> dict:
    """gen -> six parallel steps + a step with a service -> join -> last; artifacts flow."""
    steps = [{"name": "gen", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
              "commands": ["mkdir -p out", "cat src/a.txt > out/a.txt", "sleep 0.3"]}]
    for i in range(1, 7):
        steps.append({"name": f"p{i}", "image": image, "depends_on": ["gen"],
                      "artifacts": [f"out/p{i}/"],
                      "commands": ["grep -q hello out/a.txt", f"mkdir -p out/p{i}",
                                   f"echo {i} > out/p{i}/v", "sleep 0.5"]})
    steps.append({"name": "svc", "image": image, "depends_on": ["gen"],
                  "artifacts": ["out/svc/"],
                  "services": [{"name": "db", "image": image, "commands": [SERVE],
                                "ready": {"tcp": 5432, "timeout": "20s"}}],
                  "commands": ["mkdir -p out/svc", "nc db 5432 </dev/null > out/svc/reply",
                               "grep -q pong out/svc/reply"]})
    steps.append({"name": "join", "image": image,
                  "depends_on": [f"p{i}" for i in range(1, 7)] + ["svc"],
                  "artifacts": ["out/final"],
                  "commands": ["test $(cat out/p*/v | wc -l) -eq 6", "cat out/svc/reply",
                               "cat out/p*/v | tr -d '\\n' > out/final"]})
    steps.append({"name": "last", "image": image, "depends_on": ["join"],
                  "commands": ["cat out/final", "test \"$(cat out/final)\" = 123456"]})
    return {"pipeline": "remote", "settings": {"max_parallel": 4}, "steps": steps}


def worker_of(kata, step: str) -> str:
    """The worker whose result counts: the one the log names first, or the last one the
    scheduler gave the step to."""
    logs = kata("logs", "--step", step)
    assert logs.returncode == 0, logs.stderr
    found = RAN_ON.findall(logs.stdout)
    assert len(found) == 1, logs.stdout
    return (GIVEN_TO.findall(logs.stdout) or found)[-1]


def test_a_ten_step_pipeline_runs_entirely_on_the_workers(grid, workers, kata):
    bg, image = grid
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(ten_steps(image), sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert run.returncode == 0, run.stdout + run.stderr + workers[0].text() + workers[1].text()
    assert "[DONE] All 10 steps passed" in run.stdout
    assert "last | 123456" in run.stdout  # the artifacts of all seven steps reached `join`
    ran = {step: worker_of(kata, step) for step in
           ["gen", *(f"p{i}" for i in range(1, 7)), "svc", "join", "last"]}
    assert set(ran.values()) == {"w1", "w2"}, ran  # every step on a worker, both used
    for w in workers:  # and each worker says so itself
        assert w.text().count(": done (ok)") == sum(v == w.name for v in ran.values())
    # the service's log came back with the step
    svc = kata("logs", "--step", "svc", "--service", "db")
    assert svc.returncode == 0 and "db-up" in svc.stdout, svc.stdout + svc.stderr
    # the run is in the local history like a local one
    runs = kata("runs", "--json")
    assert runs.returncode == 0, runs.stderr
    doc = json.loads(runs.stdout)
    assert doc["runs"][0]["status"] == "passed", doc
    # and recorded in the local store: the next run is all hits, nothing sent
    again = kata("run", "--remote-executor", bg.url)
    assert again.returncode == 0 and again.stdout.count(": HIT") == 10, again.stdout
    assert "ran on worker" not in again.stdout


def stop(run: subprocess.Popen) -> None:
    """A run the test gives up on is interrupted (it cleans up its mounts), killed only if
    it does not end."""
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def said(line: str, text: str) -> bool:
    """``line`` (plain or --json) is the step's output line ``text``."""
    if line.startswith("{"):
        event = json.loads(line)
        return event.get("event") == "output" and event.get("text") == text
    return line.rstrip("\n").endswith(f"| {text}")


def test_a_remote_step_streams_its_output_while_it_runs(grid, workers, kata):
    """The first line reaches the terminal (and `--json`) before the step ends: before any
    worker has reported the lease done. The log has each line once."""
    bg, image = grid
    pipeline = {"pipeline": "live", "steps": [
        {"name": "talk", "image": image, "inputs": ["src/**"],
         "commands": ["echo first-line", "sleep 4", "echo second-line"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    for args in ((), ("--json",)):
        done_before = sum(w.text().count(": done") for w in workers)
        run = subprocess.Popen([*kata.base, "run", "--no-cache", "--remote-executor", bg.url,
                                *args], cwd=kata.repo, env=kata.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            seen = []
            for line in run.stdout:  # type: ignore[union-attr]
                seen.append(line)
                if said(line, "first-line"):
                    break
            assert any(said(line, "first-line") for line in seen), seen + [run.stderr.read()]
            # shown while the step still runs: no worker has reported it done yet
            assert sum(w.text().count(": done") for w in workers) == done_before, seen
            assert not any(said(line, "second-line") for line in seen), seen
            out, err = run.communicate(timeout=120)
        finally:
            stop(run)
        assert run.returncode == 0, "".join(seen) + out + err
        assert "second-line" in out
        if args:  # --json: the same lines as output events
            events = [json.loads(line) for line in "".join(seen).splitlines() + out.splitlines()]
            texts = [e["text"] for e in events if e.get("event") == "output"]
            assert [t for t in texts if t and t.endswith("-line")] == ["first-line",
                                                                         "second-line"], events
    logs = kata("logs", "--step", "talk")
    assert logs.stdout.count("first-line") == 1 and logs.stdout.count("second-line") == 1, \
        logs.stdout
    assert worker_of(kata, "talk") in {"w1", "w2"}


def test_a_client_that_cannot_read_the_streams_gets_the_output_with_the_result(grid, workers,
                                                                              kata):
    """Without remote.logstream the client asks the executor (BuildGrid serves no log
    streams): it gives up streaming for the run and prints each step's output whole, once."""
    bg, image = grid
    pipeline = {"pipeline": "nostream", "steps": [
        {"name": "a", "image": image, "inputs": ["src/**"], "commands": ["echo one-line"]},
        {"name": "b", "image": image, "depends_on": ["a"], "commands": ["echo two-line"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    env = {k: v for k, v in kata.env.items() if k != "KATA_CONFIG"}
    run = subprocess.run([*kata.base, "run", "--remote-executor", bg.url], cwd=kata.repo,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("a | one-line") == 1 and run.stdout.count("b | two-line") == 1
    assert {worker_of(kata, s) for s in ("a", "b")} <= {"w1", "w2"}


def test_network_mode_and_limits_reach_the_workers_container(grid, workers, kata):
    """The platform properties and kata-spec.json are what the worker runs with: `network:
    none` is loopback only, `default` has an interface of its own, and a memory limit the
    step exceeds is an out-of-memory failure on the worker."""
    bg, image = grid
    pipeline = {"pipeline": "limits", "settings": {"fail_fast": False}, "steps": [
        {"name": "isolated", "image": image, "network": "none", "inputs": ["src/**"],
         "commands": ['test "$(ls /sys/class/net)" = lo']},
        {"name": "bridged", "image": image, "inputs": ["src/**"],
         "commands": ["ls /sys/class/net | grep -vx lo"]},
        {"name": "hog", "image": image, "inputs": ["src/**"],
         "resources": {"memory": "64MiB", "pids": 64},
         "commands": ["dd if=/dev/zero of=/dev/null bs=100M count=1"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[PASS] isolated" in run.stdout and "[PASS] bridged" in run.stdout, run.stdout
    assert "[FAIL] hog (out of memory" in run.stdout, run.stdout
    assert {worker_of(kata, s) for s in ("isolated", "bridged", "hog")} <= {"w1", "w2"}


def test_an_absolute_symlink_travels_through_remote_execution(grid, workers, kata):
    """BuildGrid says ``symlink_absolute_path_strategy: DISALLOWED`` but neither checks nor
    rewrites links: a step's absolute link comes back from its worker, reaches a dependent
    on a worker as it was, and the run's artifact keeps it."""
    bg, image = grid
    pipeline = {"pipeline": "links", "steps": [
        {"name": "maker", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["mkdir -p out", "ln -s /etc/passwd out/abs", "ln -s abs out/rel"]},
        {"name": "reader", "image": image, "depends_on": ["maker"], "artifacts": ["seen"],
         "commands": ['test "$(readlink out/abs)" = /etc/passwd',
                      'test "$(readlink out/rel)" = abs', "grep -q root out/abs",
                      "readlink out/abs > seen"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    got = kata.repo.parent / f"got-{secrets.token_hex(3)}"
    run = kata("run", "--remote-executor", bg.url, "--out", str(got))
    assert run.returncode == 0, run.stdout + run.stderr
    assert {worker_of(kata, s) for s in ("maker", "reader")} <= {"w1", "w2"}
    assert (got / "maker" / "out" / "abs").readlink() == Path("/etc/passwd")
    assert (got / "reader" / "seen").read_text() == "/etc/passwd\n"


def test_an_archive_of_inputs_and_artifacts_is_the_same_bytes_on_a_worker_and_locally(
        grid, workers, kata, containerd_daemon):
    """An archiving step (tar here; zip, a wheel, a jar alike) records its files' mtimes.
    What a step sees from the store has one mtime everywhere (``store.tree.STEP_MTIME_NS``),
    so the archive is the same on a worker, locally, and on another host: early cutoff
    holds and a build that is reproducible stays so under Kata."""
    bg, image = grid
    pipeline = {"pipeline": "archive", "steps": [
        {"name": "gen", "image": image, "inputs": [], "artifacts": ["out/"],
         "commands": ["mkdir -p out/sub", "echo generated > out/sub/g.txt"]},
        {"name": "pack", "image": image, "depends_on": ["gen"], "inputs": ["src/**"],
         "artifacts": ["packed.tar", "times"],
         "commands": ["tar -cf packed.tar src out",
                      "stat -c '%Y %n' src src/a.txt out out/sub out/sub/g.txt > times"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    remote = kata.repo.parent / f"remote-{secrets.token_hex(3)}"
    run = kata("run", "--remote-executor", bg.url, "--out", str(remote))
    assert run.returncode == 0, run.stdout + run.stderr
    assert worker_of(kata, "pack") in {"w1", "w2"}
    time.sleep(1.1)  # a later second: what a fresh unpack would stamp differs
    other_host = KataProcess(kata.repo, store=kata.repo.parent / "store-b",
                             address=containerd_daemon.address, timeout=300)
    local = kata.repo.parent / f"local-{secrets.token_hex(3)}"
    run = other_host("run", "--out", str(local))
    assert run.returncode == 0, run.stdout + run.stderr
    assert (remote / "pack" / "times").read_text() == (
        "315619200 src\n315619200 src/a.txt\n315619200 out\n315619200 out/sub\n"
        "315619200 out/sub/g.txt\n")
    assert (remote / "pack" / "times").read_text() == (local / "pack" / "times").read_text()
    assert (remote / "pack" / "packed.tar").read_bytes() == (
        local / "pack" / "packed.tar").read_bytes()


def test_a_failing_remote_step_keeps_its_test_report(grid, workers, kata):
    """A test step that fails on a worker (what a test step usually does when it matters)
    still has its JUnit report read, as locally: found with a real project's pytest,
    whose failed run said "no tests" and "no report file matches" instead."""
    bg, image = grid
    xml = ('<testsuite name="t" tests="2"><testcase name="good"/><testcase name="bad">'
           '<failure message="boom"/></testcase></testsuite>')
    pipeline = {"pipeline": "failing", "steps": [
        {"name": "test", "image": image, "inputs": [], "reports": {"junit": ["reports/*.xml"]},
         "commands": ["mkdir reports", f"echo '{xml}' > reports/unit.xml", "exit 1"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert worker_of(kata, "test") in {"w1", "w2"}
    assert "[FAIL] test (exit 1, " in run.stdout, run.stdout
    assert "— 1 passed, 1 failed" in run.stdout, run.stdout
    assert "no report file matches" not in run.stdout + run.stderr


def worker_starting(run: subprocess.Popen, workers, timeout: float = 120):  # noqa: ANN001, ANN201
    """The first of ``workers`` to log that it starts a step, while ``run`` (a ``kata
    run`` process) goes on; fails the test if ``run`` ends or no worker starts one within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        victim = next((w for w in workers if ": starting" in w.text()), None)
        if victim is not None:
            return victim
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no worker took the step"
        time.sleep(0.05)


def test_a_worker_killed_mid_step_has_its_step_rerun_elsewhere(grid, workers, kata):
    bg, image = grid
    pipeline = {"pipeline": "kill", "steps": [
        {"name": "slow", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["echo started", "sleep 3", "mkdir -p out", "cp src/a.txt out/"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url], cwd=kata.repo,
                           env=kata.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        victim = worker_starting(run, workers)
        time.sleep(0.5)  # mid-step: its container is running
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    assert "[PASS] slow" in out
    survivor = next(w for w in workers if w is not victim)
    assert worker_of(kata, "slow") == survivor.name
    assert ": done (ok)" in survivor.text()
    # the victim left its lease's input root (the step's whole workspace) on disk; a worker
    # started again on that state dir removes it before it takes work, as it sweeps the
    # containers (it stayed there for good, one more per killed worker)
    left = list((victim.state / "worker").glob("lease-*"))
    assert left, "the SIGKILLed worker left no input root: the check below proves nothing"
    again = Worker(victim.name, bg.url, bg.logstream, state=victim.state)
    try:
        again.wait_ready()
        assert not any(p.exists() for p in left), left
    finally:
        again.proc.send_signal(signal.SIGTERM)
        again.proc.wait(30)  # the victim's close() stops the daemon and removes the state


def test_the_scheduler_restarting_mid_step_loses_nothing(grid, workers, kata):
    """BuildGrid stopped and started again (same port, same PostgreSQL) while a step runs:
    the worker keeps its lease and reports it later, the client follows the operation again
    (WaitExecution), and the next run still finds the workers."""
    bg, image = grid
    pipeline = {"pipeline": "restart", "steps": [
        {"name": "long", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["sleep 2", "mkdir -p out", "cp src/a.txt out/"]},
        {"name": "after", "image": image, "depends_on": ["long"],
         "commands": ["cat out/a.txt"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url], cwd=kata.repo,
                           env=kata.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(": starting" in w.text() for w in workers):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no worker took the step"
            time.sleep(0.05)
        bg.stop()
        bg.start()
        out, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    assert "after | hello from the client" in out
    assert {worker_of(kata, "long"), worker_of(kata, "after")} <= {"w1", "w2"}
    assert all(w.proc.poll() is None for w in workers)  # both workers lived through it


def test_a_step_with_a_secret_runs_locally(grid, workers, kata):
    bg, image = grid
    pipeline = {"pipeline": "secret", "steps": [
        {"name": "deploy", "image": image, "secrets": ["TOKEN"], "inputs": ["src/**"],
         "commands": ['test -n "$TOKEN"', "echo deployed"]},
        {"name": "plain", "image": image, "inputs": ["src/**"],
         "commands": ["echo plain", "cat src/pasted.txt"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    # someone pasted the secret into a file: the remote step's streamed output is masked
    (kata.repo / "src" / "pasted.txt").write_text("value=s3cret-value-1\n")
    run = kata("run", "--remote-executor", bg.url, "--secret", "TOKEN=s3cret-value-1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deploy | kata: ran locally: the step has secrets" in run.stdout
    assert "deploy | deployed" in run.stdout
    assert "plain | value=***" in run.stdout and "s3cret-value-1" not in run.stdout
    logs = kata("logs", "--step", "plain")
    assert "value=***" in logs.stdout and "s3cret-value-1" not in logs.stdout
    assert worker_of(kata, "plain") in {"w1", "w2"}
    for w in workers:  # the one remote step is the only lease any worker saw
        assert "s3cret" not in w.text()
    assert sum(w.text().count(": starting") for w in workers) == 1


def test_a_step_that_sees_a_secret_steps_artifacts_runs_locally(grid, workers, kata):
    """Its workspace holds what the secret step wrote (here the value itself), so it must
    not go into the scheduler's CAS either; a step beside them still runs remotely."""
    bg, image = grid
    value = "s3cret-in-an-artifact-77"
    pipeline = {"pipeline": "taint", "steps": [
        {"name": "sign", "image": image, "secrets": ["TOKEN"], "inputs": ["src/**"],
         "artifacts": ["sig"], "commands": ['echo "$TOKEN" > sig']},
        {"name": "bundle", "image": image, "depends_on": ["sign"], "inputs": ["src/**"],
         "artifacts": ["n"], "commands": ["wc -c < sig > n"]},
        {"name": "ship", "image": image, "depends_on": ["bundle"], "inputs": ["src/**"],
         "commands": ["cat n"]},
        {"name": "plain", "image": image, "inputs": ["src/**"], "commands": ["echo plain"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = kata("run", "--remote-executor", bg.url, "--secret", f"TOKEN={value}")
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("sign", "bundle", "ship"):
        assert f"{step} | kata: ran locally: the step has secrets" in run.stdout, run.stdout
    assert worker_of(kata, "plain") in {"w1", "w2"}
    cas = [p for p in (bg.workdir / "cas").rglob("*") if p.is_file()]
    assert cas and not any(value.encode() in p.read_bytes() for p in cas)


def test_fail_fast_cancels_a_remote_step_on_its_worker(grid, workers, kata):
    """A step that fails cancels its running sibling: the client cancels the operation, the
    scheduler withdraws the lease, the worker stops the container."""
    bg, image = grid
    pipeline = {"pipeline": "ff", "settings": {"fail_fast": True, "max_parallel": 2}, "steps": [
        {"name": "bad", "image": image, "inputs": ["src/**"],
         "commands": ["sleep 1", "exit 3"]},
        {"name": "long", "image": image, "inputs": ["src/**"],
         "commands": ["sleep 120"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[FAIL] bad (exit 3" in run.stdout
    assert "[CANCEL] long (fail_fast: bad failed, " in run.stdout
    deadline = time.monotonic() + 60
    while not any("was withdrawn: stopping it" in w.text() for w in workers):
        assert time.monotonic() < deadline, workers[0].text() + workers[1].text()
        time.sleep(0.2)


def test_an_image_only_the_client_holds_names_the_worker_and_how_to_import_it(
        grid, workers, kata, tmp_path):
    """An image imported on the client (kata.local/...) is not on the workers, which pull
    by digest: the step fails with the worker's name and the import command for its
    containerd, not only "cannot fetch ... https://kata.local"."""
    from support.images import busybox_layer, files_layer, make_image, write_oci_archive

    ref = f"kata.local/only-here:{secrets.token_hex(4)}"
    img = make_image([busybox_layer(), files_layer({"etc/only": ref.encode()})], ref=ref)
    imported = kata("image", "import", str(write_oci_archive(img, tmp_path / "only.tar")))
    assert imported.returncode == 0, imported.stderr
    bg, image = grid
    # a step before it, so the client has sent blobs it may trust the CAS still holds: it
    # read the worker's failed lease as inputs the CAS lost and sent the step once more
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "local-image", "steps": [
        {"name": "first", "image": image, "inputs": ["src/**"], "artifacts": ["o"],
         "commands": ["cp src/a.txt o"]},
        {"name": "s", "image": ref, "depends_on": ["first"], "inputs": ["src/**"],
         "commands": ["true"]}]}))
    run = kata("run", "--json", "--remote-executor", bg.url)
    assert run.returncode == 1, run.stdout + run.stderr
    fails = [e for e in map(json.loads, run.stdout.splitlines())
             if e.get("event") == "fail" and e.get("step") == "s"]
    assert len(fails) == 1 and fails[0]["reason"].startswith("image."), fails
    message = fails[0]["message"]
    assert re.match(r"worker w[12]: ", message), message
    sockets = [str(w.state / "containerd.sock") for w in workers]
    assert any(f"kata --containerd {s} image import FILE" in message for s in sockets), message
    # it failed as the step's own error, once: one lease, not a second one sent after it
    assert sum(w.text().count(": starting") for w in workers) == 2, [w.text() for w in workers]
    log = kata("logs", "--step", "s").stdout
    assert log.count("kata: " + message) == 1, log  # as a local run logs an image error


def test_names_reapi_cannot_carry_run_locally_or_fail_clearly(grid, workers, kata):
    """A repository file whose name is not UTF-8 (Linux allows it, REAPI names cannot hold
    it): the step runs locally, saying why (it was a traceback). A step that *makes* such
    a file on a worker fails naming it, without the scheduler's crash retries."""
    bg, image = grid
    raw = os.fsencode(kata.repo / "src") + b"/odd\xffname"
    with open(raw, "wb") as f:
        f.write(b"odd\n")
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({
        "pipeline": "names", "settings": {"fail_fast": False}, "steps": [
        {"name": "reads", "image": image, "inputs": ["src/**"], "commands": ["cat src/odd*"]},
        {"name": "first", "image": image, "inputs": [], "artifacts": ["f"],
         "commands": ["echo f > f"]},
        {"name": "makes", "image": image, "inputs": [], "artifacts": ["o/"],
         "depends_on": ["first"],
         "commands": ["mkdir -p o", "echo x > \"o/$(printf 'a\\377b')\""]}]},
        sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert "[PASS] reads" in run.stdout, run.stdout + run.stderr
    assert "reads | kata: ran locally: the workspace holds src/odd" in run.stdout, run.stdout
    assert "reads | odd" in run.stdout
    assert run.returncode == 1 and "[FAIL] makes" in run.stdout, run.stdout
    fail = next(line for line in run.stdout.splitlines() if line.startswith("[FAIL] makes"))
    assert "o/a" in fail and "not UTF-8" in fail, fail
    assert "UnicodeEncodeError" not in run.stdout
    # the step's own failure, once: after `first` ran remotely the client trusted the CAS
    # with blobs it did not send again, and read a failed lease as inputs lost: it sent
    # `makes` a second time
    assert sum(w.text().count(": starting") for w in workers) == 2, [w.text() for w in workers]


def test_an_executor_that_does_not_answer_fails_the_step_with_a_clear_reason(kata, runtime):
    from support.registry import free_port

    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "down", "steps": [
        {"name": "s", "image": "kata.local/busybox:latest", "inputs": ["src/**"],
         "commands": ["true"]}]}, sort_keys=False))
    url = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    run = kata("run", "--remote-executor", url, "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [json.loads(line) for line in run.stdout.splitlines()
              if '"fail"' in line]
    assert failed and failed[0]["reason"] == "remote.unavailable", run.stdout
    assert f"remote execution at {url} given up for this run" in failed[0]["message"]
    # ...and what to do (found on redis-py: a typo in the port gave every step the raw gRPC
    # error, where `kata doctor` names the fix)
    assert f"start the scheduler at {url}" in failed[0]["message"], failed[0]["message"]
    bad = kata("run", "--remote-executor", "localhost:1")
    assert bad.returncode == 2 and "grpc://HOST:PORT" in bad.stderr
    # the host config's remote.executor is the flag's default
    config = kata.repo.parent / "kata-config.yaml"
    config.write_text(f"remote:\n  executor: {url}\n")
    hosted = kata("run", "--json", KATA_CONFIG=str(config))
    assert hosted.returncode == 1, hosted.stdout + hosted.stderr
    assert f"remote execution at {url} given up for this run" in hosted.stdout
    config.write_text("remote:\n  executor: localhost:1\n")
    bad = kata("run", KATA_CONFIG=str(config))
    assert bad.returncode == 2 and "remote.executor" in bad.stderr, bad.stderr


def test_doctor_checks_the_configured_remote_executor(grid, kata):
    """`kata doctor` asks the host config's remote.executor for its capabilities: the real
    BuildGrid answers execEnabled; a port nobody listens on fails with the fix."""
    from support.registry import free_port

    bg, _image = grid
    config = kata.repo.parent / "doctor-config.yaml"
    for url, status in ((bg.url, "ok"), (f"grpc://127.0.0.1:{free_port()}", "fail")):
        config.write_text(f"remote:\n  executor: {url}\n")
        done = kata("doctor", "--json", KATA_CONFIG=str(config))
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        assert checks["remote-executor"]["status"] == status, done.stdout
        assert url in checks["remote-executor"]["detail"]
        if status == "fail":
            assert done.returncode == 1 and "start the scheduler" in \
                checks["remote-executor"]["fix"]
    config.write_text("remote:\n  executor: localhost:1\n")
    bad = kata("doctor", KATA_CONFIG=str(config))
    assert bad.returncode == 2 and "remote.executor" in bad.stderr, bad.stderr


def test_doctor_checks_the_scheduler_a_worker_here_would_serve(grid, kata, tmp_path):
    """`kata doctor --worker-executor URL` asks the scheduler as `kata worker --executor
    URL` would use it (doctor checked only a client's remote.executor, so a worker machine
    learnt of a wrong instance, a cache-only server or a hung scheduler only from the
    worker's own exit or endless retries): the real BuildGrid has a Bots service; an
    instance it lacks, a cache-only BuildGrid, a port nobody listens on and a scheduler
    that never answers each fail with their fix."""
    from support.buildgrid import buildgrid
    from support.proxy import FaultProxy
    from support.registry import free_port

    bg, _image = grid

    def check(url: str, *extra: str) -> tuple[int, dict]:
        done = kata("doctor", "--json", "--worker-executor", url, *extra)
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        assert url in checks["worker-scheduler"]["detail"], checks["worker-scheduler"]
        return done.returncode, checks["worker-scheduler"]

    code, ok = check(bg.url)
    assert ok["status"] == "ok" and "Bots service present" in ok["detail"], ok
    code, lacking = check(bg.url, "--remote-instance", "nope")
    assert code == 1 and lacking["status"] == "fail", lacking
    assert "instance" in lacking["fix"] and "--instance" in lacking["fix"], lacking
    with buildgrid(tmp_path / "cache-only") as cache:
        code, cache_only = check(cache.url)
    assert code == 1 and "no Bots service" in cache_only["fix"], cache_only
    down = f"grpc://127.0.0.1:{free_port()}"
    code, gone = check(down)
    assert code == 1 and f"start the scheduler at {down}" in gone["fix"], gone
    with FaultProxy(("127.0.0.1", bg.port)) as proxy:
        proxy.tripped.set()  # takes the connection, never answers
        code, hung = check(f"grpc://127.0.0.1:{proxy.port}")
    assert code == 1 and "hung or overloaded" in hung["fix"], hung
    bad = kata("doctor", "--worker-executor", "localhost:1")
    assert bad.returncode == 2 and "--worker-executor" in bad.stderr, bad.stderr


def lose_a_blob_between_steps(grid, kata) -> tuple[str, str, str]:
    """Run ``first`` (which sends the blob ``src/lost.txt``), ``slow`` and ``second`` (which
    needs it again, after both); the blob is deleted from BuildGrid's disk CAS after
    ``first`` passed, while ``slow`` holds ``second`` back. The client does not ask about
    it again (its memo of what the CAS holds). Returns (stdout, stderr, the blob's hash)."""
    import hashlib

    bg, image = grid
    content = f"lost and found {secrets.token_hex(8)}\n".encode()  # a blob of its own
    (kata.repo / "src" / "lost.txt").write_bytes(content)
    (kata.repo / "x").write_text("x\n")
    digest = hashlib.sha256(content).hexdigest()
    pipeline = {"pipeline": "lost", "steps": [
        {"name": "first", "image": image, "inputs": ["src/**"], "artifacts": ["n"],
         "commands": ["wc -c < src/lost.txt > n"]},
        {"name": "slow", "image": image, "inputs": ["x"],
         "commands": ["echo napping", "sleep 6"]},
        {"name": "second", "image": image, "depends_on": ["first", "slow"],
         "inputs": ["src/**"], "commands": ["test \"$(wc -c < src/lost.txt)\" = \"$(cat n)\"",
                                            "echo still-there"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    code, out, err = _lose_blob_mid_run(  # while `slow` still runs
        kata, bg, digest, lambda seen: any(x.startswith("[PASS] first") for x in seen)
        and any(said(x, "napping") for x in seen))
    assert code == 0, out + err
    assert "second | still-there" in out, out
    return out, err, digest


def _lose_blob_mid_run(kata, bg, digest: str, ready) -> tuple[int, str, str]:  # noqa: ANN001
    """`kata run --no-cache --remote-executor` until ``ready(lines so far)``; then BuildGrid's
    disk CAS loses the blob ``digest`` (it must hold it then) and the run goes on to its
    end. Its exit status, stdout and stderr."""
    run = subprocess.Popen([*kata.base, "run", "--no-cache", "--remote-executor", bg.url],
                           cwd=kata.repo, env=kata.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in run.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if ready(seen):
                break
        found = stored_blob(bg, digest)
        assert found, seen
        for path in found:
            path.unlink()
        out, err = run.communicate(timeout=240)
    finally:
        stop(run)
    return run.returncode, "".join(seen) + out, err


def stored_blob(bg, digest: str) -> list[Path]:
    """Where BuildGrid's disk CAS holds the blob ``digest`` (none: it lost it)."""
    return [p for p in (bg.workdir / "cas").rglob(digest[2:]) if p.parent.name == digest[:2]]


def test_an_input_blob_the_cas_lost_between_steps_is_sent_again(grid, uncached_workers,
                                                                   kata):
    """A CAS that dropped a blob the client trusts it holds (an eviction, a restart) fails
    the next step's execution (its worker cannot fetch it: these workers keep no blobs):
    the client asks about everything, sends it once more, and the step passes."""
    bg, _image = grid
    _out, _err, digest = lose_a_blob_between_steps(grid, kata)
    assert stored_blob(bg, digest), "the client did not send the lost blob again"
    # the first attempt failed on its worker (the blob was gone), the second passed
    missed = f"BatchReadBlobs {digest}: NOT_FOUND"
    workers = uncached_workers
    assert any(missed in w.text() for w in workers), [w.text()[-2000:] for w in workers]
    assert worker_of(kata, "second") in {"w1", "w2"}


def test_a_worker_needs_no_cas_copy_of_a_blob_it_has_seen(grid, kata):
    """A worker keeps the blobs it read and sent (``--blob-cache``): ``second``, on the
    worker that ran ``first``, finds the blob the CAS lost in its memory (no failed
    attempt, nothing read from the CAS for it), and its inputs are those ``first`` saw."""
    with worker_pool(grid, names=("w1",)) as (w1,):
        _out, _err, digest = lose_a_blob_between_steps(grid, kata)
        assert f"BatchReadBlobs {digest}" not in w1.text(), w1.text()[-2000:]
        assert not re.search(r"lease \S+ failed", w1.text()), w1.text()[-2000:]
    assert worker_of(kata, "second") == "w1"


def test_a_worker_sends_back_no_input_it_just_read_and_the_client_uses_its_own_copy(grid,
                                                                                   kata):
    """The worker does not send back the small input files it read from the CAS moments
    before (no FindMissingBlobs, no second copy); the client takes the output's copies of
    its inputs from its own files. So a step's output stays whole even when the CAS lost
    such a blob while the step ran: ``copy`` copies ``src/kept.txt`` under a new name, the
    blob is deleted from BuildGrid's disk CAS while it naps, and the new name still gets
    the bytes (``show`` prints them, upper-cased: a log holding an input's very bytes is
    sent, as every blob of the result is); nothing sent the blob again."""
    import hashlib

    bg, image = grid
    content = f"kept by the client {secrets.token_hex(8)}\n".encode()  # a blob of its own
    (kata.repo / "src" / "kept.txt").write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    pipeline = {"pipeline": "own", "steps": [
        {"name": "copy", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": ["mkdir out", "cp src/kept.txt out/copy", "echo napping", "sleep 4"]},
        {"name": "show", "image": image, "depends_on": ["copy"],
         "commands": ["tr a-z A-Z < out/copy"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with worker_pool(grid, names=("w1",)) as (w1,):
        # the client sent it, the worker read it; the CAS loses it while `copy` still runs
        code, out, err = _lose_blob_mid_run(kata, bg, digest,
                                            lambda seen: said(seen[-1], "napping"))
        assert code == 0, out + err + w1.text()[-3000:]
        assert f"show | {content.decode().strip().upper()}" in out, out
        assert not stored_blob(bg, digest), "the worker sent back an input it had just read"
        assert f"BatchReadBlobs {digest}" not in w1.text(), w1.text()[-2000:]


def _peak_rss(pid: int) -> int:
    """A live process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_step_with_huge_output_costs_neither_end_its_size_in_memory(grid, workers, kata):
    """A step printing 256 MiB: the worker and the client hold a bounded part of it, as a
    local run does (its client stayed under 100 MB for 400 MB of output). Found by a new
    user: both ends kept the whole output in memory, several copies of it (400 MB of
    output cost the client 2.3 GB and the worker 840 MB), so a test suite that prints a
    few GiB would kill either; and the log still arrives whole."""
    bg, image = grid
    size = 256 << 20
    pipeline = {"pipeline": "huge", "steps": [
        {"name": "loud", "image": image, "inputs": [],
         "commands": [f"head -c {size} /dev/zero | tr '\\0' y | fold -w 10000", "echo end"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url], cwd=kata.repo,
                           env=kata.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _pid, status, usage = os.wait4(run.pid, 0)
    finally:
        if run.returncode is None and run.poll() is None:
            run.kill()
            run.wait()
    run.returncode = os.waitstatus_to_exitcode(status)
    assert run.returncode == 0, run.stderr.read()
    client_peak = usage.ru_maxrss * 1024
    ran_on = worker_of(kata, "loud")
    worker = next(w for w in workers if w.name == ran_on)
    worker_peak = _peak_rss(worker.proc.pid)
    # with the fix: the worker ~150 MiB; the client ~150 MiB alone, up to ~360 MiB on a
    # loaded machine (its output waits for the terminal); before: 600 MiB and 1.4 GiB
    assert client_peak < 3 * size, f"the client peaked at {client_peak >> 20} MiB"
    assert worker_peak < size, f"worker {ran_on} peaked at {worker_peak >> 20} MiB"
    logs = subprocess.run([*kata.base, "logs", "--step", "loud"], cwd=kata.repo, env=kata.env,
                          capture_output=True, timeout=300)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count(b"y") == size and logs.stdout.rstrip().endswith(b"end")


def test_a_service_with_huge_output_costs_the_worker_a_bounded_part_of_it(grid, workers,
                                                                         kata):
    """A step's service printing 256 MiB: the worker held each service's log in memory
    (a bytearray, then a copy to upload), where the step's own output already spilled to
    a file past 1 MiB (``LogBuffer``); services now spill the same way. The log still
    arrives whole."""
    bg, image = grid
    size = 256 << 20
    loud = f"head -c {size} /dev/zero | tr '\\0' y | fold -w 10000; echo svc-end; {SERVE}"
    pipeline = {"pipeline": "huge-svc", "steps": [
        {"name": "client", "image": image, "inputs": [],
         "services": [{"name": "db", "image": image, "commands": [loud],
                       "ready": {"tcp": 5432, "timeout": "240s"}}],
         "commands": ["nc db 5432 </dev/null | grep -q pong"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = kata("run", "--remote-executor", bg.url)
    assert run.returncode == 0, run.stdout + run.stderr
    ran_on = worker_of(kata, "client")
    worker = next(w for w in workers if w.name == ran_on)
    worker_peak = _peak_rss(worker.proc.pid)
    # with the fix ~150 MiB, as for a step's own output; before: over 500 MiB
    assert worker_peak < size, f"worker {ran_on} peaked at {worker_peak >> 20} MiB"
    logs = subprocess.run([*kata.base, "logs", "--step", "client", "--service", "db"],
                          cwd=kata.repo, env=kata.env, capture_output=True, timeout=300)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count(b"y") == size and b"svc-end" in logs.stdout


def test_a_second_worker_under_a_taken_name_stops_the_first_with_a_clear_error(grid, kata):
    """BuildGrid replaces a bot's session when a new one opens under the same bot id (a
    worker restarted). Two live workers given one --name each replaced the other's session
    for ever, their steps re-queued until BuildGrid gave up ("Job was retried 5
    unsuccessfully"): found by a new user. The older one now says so and exits 2; the
    newer one keeps the name and runs the steps."""
    bg, image = grid
    first = Worker("twin", bg.url, bg.logstream)
    second = None
    try:
        first.wait_ready()
        second = Worker("twin", bg.url, bg.logstream)
        second.wait_ready()
        try:
            first.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"both workers kept the name:\n{first.text()}") from None
        assert first.proc.returncode == 2, first.text()
        errors = [x for x in first.text().splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "'twin'" in errors[0] and "--name" in errors[0], errors
        assert "Traceback" not in first.text()
        pipeline = {"pipeline": "twin", "steps": [
            {"name": "one", "image": image, "inputs": [], "commands": ["echo one"]}]}
        (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        run = kata("run", "--remote-executor", bg.url)
        assert run.returncode == 0, run.stdout + run.stderr + second.text()
        assert worker_of(kata, "one") == "twin" and second.proc.poll() is None
    finally:
        first.close()
        if second is not None:
            second.close()


def test_a_step_no_worker_takes_says_so_while_it_waits(grid, kata):
    """With no worker running (none started yet, all stopped), BuildGrid keeps a step queued
    for as long as it takes, and `kata run` printed nothing after `[RUN]`: a new user
    cannot tell a slow step from one nobody runs. After QUEUED_NOTICE seconds the step's
    output says it is queued and what to check; Ctrl-C still ends the run (exit 130)."""
    from kata.executor.client import QUEUED_NOTICE

    bg, image = grid
    pipeline = {"pipeline": "waiting", "steps": [
        {"name": "alone", "image": image, "inputs": [], "timeout": "5s",
         "commands": ["echo nobody runs this"]}]}
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url], cwd=kata.repo,
                           env=kata.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        # workers other tests stopped may hold it until BuildGrid's keep-alive (8 s) ends
        deadline = time.monotonic() + QUEUED_NOTICE + 60
        while not any("kata: queued" in x for x in lines):
            assert time.monotonic() < deadline and run.poll() is None, "".join(lines)
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        run.wait(60)
        reader.join(10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    said = "".join(lines)
    notice = next(x for x in said.splitlines() if "kata: queued" in x)
    assert notice.startswith("alone | kata: queued for "), notice
    assert "no worker has taken the step" in notice and "kata worker" in notice, notice
    assert run.returncode == 130, said + run.stderr.read()  # type: ignore[union-attr]
