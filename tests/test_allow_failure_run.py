"""`allow_failure:` end to end (issue 14) on real containerd: an allowed failure is a
warning, cancels nothing under fail_fast, leaves the run green (exit 0), skips its
dependents with the reason, and is never cached; an exit code outside the list fails."""

from __future__ import annotations

import json

import pytest

from support.cli import KataProcess

pytestmark = pytest.mark.integration

CONFIG = """\
pipeline: allowed
settings: {fail_fast: true}
steps:
  - name: flaky
    image: kata.local/busybox:latest
    commands: ["echo trying", "exit 3"]
    allow_failure: true
  - name: after
    image: kata.local/busybox:latest
    depends_on: [flaky]
    commands: ["echo never"]
  - name: slow
    image: kata.local/busybox:latest
    commands: ["sleep 2", "echo slow done"]
  - name: coded
    image: kata.local/busybox:latest
    commands: ["exit ${CODE}"]
    env: {CODE: "4"}
    allow_failure: [4, 5]
"""


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(CONFIG)
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def _lines(out, prefix):
    return sorted(x for x in out.stdout.splitlines() if x.startswith(prefix))


def test_allowed_failures_warn_skip_dependents_and_exit_0(kata):
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    warn = _lines(first, "[WARN] ")
    assert [w.rsplit(", ", 1)[0] for w in warn] == [
        "[WARN] coded (exit 4, allowed to fail", "[WARN] flaky (exit 3, allowed to fail"]
    assert _lines(first, "[SKIP] ") == ["[SKIP] after (dependency flaky failed (allowed to fail))"]
    assert "slow | slow done" in first.stdout.splitlines()  # fail_fast cancelled nothing
    assert _lines(first, "[PASS] ")[0].startswith("[PASS] slow (")
    assert "[FAIL]" not in first.stdout
    assert first.stdout.splitlines()[-1].startswith(
        "[DONE] 4 steps: 2 allowed to fail, 1 skipped, 1 passed — ")

    # never cached as a success: both run again, the passing step is a hit
    second = kata("run", "--json")
    assert second.returncode == 0
    events = [json.loads(x) for x in second.stdout.splitlines()]
    cache = {e["step"]: e["hit"] for e in events if e["event"] == "cache"}
    assert cache == {"flaky": False, "coded": False, "slow": True}
    fails = {e["step"]: (e["allowed"], e["exit_status"]) for e in events if e["event"] == "fail"}
    assert fails == {"flaky": (True, 3), "coded": (True, 4)}
    done = events[-1]
    assert (done["event"], done["allowed"], done["failed"]) == ("done", 2, 0)

    from store import Store

    store = Store.open(kata.env["KATA_STORE"])
    try:
        last = store.list_runs("allowed", limit=1)[0]
    finally:
        store.close()
    assert last.status == "passed"
    assert {s.name: s.status for s in last.steps} == {
        "flaky": "allowed", "after": "skipped", "slow": "passed", "coded": "allowed"}
    assert {s.name: s.exit_status for s in last.steps}["flaky"] == 3


def test_an_exit_code_outside_the_list_fails_the_run(kata):
    cfg = kata.repo / ".kata-ci.yaml"
    cfg.write_text(CONFIG.replace('CODE: "4"', 'CODE: "9"'))
    out = kata("run", "--step", "coded")
    assert out.returncode == 1, out.stdout + out.stderr
    assert _lines(out, "[FAIL] ")[0].startswith("[FAIL] coded (exit 9, ")
    assert "[WARN]" not in out.stdout
