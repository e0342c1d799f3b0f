"""Test reports (issue 14, item 5): JUnit XML parsed with junitparser, summed, read from the
workspace without following links out of it; malformed XML is a warning; the realiser
stores the report with the realisation (a hit shows the run's totals) and --json has it."""

from __future__ import annotations

import json
import os

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.errors import KataError
from kata.loader import load_text
from kata.realise import events as ev
from kata.realise.realiser import Realiser, RealiseOptions
from kata.realise.reports import FailedTest, TestReport, collect, from_json, parse_junit
from kata.report.plain import line
from store import Realisation, Store

PYTEST_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_app" name="test_ok" time="0.001"/>
<testcase classname="tests.test_app" name="test_also_ok" time="0.001"/>
<testcase classname="tests.test_app" name="test_bad" time="0.002"><failure message="assert 1 == 2&#10;+  where 1 = f()">def test_bad():
&gt;       assert f() == 2</failure></testcase>
<testcase classname="tests.test_app" name="test_later" time="0"><skipped type="pytest.skip" message="not yet">skip</skipped></testcase>
</testsuite></testsuites>
"""


def test_pytest_xml_totals_and_failed_tests():
    r = parse_junit(PYTEST_XML, "reports/unit.xml")
    assert (r.passed, r.skipped, r.failed) == (2, 1, 1)
    assert r.summary() == "2 passed, 1 skipped, 1 failed"
    assert r.failures == (FailedTest(name="tests.test_app::test_bad", line="assert 1 == 2"),)
    assert r.files == ("reports/unit.xml",) and r.warnings == ()


def test_a_bare_testsuite_root_and_errors_count_as_failed():
    r = parse_junit(b'<testsuite name="x"><testcase name="a"><error message="boom"/></testcase>'
                    b'<testcase name="b"/></testsuite>', "r.xml")
    assert (r.passed, r.failed) == (1, 1) and r.failures[0].name == "a"


# ctest --output-junit (CMake 3.25): a disabled test has status="disabled" and no <skipped>;
# a failed test's <failure> has an empty message, its output is the testcase's system-out
CTEST_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="(empty)" tests="4" failures="1" disabled="1" skipped="1" hostname="" time="0"
 timestamp="2026-12-01T11:23:30">
<testcase name="good" classname="good" time="0.002" status="run"><system-out>fine
</system-out></testcase>
<testcase name="bad" classname="bad" time="0.002" status="fail"><failure message=""/>
<system-out>args-test.cc:19: Failure
</system-out></testcase>
<testcase name="off" classname="off" time="0" status="disabled"><system-out>Disabled</system-out>
</testcase>
<testcase name="skip" classname="skip" time="0.006" status="notrun">
<skipped message="SKIP_RETURN_CODE=77"/><system-out></system-out></testcase>
</testsuite>"""

# googletest's --gtest_output=xml: a DISABLED_ test is status="notrun" result="suppressed"
# with no <skipped>; GTEST_SKIP() is result="skipped" with one
GTEST_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="3" failures="0" disabled="1" errors="0" time="0" name="AllTests">
<testsuite name="args_test" tests="3" failures="0" disabled="1" skipped="1" errors="0" time="0">
<testcase name="basic" status="run" result="completed" time="0" classname="args_test"/>
<testcase name="DISABLED_slow" status="notrun" result="suppressed" time="0" classname="args_test"/>
<testcase name="later" status="run" result="skipped" time="0" classname="args_test">
<skipped message="a.cc:31"><![CDATA[a.cc:31]]></skipped></testcase>
</testsuite></testsuites>"""


@pytest.mark.parametrize("data", [CTEST_XML, GTEST_XML], ids=["ctest", "googletest"])
def test_a_test_that_did_not_run_is_skipped_not_passed(data):
    """ctest's disabled tests and googletest's DISABLED_ ones carry no <skipped> element,
    only their status: counted as passed, they made a suite look as if they ran."""
    r = parse_junit(data, "reports/t.xml")
    assert (r.passed, r.skipped) == (1, 2), r


@pytest.mark.parametrize("data", [b"<testsuites><testsuite>", b"not xml at all", b"",
                                  b"<html><body/></html>",
                                  b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;'
                                  b'&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
                                  b"<testsuite><testcase name='&c;'/></testsuite>"])
def test_malformed_xml_is_a_warning_not_a_crash(data):
    r = parse_junit(data, "reports/bad.xml")
    if r.warnings:  # the small entity document is legal XML: it parses
        assert (r.passed, r.failed) == (0, 0)
        assert r.warnings[0].startswith("reports/bad.xml: not JUnit XML (")


def test_an_entity_bomb_and_an_external_entity_are_warnings():
    ents = '<!ENTITY a0 "xxxxxxxxxx">' + "".join(
        f'<!ENTITY a{i} "' + f"&a{i - 1};" * 10 + '">' for i in range(1, 10))
    bomb = f'<!DOCTYPE t [{ents}]><testsuite><testcase name="&a9;"/></testsuite>'.encode()
    assert "amplification" in parse_junit(bomb, "b.xml").warnings[0]
    ext = (b'<!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<testsuite><testcase name="&x;"/></testsuite>')
    assert "external entity" in parse_junit(ext, "e.xml").warnings[0]


def test_encoding_round_trips_and_refuses_other_blobs():
    r = parse_junit(PYTEST_XML, "a.xml")
    assert TestReport.decode(r.encode()) == r
    assert from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ValueError):
        TestReport.decode(b'{"passed": 1}')


def test_collect_reads_globs_and_directories_and_refuses_links_out(tmp_path):
    work = tmp_path / "ws"
    (work / "reports" / "sub").mkdir(parents=True)
    (work / "reports" / "unit.xml").write_bytes(PYTEST_XML)
    (work / "reports" / "sub" / "more.xml").write_bytes(PYTEST_XML)
    (work / "reports" / "broken.xml").write_text("<testsuite")
    outside = tmp_path / "secret.xml"
    outside.write_bytes(PYTEST_XML)
    os.symlink(outside, work / "reports" / "abs.xml")
    os.symlink("../../secret.xml", work / "reports" / "rel.xml")
    os.symlink("unit.xml", work / "reports" / "inside.xml")  # inside the tree: read
    os.mkfifo(work / "reports" / "fifo.xml")
    r = collect(work, ["reports/**/*.xml", "missing/*.xml"])
    assert (r.passed, r.skipped, r.failed) == (6, 3, 3)  # unit, sub/more, inside
    warnings = "\n".join(r.warnings)
    assert "no report file matches missing/*.xml" in warnings
    assert "reports/abs.xml: not read (a symbolic link leads out of the workspace)" in warnings
    assert "reports/rel.xml: not read (a symbolic link leads out" in warnings
    assert "reports/fifo.xml: not read (not a regular file)" in warnings
    assert "reports/broken.xml: not JUnit XML" in warnings
    whole = collect(work, ["reports/sub"])  # a directory: its .xml files
    assert whole.files == ("reports/sub/more.xml",)


def test_plain_lines_carry_totals_and_failed_tests():
    r = parse_junit(PYTEST_XML, "a.xml")
    failed = line(ev.StepFailed(step="test", exit_status=1, duration=1.0, report=r))
    assert failed.splitlines() == [
        "[FAIL] test (exit 1, 1.0s) — 2 passed, 1 skipped, 1 failed",
        "    tests.test_app::test_bad: assert 1 == 2"]
    assert line(ev.StepPassed(step="test", duration=0.0, cached=True, report=r)).startswith(
        "[PASS] test (cached) — 2 passed")
    assert line(ev.StepPassed(step="test", duration=0.0, cached=True)) is None
    data = ev.to_dict(ev.StepPassed(step="t", duration=1.0, report=r))
    assert data["report"]["failures"] == [{"name": "tests.test_app::test_bad",
                                           "line": "assert 1 == 2"}]
    assert ev.to_dict(ev.StepPassed(step="t", duration=1.0))["report"] is None


def test_loader_reads_reports_and_hashes_them(tmp_path):
    base = "steps:\n  - name: t\n    image: alpine\n"
    step = load_text(base + "    reports: {junit: ['reports/*.xml']}\n").steps[0]
    assert step.junit_reports == ("reports/*.xml",)
    with pytest.raises(KataError) as info:
        load_text(base + "    reports: {xunit: ['a.xml']}\n")
    assert info.value.reason == "config.unknown_key"
    with pytest.raises(KataError) as info:
        load_text(base + "    reports: {junit: ['../x.xml']}\n")
    assert info.value.position.line == 4
    from kata.compile import compile_pipeline

    digest = "sha256:" + "b" * 64
    plain, with_reports = (compile_pipeline(load_text(t), resolver=lambda r: digest,
                                            repo_root=tmp_path).nodes["t"].drv_hash
                           for t in (base, base + "    reports: {junit: ['r.xml']}\n"))
    assert plain != with_reports


def test_realisation_keeps_the_report_and_old_records_read_the_same():
    real = Realisation(outputs="sha256:" + "1" * 64, report="sha256:" + "2" * 64)
    assert Realisation.decode(real.encode()) == real
    assert Realisation.index_decode(real.index_encode()) == real
    assert real.report in real.objects()
    old = Realisation(outputs="sha256:" + "1" * 64)
    assert b"report" not in old.encode()
    assert Realisation.index_decode(old.index_encode()) == old


def test_realiser_reports_a_failing_run_and_a_hit_shows_the_building_run(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    xml = PYTEST_XML.decode().replace("\n", " ").replace("'", "")
    write = f"mkdir -p reports && printf '%s' '{xml}' > reports/unit.xml"
    steps = [FakeStep("unit", commands=(write, "exit 1"), reports={"junit": ["reports/*.xml"]}),
             FakeStep("ok", commands=(write.replace("unit.xml", "ok.xml"),),
                      reports={"junit": ["reports/ok.xml"]})]
    store = Store.open(tmp_path / "store")
    try:
        for round_ in range(2):
            events: list[ev.Event] = []
            Realiser(compile_steps(repo, steps), store=store, runtime=FakeRuntime(),
                     emit=events.append,
                     options=RealiseOptions(repo_root=repo, work_root=tmp_path / "w")).run()
            (fail,) = [e for e in events if isinstance(e, ev.StepFailed)]
            assert fail.report is not None and fail.report.summary() == "2 passed, 1 skipped, 1 failed"
            (passed,) = [e for e in events if isinstance(e, ev.StepPassed)]
            assert passed.cached == (round_ == 1)
            assert passed.report is not None and passed.report.failed == 1
    finally:
        store.close()


class _CancelledAfterExit(FakeRuntime):
    """A step that exits 0 and whose cancel comes right after (a sibling's fail_fast)."""

    def run(self, spec, sink, cancel, service_sink=None) -> int:  # noqa: ANN001
        status = super().run(spec, sink, cancel, service_sink)
        cancel.set()
        return status


def test_a_step_that_passed_keeps_its_report_when_a_cancel_follows_its_exit(tmp_path):
    # the race behind a flaky test above: a sibling failed while this step was exiting
    repo = tmp_path / "repo"
    repo.mkdir()
    xml = PYTEST_XML.decode().replace("\n", " ").replace("'", "")
    step = FakeStep("ok", commands=(f"mkdir -p reports && printf '%s' '{xml}' > reports/ok.xml",),
                    reports={"junit": ["reports/ok.xml"]})
    store = Store.open(tmp_path / "store")
    try:
        events: list[ev.Event] = []
        Realiser(compile_steps(repo, [step]), store=store, runtime=_CancelledAfterExit(),
                 emit=events.append,
                 options=RealiseOptions(repo_root=repo, work_root=tmp_path / "w")).run()
        (passed,) = [e for e in events if isinstance(e, ev.StepPassed)]
        assert passed.report is not None
        assert passed.report.summary() == "2 passed, 1 skipped, 1 failed"
    finally:
        store.close()


def test_a_secret_in_a_test_name_or_message_is_masked(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    secret = "s3cr3t-value-XYZ"
    xml = (f'<testsuite><testcase classname="c" name="t_{secret}">'
           f'<failure message="got {secret}"/></testcase></testsuite>')
    step = FakeStep("unit", commands=(f"mkdir -p r && printf '%s' '{xml}' > r/{secret}.xml",),
                    reports={"junit": ["r/"]}, secrets=("TOKEN",))
    store = Store.open(tmp_path / "store")
    try:
        events: list[ev.Event] = []
        Realiser(compile_steps(repo, [step]), store=store, runtime=FakeRuntime(),
                 emit=events.append,
                 options=RealiseOptions(repo_root=repo, work_root=tmp_path / "w",
                                        secrets={"TOKEN": secret})).run()
        (passed,) = [e for e in events if isinstance(e, ev.StepPassed)]
        assert passed.report is not None and passed.report.failed == 1
        assert secret not in json.dumps(ev.to_dict(passed))
        assert passed.report.failures[0].line == "got ***"
    finally:
        store.close()
