"""The overview's plain lines, exactly; JSON lines; the live view survives a run."""

from __future__ import annotations

import io
import json
import re
import time

from kata.realise import events as ev
from kata.report.jsonl import JsonReporter
from kata.report.live import FPS, FRAME_MARK, LiveReporter
from kata.report.plain import PlainReporter, line

KEY = "a3f8c2d" + "0" * 57


def test_plain_lines_match_the_overview():
    assert line(ev.Parsed(pipeline="my-app", steps=3, groups=2, planned=())) == \
        '[PARSE] Pipeline "my-app": 3 steps, 2 parallel groups'
    assert line(ev.CacheChecked(step="build", hit=False, key=KEY)) == "[CACHE] build: MISS"
    assert line(ev.CacheChecked(step="build", hit=True, key=KEY)) == \
        "[CACHE] build: HIT (key: a3f8c2d...)"
    assert line(ev.StepStarted(step="build", command="npm ci && npm run build")) == \
        "[RUN] build: npm ci && npm run build"
    assert line(ev.OutputLine(step="build", stream="stdout", text="ok")) == "build | ok"
    assert line(ev.StepPassed(step="build", duration=2.1)) == "[PASS] build (2.1s)"
    assert line(ev.StepPassed(step="build", duration=0, cached=True)) is None
    assert line(ev.StepFailed(step="test", exit_status=1, duration=0.4)) == \
        "[FAIL] test (exit 1, 0.4s)"
    assert line(ev.StepSkipped(step="deploy", reason="dependency test did not pass")) == \
        "[SKIP] deploy (dependency test did not pass)"
    assert line(ev.Done(run_id="r", passed=3, failed=0, skipped=0, cached=0, ran=3,
                        total=3.3, wall=2.1)) == \
        "[DONE] All 3 steps passed (3.3s total, 2.1s wall)"
    assert line(ev.Done(run_id="r", passed=4, failed=0, skipped=0, cached=3, ran=1,
                        total=1.1, wall=1.1)) == "[DONE] 4 steps (3 cached, 1 ran) — 1.1s wall time"


def test_failure_lines_say_why():
    failed = ev.StepFailed(step="b", exit_status=0, duration=0.2, reason="artifact.missing",
                           message="declared artifact dist/ was not produced")
    assert line(failed) == "[FAIL] b (declared artifact dist/ was not produced, 0.2s)"
    done = line(ev.Done(run_id="r", passed=1, failed=1, skipped=2, cached=0, ran=2, total=1,
                        wall=1))
    assert done.startswith("[DONE] 4 steps: 1 failed, 2 skipped, 1 passed")


def test_a_cancelled_step_is_a_cancel_line_not_a_failure():
    # review-session: `[FAIL] slow (cancelled (fail_fast: bad failed), 2.0s)` while [DONE]
    # and `kata runs` count it as cancelled
    cancelled = ev.StepFailed(step="slow", exit_status=137, duration=2.0,
                              reason="step.cancelled", message="cancelled (fail_fast: bad failed)")
    assert line(cancelled) == "[CANCEL] slow (fail_fast: bad failed, 2.0s)"


EVENTS = [
    ev.Parsed(pipeline="p", steps=2, groups=2, planned=("a", "b")),
    ev.CacheChecked(step="a", hit=False, key=KEY),
    ev.StepStarted(step="a", command="true"),
    ev.OutputLine(step="a", stream="stdout", text="hello"),
    ev.StepFailed(step="a", exit_status=1, duration=0.1),
    ev.StepSkipped(step="b", reason="dependency a did not pass"),
    ev.Done(run_id="r", passed=0, failed=1, skipped=1, cached=0, ran=1, total=0.1, wall=0.1),
]


def test_json_is_one_event_per_line():
    out = io.StringIO()
    reporter = JsonReporter(out)
    for e in EVENTS:
        reporter(e)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["event"] for r in rows] == ["parse", "cache", "run", "output", "fail", "skip", "done"]
    assert rows[0]["planned"] == ["a", "b"] and rows[4]["exit_status"] == 1


def test_plain_and_live_reporters_render_a_run():
    out = io.StringIO()
    plain = PlainReporter(out)
    for e in EVENTS:
        plain(e)
    assert out.getvalue().splitlines()[-1].startswith("[DONE]")
    live_out = io.StringIO()
    live = LiveReporter(live_out)
    for e in EVENTS:
        live(e)
    live.close()
    text = live_out.getvalue()
    assert "[FAIL] a (exit 1, 0.1s)" in text and "a | hello" in text


def _plain(events) -> list[str]:
    out = io.StringIO()
    reporter = PlainReporter(out)
    for e in events:
        reporter(e)
    reporter.close()
    return out.getvalue().splitlines()


def test_steps_started_together_are_one_run_line_before_their_output():
    # the overview's transcript: [RUN] test, lint (parallel), then their verdicts
    lines = _plain([
        ev.Parsed(pipeline="my-app", steps=3, groups=2, planned=("build", "test", "lint")),
        ev.StepStarted(step="build", command="npm ci && npm run build"),
        ev.StepPassed(step="build", duration=2.1),
        ev.ParallelStarted(steps=("test", "lint")),
        ev.CacheChecked(step="test", hit=False, key=KEY),
        ev.StepStarted(step="test", command="npm test"),
        ev.OutputLine(step="test", stream="stdout", text="ok 1"),  # before lint started
        ev.CacheChecked(step="lint", hit=False, key=KEY),
        ev.StepStarted(step="lint", command="npm run lint"),
        ev.StepPassed(step="lint", duration=0.4),
        ev.StepPassed(step="test", duration=1.2),
        ev.Done(run_id="r", passed=3, failed=0, skipped=0, cached=0, ran=3, total=3.3,
                wall=2.1),
    ])
    assert lines == [
        '[PARSE] Pipeline "my-app": 3 steps, 2 parallel groups',
        "[RUN] build: npm ci && npm run build",
        "[PASS] build (2.1s)",
        "[CACHE] test: MISS",
        "[CACHE] lint: MISS",
        "[RUN] test, lint (parallel)",
        "test | ok 1",
        "[PASS] lint (0.4s)",
        "[PASS] test (1.2s)",
        "[DONE] All 3 steps passed (3.3s total, 2.1s wall)",
    ]


def test_a_group_where_only_one_step_runs_prints_its_own_run_line():
    lines = _plain([
        ev.ParallelStarted(steps=("test", "lint")),
        ev.StepStarted(step="test", command="npm test"),
        ev.OutputLine(step="test", stream="stdout", text="ok"),
        ev.CacheChecked(step="lint", hit=True, key=KEY, source="resolved"),
        ev.StepPassed(step="lint", duration=0.0, cached=True),
        ev.StepPassed(step="test", duration=1.0),
    ])
    assert lines == ["[CACHE] lint: HIT (key: a3f8c2d..., early cutoff)", "[RUN] test: npm test",
                     "test | ok", "[PASS] test (1.0s)"]


def test_the_parallel_event_in_json():
    out = io.StringIO()
    JsonReporter(out)(ev.ParallelStarted(steps=("test", "lint")))
    row = json.loads(out.getvalue())
    assert (row["event"], row["steps"], row["version"]) == ("parallel", ["test", "lint"], 1)


def test_docs_json_describes_every_event_and_field():
    from dataclasses import fields
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "json.md").read_text()
    for cls, kind in ev._KIND.items():
        assert f"| `{kind}` |" in text, kind
        for f in fields(cls):
            assert f"`{f.name}`" in text, (kind, f.name)
    for extra in ("error", "plan", "version", "time"):
        assert f"`{extra}`" in text


def test_live_view_draws_frames_not_events():
    out = io.StringIO()
    live = LiveReporter(out)
    started = time.monotonic()
    live(ev.Parsed(pipeline="p", steps=20000, groups=1, planned=tuple(f"s{i}" for i in range(20000))))
    for i in range(20000):
        live(ev.CacheChecked(step=f"s{i}", hit=True, key=KEY))
        live(ev.StepPassed(step=f"s{i}", duration=0, cached=True))
    live(ev.Done(run_id="r", passed=20000, failed=0, skipped=0, cached=20000, ran=0, total=0,
                 wall=1.0))
    live.close()
    elapsed = time.monotonic() - started
    text = out.getvalue()
    assert live.events == 40002
    assert live.frames == text.count(FRAME_MARK) <= FPS * elapsed + 2
    assert text.count("[CACHE] s") == 20000 and "[DONE] 20000 steps" in text


def test_live_view_shows_running_steps_queue_and_a_pull_bar():
    out = io.StringIO()
    live = LiveReporter(out, fps=0.001)  # frames only when the test draws them
    live(ev.Parsed(pipeline="p", steps=3, groups=1, planned=("a", "b", "c")))
    live(ev.StepStarted(step="a", command="make"))
    live(ev.OutputLine(step="a", stream="stdout", text="compiling x.c"))
    live(ev.ImagePull(image="docker.io/library/debian:12", layers_done=1, layers_total=4,
                      bytes_done=3 << 20, bytes_total=12 << 20))
    live._frame(final=False)
    frame = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    assert re.search(r"a +\d+\.\ds\x1b\[0m \x1b\[2mcompiling x\.c", frame), frame
    assert "█████░░░░░░░░░░░░░░░ 1/4 layers 3.1MB/13MB docker.io/library/debian:12" in frame
    assert "2 queued (next: b, c) · 1 running · 0/3 done · " in frame and "s elapsed" in frame
    live(ev.ImagePull(image="docker.io/library/debian:12", layers_done=4, layers_total=4,
                      bytes_done=12 << 20, bytes_total=12 << 20, done=True))
    live(ev.StepPassed(step="a", duration=1.0))
    live.close()
    last = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    assert "[PULL] docker.io/library/debian:12: 4 layers, 13MB" in last
    assert "[PASS] a (1.0s)" in last and "queued" not in last  # no status block at the end


def _columns(row: str) -> int:
    """The columns a terminal gives ``row`` (colours take none, a tab goes to the next
    multiple of 8, East Asian wide and full-width characters take two)."""
    import unicodedata

    col = 0
    for ch in re.sub(r"\x1b\[[0-9;]*m", "", row):
        if ch == "\t":
            col = col // 8 * 8 + 8
        elif not unicodedata.combining(ch):
            col += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return col


def test_a_status_row_never_wraps_whatever_the_step_prints(monkeypatch):
    """The status block is erased by counting its rows: a row the terminal wraps (tabs, as
    go test prints them; wide characters; emoji) or an escape sequence that moves the
    cursor (a progress bar's) left a copy of the block on screen at every frame."""
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    live = LiveReporter(out, fps=0.001)
    names = ("tabs", "wide", "esc", "a-long-step-name-that-does-not-fit-in-forty-columns")
    live(ev.Parsed(pipeline="p", steps=4, groups=1, planned=names))
    for name in names:
        live(ev.StepStarted(step=name, command="x"))
    live(ev.OutputLine(step="tabs", stream="stdout",
                       text="ok\t\tgithub.com/x/pkg\t\t\t0.3s\tcoverage: 81.2%"))
    live(ev.OutputLine(step="wide", stream="stdout", text="✅✅ テストテストテストテストテスト passed"))
    live(ev.OutputLine(step="esc", stream="stdout", text="50%\x1b[1A\x1b[2K\r\x1b[31mred\x07"))
    live._frame(final=False)
    frame = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    rows = frame.split("\n")[:-1][-5:]  # the status block: four steps, the queue line
    assert "queued" in rows[-1], rows
    for row in rows:
        assert _columns(row) < 40, (row, _columns(row))
        assert not re.search(r"\x1b\[[0-9;]*[A-Za-ln-z]|[\x00-\x08\x0a-\x1a\x7f]", row), row
    assert re.search(r"a-long\S*… +\d+\.\ds", rows[3]), rows[3]  # its time still shows
    live.close()


def test_a_status_row_carries_no_c1_control_either(monkeypatch):
    """U+009B is CSI and U+009D OSC in their 8-bit (C1) forms, which terminals obey too:
    the row of a running step kept them (terminal_safe shows them, the row did not drop
    them), so a step could clear the screen or retitle the terminal through kata's status
    block. Dropped like their ESC forms, multibyte text kept."""
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    live = LiveReporter(out, fps=0.001)
    live(ev.Parsed(pipeline="p", steps=1, groups=1, planned=("c1",)))
    live(ev.StepStarted(step="c1", command="x"))
    live(ev.OutputLine(step="c1", stream="stdout",
                       text="a\x9b2Jb\x9d0;PWNED\x07c\x9d0;T\x9cd\x85é日本"))
    live._frame(final=False)
    frame = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    assert not re.search("[\x80-\x9f]", frame), repr(frame)
    assert "abcdé日本" in frame, repr(frame)
    live.close()


def test_a_pull_view_draws_only_pulls_and_only_on_a_terminal():
    from kata.report.live import pull_view

    with pull_view(io.StringIO()) as view:  # not a terminal: nothing drawn, plain output
        assert view is None
    out = io.StringIO()
    live = LiveReporter(out, fps=0.001, summary=False)  # what pull_view draws on a terminal
    live._frame(final=False)
    assert out.getvalue() == ""  # no pull yet: no frame written
    live(ev.ImagePull(image="r/i:1", layers_done=1, layers_total=2, bytes_done=1 << 20,
                      bytes_total=2 << 20))
    live._frame(final=False)
    frame = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    assert "██████████░░░░░░░░░░ 1/2 layers" in frame and "r/i:1" in frame
    assert "queued" not in frame and "elapsed" not in frame  # no run summary line
    live(ev.ImagePull(image="r/i:1", layers_done=2, layers_total=2, bytes_done=2 << 20,
                      bytes_total=2 << 20, done=True))
    live.close()
    last = out.getvalue().rsplit(FRAME_MARK, 1)[1]
    assert "\x1b[1A\x1b[J" in last and "↓" not in last and "[PULL] r/i:1: 2 layers" in last


def test_the_done_line_counts_cached_steps_among_the_passed_ones():
    """Found on redis-py: a run with a failing test printed `4 steps: 2 failed, 2 passed,
    2 cached`, which adds up to six; the cached steps are some of the passed ones."""
    from kata.report.text import done_line

    done = ev.Done(run_id="r", passed=2, failed=2, skipped=0, cached=2, ran=2, total=1.0,
                   wall=1.0)
    assert done_line(done) == "[DONE] 4 steps: 2 failed, 2 passed (2 cached) — 1.0s wall time"
    some = ev.Done(run_id="r", passed=3, failed=1, skipped=1, cached=1, ran=3, total=1.0,
                   wall=1.0)
    assert done_line(some) == ("[DONE] 5 steps: 1 failed, 1 skipped, 3 passed (1 cached) — "
                               "1.0s wall time")
