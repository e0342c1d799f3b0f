"""The overview's plain lines, one per event, on any text stream."""

from __future__ import annotations

from typing import TextIO

from kata.realise import events as ev


def short_key(key: str) -> str:
    return key.split(":", 1)[-1][:7] + "..."


def seconds(value: float) -> str:
    return f"{value:.1f}s"


def line(event: ev.Event) -> str | None:
    """The plain line of an event; None for events that print nothing."""
    match event:
        case ev.Parsed():
            groups = "group" if event.groups == 1 else "groups"
            steps = "step" if event.steps == 1 else "steps"
            return (f'[PARSE] Pipeline "{event.pipeline}": {event.steps} {steps}, '
                    f"{event.groups} parallel {groups}")
        case ev.CacheChecked():
            if event.hit:
                return f"[CACHE] {event.step}: HIT (key: {short_key(event.key)})"
            if event.damaged:
                return f"[CACHE] {event.step}: MISS ({event.reason})"
            return f"[CACHE] {event.step}: MISS"
        case ev.StepStarted():
            return f"[RUN] {event.step}: {event.command}"
        case ev.OutputLine():
            return f"{event.step} | {event.text}"
        case ev.StepPassed():
            return None if event.cached else f"[PASS] {event.step} ({seconds(event.duration)})"
        case ev.StepFailed() if event.allowed:
            what = (f"exit {event.exit_status}" if event.reason == "step.failed"
                    and event.exit_status is not None else event.message)
            return f"[WARN] {event.step} ({what}, allowed to fail, {seconds(event.duration)})"
        case ev.StepFailed():
            if event.reason == "step.failed" and event.exit_status is not None:
                return f"[FAIL] {event.step} (exit {event.exit_status}, {seconds(event.duration)})"
            return f"[FAIL] {event.step} ({event.message}, {seconds(event.duration)})"
        case ev.StepRetrying():
            what = (f"exit {event.exit_status}" if event.reason == "step.failed"
                    and event.exit_status is not None else event.message)
            return f"[RETRY] {event.step} (attempt {event.attempt}/{event.attempts}: {what})"
        case ev.StepSkipped():
            return f"[SKIP] {event.step} ({event.reason})"
        case ev.Done():
            return done_line(event)
    return None


def done_line(event: ev.Done) -> str:
    count = event.passed + event.failed + event.skipped + event.allowed
    steps = "step" if count == 1 else "steps"
    wall = seconds(event.wall)
    if event.failed == 0 and event.skipped == 0 and event.allowed == 0:
        if event.cached == 0:
            return f"[DONE] All {count} {steps} passed ({seconds(event.total)} total, {wall} wall)"
        return f"[DONE] {count} {steps} ({event.cached} cached, {event.ran} ran) — {wall} wall time"
    parts = [f"{n} {what}" for n, what in ((event.failed, "failed"),
                                           (event.allowed, "allowed to fail"),
                                           (event.skipped, "skipped"),
                                           (event.passed, "passed")) if n]
    if event.cached:
        parts.append(f"{event.cached} cached")
    prefix = "[DONE] Interrupted: " if event.cancelled else "[DONE] "
    return f"{prefix}{count} {steps}: {', '.join(parts)} — {wall} wall time"


class PlainReporter:
    """Writes each event's line to ``stream`` as it happens."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ev.Event) -> None:
        text = line(event)
        if text is not None:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass
