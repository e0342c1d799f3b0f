"""Status steps and test reports end to end (issue 14, items 4 and 5) on real containerd,
by a real `kata` process, in the Debian image the suite builds: an on-failure cleanup step
that sees what passed, an always() step, both never cached; JUnit reports from a real
pytest `--junitxml` run in Debian (python3-pytest) with a failing test, the totals on the
step's line, stored with the realisation (a hit shows them), in --json; malformed XML is
a warning."""

from __future__ import annotations

import json

import pytest

from support.cli import KataProcess

pytestmark = pytest.mark.integration

STATUS = """\
pipeline: status
settings: {fail_fast: true}
steps:
  - name: build
    image: kata.local/debian:bookworm
    inputs: [.kata-ci.yaml]
    commands: ["mkdir -p out", "echo built > out/app"]
    artifacts: [out/]
  - name: test
    image: kata.local/debian:bookworm
    depends_on: [build]
    commands: ["cat out/app", "if test -f broken; then echo boom; exit 3; fi"]
  - name: lint
    image: kata.local/debian:bookworm
    depends_on: [build]
    commands: ["echo linted"]
  - name: cleanup
    image: kata.local/debian:bookworm
    depends_on: [build, test]
    when: "failure()"
    commands: ["echo cleaning after $(cat out/app)"]
  - name: notify
    image: kata.local/debian:bookworm
    when: "always()"
    commands: ["echo run over"]
"""


def _events(out):
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    return path


def test_cleanup_runs_on_failure_always_runs_and_neither_is_cached(
        repo, tmp_path, containerd_daemon, clean_runtime, debian_digest):
    (repo / ".kata-ci.yaml").write_text(STATUS)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    (repo / "broken").write_text("1")
    failed = kata("run")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert "cleanup | cleaning after built" in lines  # it saw build's artifacts
    assert "notify | run over" in lines
    assert any(x.startswith("[FAIL] test (exit 3") for x in lines)
    assert any(x.startswith("[PASS] cleanup (") for x in lines)
    # notify waits for every step above it, cleanup for its dependencies
    ends = [x.split()[1] for x in lines if x.startswith(("[PASS]", "[FAIL]", "[SKIP]"))]
    assert ends.index("notify") > ends.index("cleanup") > ends.index("test")
    assert lines.index("notify | run over") > lines.index("cleanup | cleaning after built")

    (repo / "broken").unlink()
    passed = kata("run", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    events = _events(passed)
    skips = {e["step"]: e["reason"] for e in events if e["event"] == "skip"}
    assert skips == {"cleanup": "no step before it failed"}
    cache = {e["step"]: (e["hit"], e["reason"]) for e in events if e["event"] == "cache"}
    assert cache["build"][0] is True
    assert cache["notify"][0] is False and cache["notify"][1].startswith("when: failure()/always()")
    assert [e["step"] for e in events if e["event"] == "pass"].count("notify") == 1
    assert events[-1]["event"] == "done" and events[-1]["failed"] == 0


REPORTS = """\
pipeline: reports
settings: {fail_fast: false}
steps:
  - name: unit
    image: kata.local/debian-pytest:bookworm
    commands: ["python3 -m pytest -q -p no:cacheprovider --junitxml=reports/unit.xml tests"]
    reports: {junit: ["reports/*.xml"]}
  - name: smoke
    image: kata.local/debian-pytest:bookworm
    inputs: ["smoke/**"]
    commands: ["python3 -m pytest -q -p no:cacheprovider --junitxml=out/smoke.xml smoke",
               "echo '<testsuite><testcase' > out/broken.xml"]
    reports: {junit: ["out/"]}
"""

UNIT = """\
import pytest

def test_adds():
    assert 1 + 1 == 2

def test_multiplies():
    assert 2 * 3 == 6

@pytest.mark.xfail(reason="not yet", strict=True)  # JUnit XML reports it as skipped
def test_later():
    assert False

def test_divides():
    assert 7 // 2 == 4, "integer division rounds down"
"""


def test_junit_report_from_real_pytest_in_debian(repo, tmp_path, containerd_daemon,
                                                 clean_runtime, debian_pytest_digest):
    (repo / ".kata-ci.yaml").write_text(REPORTS)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_unit.py").write_text(UNIT)
    (repo / "smoke").mkdir()
    (repo / "smoke" / "test_smoke.py").write_text("def test_up():\n    assert True\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    first = kata("run")
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    (fail,) = [i for i, x in enumerate(lines) if x.startswith("[FAIL] unit")]
    assert lines[fail].endswith(" — 2 passed, 1 skipped, 1 failed"), lines[fail]
    assert lines[fail + 1].startswith(
        "    tests.test_unit::test_divides: AssertionError: integer division rounds down")
    (ok,) = [i for i, x in enumerate(lines) if x.startswith("[PASS] smoke")]
    assert lines[ok].endswith(" — 1 passed")
    assert lines[ok + 1].startswith("    warning: report out/broken.xml: not JUnit XML (")

    again = kata("run", "--json")  # smoke is a hit: the totals of the run that built it
    events = _events(again)
    (hit,) = [e for e in events if e["event"] == "pass" and e["step"] == "smoke"]
    assert hit["cached"] is True
    assert (hit["report"]["passed"], hit["report"]["failed"]) == (1, 0)
    assert hit["report"]["files"] == ["out/broken.xml", "out/smoke.xml"]
    (fail_event,) = [e for e in events if e["event"] == "fail"]
    report = fail_event["report"]
    assert (report["passed"], report["skipped"], report["failed"]) == (2, 1, 1)
    assert report["failures"][0]["name"] == "tests.test_unit::test_divides"
    plain = kata("run")
    assert any(x.startswith("[PASS] smoke (cached) — 1 passed") for x in plain.stdout.splitlines())
    logs = kata("logs")  # the run record keeps the report, the failed step's too
    heads = [x for x in logs.stdout.splitlines() if x.startswith("== ")]
    assert any(x.startswith("== unit: failed, exit 1, ") and
               x.endswith(" — 2 passed, 1 skipped, 1 failed ==") for x in heads), heads
    assert any(x.startswith("== smoke: cached — output of run ") and
               x.endswith(" — 1 passed ==") for x in heads), heads
