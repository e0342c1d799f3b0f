"""History through real runs on real containerd: `kata runs --json`, `kata cache list`,
the stamped --json event stream and an error before the first step as an event."""

from __future__ import annotations

import json
import re
import time

import pytest

from store import Store
from store.runs import Run, StepRecord

from fakes import FakeStep, write_pipeline
from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

STEPS = [
    FakeStep("build", commands=("mkdir -p dist", "echo hi > dist/a"), artifacts=("dist/",),
             inputs=("src/**",)),
    FakeStep("test", commands=("grep -q hi dist/a",), depends_on=("build",), inputs=("x",)),
    FakeStep("lint", commands=("test -s dist/a",), depends_on=("build",), inputs=("x",)),
]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    write_pipeline(repo, STEPS, name="hist")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def test_runs_cache_list_and_events_of_real_runs(kata):
    before = time.time()
    first = kata("run", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    events = [json.loads(line) for line in first.stdout.splitlines()]
    assert all(e["version"] == 1 and ISO.fullmatch(e["time"]) for e in events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    run_id = events[-1]["run_id"]
    second = kata("run")
    assert second.returncode == 0

    doc = json.loads(kata("runs", "--json").stdout)
    assert doc["version"] == 1 and doc["pipeline"] == "hist"
    newest, oldest = doc["runs"]
    commit = git(kata.repo, "rev-parse", "HEAD").strip()
    assert oldest["id"] == run_id
    assert {k: oldest[k] for k in ("pipeline", "ref", "commit", "event", "status", "steps")} == {
        "pipeline": "hist", "ref": "refs/heads/main", "commit": commit, "event": "local",
        "status": "passed",
        "steps": {"total": 3, "ran": 3, "cached": 0, "failed": 0, "skipped": 0, "retried": 0,
                  "cancelled": 0}}
    assert newest["steps"] == {"total": 3, "ran": 0, "cached": 3, "failed": 0, "skipped": 0,
                               "retried": 0, "cancelled": 0}
    started = time.mktime(time.strptime(oldest["started"][:19], "%Y-%m-%dT%H:%M:%S")) \
        - time.timezone
    assert before - 2 <= started <= time.time() and 0 < oldest["duration"] < 120
    table = kata("runs").stdout.splitlines()
    assert table[1].split()[:7] == [newest["id"], "hist", "main", "trusted", "local", "passed",
                                    "0/3/0/0"]
    assert table[2].split()[:7] == [run_id, "hist", "main", "trusted", "local", "passed", "3/0/0/0"]

    listed = json.loads(kata("cache", "list", "--json").stdout)
    # one entry per cached step, though test and lint are recorded under two keys each
    assert sorted(e["step"] for e in listed["entries"]) == ["build", "lint", "test"]
    assert all(e["pipeline"] == "hist" and e["run"] == run_id for e in listed["entries"])
    assert sum(len(e["keys"]) for e in listed["entries"]) > 3
    text = kata("cache", "list").stdout.splitlines()
    assert text[0].startswith("KEY") and len(text) == 1 + 3 + 1
    assert text[-1].startswith("3 entries (")
    assert kata("cache", "stats").stdout.startswith("Entries: 3 | ")


def test_an_error_before_the_first_step_is_a_json_event(kata):
    write_pipeline(kata.repo, [FakeStep("deploy", commands=("true",), secrets=("DEPLOY_KEY",))],
                   name="hist")
    out = kata("run", "--json")
    assert out.returncode == 2
    (event,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["event"] == "error" and event["version"] == 1 and ISO.fullmatch(event["time"])
    assert event["reason"].startswith("secret.") and event["exit_code"] == 2
    assert "DEPLOY_KEY" in event["message"] and "error:" in out.stderr
    (kata.repo / ".kata-ci.yaml").write_text("pipeline: x\nsteps:\n  - {name: a, imag: b}\n")
    bad = kata("run", "--json")
    (event,) = [json.loads(line) for line in bad.stdout.splitlines()]
    assert (bad.returncode, event["reason"], event["line"], event["column"]) == (
        2, "config.unknown_key", 3, 15)
    write_pipeline(kata.repo, [FakeStep("a", image="kata.local/nothing-here:1")], name="hist")
    missing = kata("run", "--json")
    (event,) = [json.loads(line) for line in missing.stdout.splitlines()]
    assert event["event"] == "error" and event["reason"].startswith("image.")
    assert missing.returncode == event["exit_code"] != 0


def test_logs_of_a_step_take_the_last_run_that_ran_it_not_one_that_skipped_it(tmp_path):
    """A newcomer's `kata logs --step release` (a step with `when: tag =~ "v*"`) showed the
    last branch run's `== release: skipped (when: ...) ==` although the tag run before it
    had run the release: the last run in which the step ran (or hit) is taken; one that
    skipped it only when no run ran it."""

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: p\nsteps:\n  - {name: release, image: alpine, commands: ['true']}\n")
    with Store.open(tmp_path / "store") as s:
        log = s.put_blob(b"uploaded\n")
        now = time.time()
        s.put_run(Run(id="20261201-000001-aaaaaa", pipeline="p", scope="ref:refs/tags/v1",
                      started=now, status="passed", steps=(
                          StepRecord(name="release", status="passed", cache="MISS", log=log),)))
        s.put_run(Run(id="20261201-000002-bbbbbb", pipeline="p", scope="ref:refs/heads/main",
                      started=now + 1, status="passed", steps=(
                          StepRecord(name="release", status="skipped",
                                     message="when: tag (no tag) does not match v*"),)))
    kata = KataProcess(repo, store=tmp_path / "store")
    logs = kata("logs", "--step", "release")
    assert logs.returncode == 0, logs.stderr
    assert "run 20261201-000001-aaaaaa (refs/tags/v1)" in logs.stderr
    assert "uploaded" in logs.stdout
