"""`retry:` end to end (issue 14) on real containerd: a flaky step that fails once then
passes, each attempt shown and logged, only the final attempt recorded (and cached); an
exit code `on:` does not cover is not retried."""

from __future__ import annotations

import json

import pytest

from support.cli import KataProcess
from support.listeners import LoopbackListener

pytestmark = pytest.mark.integration


CONFIG = """\
pipeline: retry
steps:
  - name: flaky
    image: kata.local/busybox:latest
    network: host
    commands:
      - "n=$(nc -w 5 127.0.0.1 PORT </dev/null)"
      - "echo attempt $n"
      - "mkdir -p out && echo $n > out/result"
      - "test $n -ge 2"
    artifacts: [out/]
    retry: 2
  - name: after
    image: kata.local/busybox:latest
    depends_on: [flaky]
    commands: ["echo got $(cat out/result)"]
  - name: narrow
    image: kata.local/busybox:latest
    commands: ["echo once", "exit 1"]
    retry: {max: 2, on: [exit_code: 137, timeout]}
"""


@pytest.fixture
def counter():
    c = LoopbackListener(reply=lambda n: f"{n}\n".encode())
    yield c
    c.close()


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime, counter):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(CONFIG.replace("PORT", str(counter.port)))
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def _store_run(kata):
    from store import Store

    store = Store.open(kata.env["KATA_STORE"])
    try:
        return store.list_runs("retry", limit=1)[0]
    finally:
        store.close()


def test_a_flaky_step_passes_on_its_second_attempt_and_only_that_is_recorded(kata, counter):
    first = kata("run", "--step", "after")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert [x for x in lines if x.startswith("flaky | ")] == ["flaky | attempt 1",
                                                               "flaky | attempt 2"]
    assert "[RETRY] flaky (attempt 2/3: exit 1)" in lines
    assert sum(1 for x in lines if x.startswith("[RUN] flaky:")) == 2
    assert "after | got 2" in lines  # the final attempt's artifact, not the first's
    assert counter.count == 2
    run = _store_run(kata)
    flaky = run.step("flaky")
    assert (flaky.status, flaky.exit_status, flaky.attempts) == ("passed", 0, 2)
    logs = kata("logs", "--step", "flaky")
    assert logs.returncode == 0, logs.stderr
    out = logs.stdout.splitlines()
    assert out[0].startswith("== flaky: passed, attempt 2, ")
    assert out[1:] == ["attempt 1", "kata: attempt 1/3 failed (exit 1); attempt 2/3",
                       "attempt 2"]

    # recorded as a success: the next run is a hit, nothing asks the counter again
    second = kata("run", "--step", "flaky", "--json")
    assert second.returncode == 0
    events = [json.loads(x) for x in second.stdout.splitlines()]
    assert {e["step"]: e["hit"] for e in events if e["event"] == "cache"} == {"flaky": True}
    assert counter.count == 2


def test_a_failure_on_does_not_cover_is_not_retried(kata):
    out = kata("run", "--step", "narrow", "--json")
    assert out.returncode == 1
    events = [json.loads(x) for x in out.stdout.splitlines()]
    assert [e["event"] for e in events if e.get("step") == "narrow"] == [
        "cache", "run", "output", "fail"]
    assert _store_run(kata).step("narrow").attempts == 1


def test_every_attempt_failing_fails_with_the_last_one(kata, counter):
    counter.count = -10  # attempts 1..3 read -9, -8, -7: all fail
    out = kata("run", "--step", "flaky")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert [x for x in lines if x.startswith("[RETRY] ")] == [
        "[RETRY] flaky (attempt 2/3: exit 1)", "[RETRY] flaky (attempt 3/3: exit 1)"]
    assert any(x.startswith("[FAIL] flaky (exit 1, ") for x in lines)
    step = _store_run(kata).step("flaky")
    assert (step.status, step.attempts) == ("failed", 3)
