"""The overview's plain lines, one per event, on any text stream."""

from __future__ import annotations

from typing import TextIO

from kata.realise import events as ev
from kata.report import human_size
from kata.report.text import done_line, seconds, short_key, terminal_safe  # noqa: F401


def line(event: ev.Event) -> str | None:
    """The plain line of an event; None for events that print nothing."""
    match event:
        case ev.Parsed():
            groups = "group" if event.groups == 1 else "groups"
            steps = "step" if event.steps == 1 else "steps"
            # the name and the commands are the config's: a pushed branch's, as hostile
            # as its steps' output
            return (f'[PARSE] Pipeline "{terminal_safe(event.pipeline)}": {event.steps} {steps}, '
                    f"{event.groups} parallel {groups}")
        case ev.CacheChecked():
            if event.hit:
                where = (", early cutoff" if event.source == "resolved" else "") + \
                    (", remote" if event.remote else "")
                return f"[CACHE] {event.step}: HIT (key: {short_key(event.key)}{where})"
            if event.damaged:
                return f"[CACHE] {event.step}: MISS ({event.reason})"
            return f"[CACHE] {event.step}: MISS"
        case ev.StepStarted():
            return f"[RUN] {event.step}: {terminal_safe(event.command)}"
        case ev.OutputLine():
            text = event.text  # per line: most are printable, spare the call
            return f"{event.step} | {text if text.isprintable() else terminal_safe(text)}"
        case ev.StepPassed():
            if event.cached:  # a hit says nothing more, unless it has a report to show
                return None if event.report is None else \
                    f"[PASS] {event.step} (cached){tests(event.report)}"
            return f"[PASS] {event.step} ({seconds(event.duration)}){tests(event.report)}"
        case ev.StepFailed() if event.allowed:
            what = (f"exit {event.exit_status}" if event.reason == "step.failed"
                    and event.exit_status is not None else terminal_safe(event.message))
            return (f"[WARN] {event.step} ({what}, allowed to fail, "
                    f"{seconds(event.duration)}){tests(event.report)}")
        case ev.StepFailed() if event.reason == "step.cancelled":  # counted as cancelled
            why = event.message.removeprefix("cancelled (").removesuffix(")") \
                if event.message.startswith("cancelled (") else event.message
            return f"[CANCEL] {event.step} ({why}, {seconds(event.duration)})"
        case ev.StepFailed():
            if event.reason == "step.failed" and event.exit_status is not None:
                return (f"[FAIL] {event.step} (exit {event.exit_status}, "
                        f"{seconds(event.duration)}){tests(event.report)}")
            return (f"[FAIL] {event.step} ({terminal_safe(event.message)}, "
                    f"{seconds(event.duration)}){tests(event.report)}")
        case ev.StepRetrying():
            what = (f"exit {event.exit_status}" if event.reason == "step.failed"
                    and event.exit_status is not None else terminal_safe(event.message))
            return f"[RETRY] {event.step} (attempt {event.attempt}/{event.attempts}: {what})"
        case ev.StepSkipped():
            return f"[SKIP] {event.step} ({event.reason})"
        case ev.ImagePull():
            if not event.done:
                return None
            if event.stopped:  # why is the step's to say (its error, or the run's end)
                return (f"[PULL] {event.image}: stopped after {event.layers_done}/"
                        f"{event.layers_total} layers, {human_size(event.bytes_done)}")
            layers = "layer" if event.layers_total == 1 else "layers"
            return (f"[PULL] {event.image}: {event.layers_total} {layers}, "
                    f"{human_size(event.bytes_done)}")
        case ev.Done():
            return done_line(event)
    return None



def tests(report) -> str:  # noqa: ANN001 - kata.realise.reports.TestReport | None
    """What a step's test report adds to its ``[PASS]``/``[FAIL]`` line: the totals
    (`` — 628 passed, 21 skipped, 1 failed``), then one indented line per failed test
    (name and first line) and per warning (a file not read, malformed XML)."""
    if report is None:
        return ""
    out = f" — {report.summary()}"
    for failure in report.failures:  # names and lines are the step's
        out += f"\n    {terminal_safe(failure.name)}" + \
            (f": {terminal_safe(failure.line)}" if failure.line else "")
    if report.failed > len(report.failures):
        out += f"\n    … and {report.failed - len(report.failures)} more failed"
    for warning in report.warnings:
        out += f"\n    warning: report {terminal_safe(warning)}"
    return out


class RunLines:
    """The plain lines of an event stream, steps started together announced as one.

    After ``ParallelStarted(steps)`` the ``[RUN]`` lines of those steps, and everything a
    started one says next, are held until each of them has started or ended without a
    container (a cache hit by resolved hash, a failure before its start); then one
    ``[RUN] test, lint (parallel)`` line (the overview's transcript) is written for the
    ones that started — or the usual ``[RUN] step: command`` if only one did — followed by
    what was held, in order. ``feed`` returns the lines to write now.
    """

    def __init__(self) -> None:
        self.group: tuple[str, ...] = ()
        self.pending: set[str] = set()
        self.started: dict[str, ev.StepStarted] = {}
        self.held: list[ev.Event] = []

    def feed(self, event: ev.Event) -> list[str]:
        if isinstance(event, ev.ParallelStarted):
            out = self.flush()
            self.group, self.pending = event.steps, set(event.steps)
            return out
        step = getattr(event, "step", None)
        if not self.group or step not in self.group:
            return self.flush() + _some(line(event)) if isinstance(event, ev.Done) else \
                _some(line(event))
        if isinstance(event, ev.StepStarted):
            self.started[event.step] = event
            self.pending.discard(event.step)
        elif step in self.started:
            self.held.append(event)
        else:
            if isinstance(event, (ev.StepPassed, ev.StepFailed, ev.StepSkipped)):
                self.pending.discard(step)
            out = _some(line(event))
            return out + (self.flush() if not self.pending else [])
        return self.flush() if not self.pending else []

    def flush(self) -> list[str]:
        """The group's lines now, started or not (the stream ends, a new group starts)."""
        if not self.group:
            return []
        started = [self.started[n] for n in self.group if n in self.started]
        out: list[str] = []
        if len(started) > 1:
            out.append(f"[RUN] {', '.join(e.step for e in started)} (parallel)")
        elif started:
            out += _some(line(started[0]))
        for held in self.held:
            out += _some(line(held))
        self.group, self.pending, self.started, self.held = (), set(), {}, []
        return out


def _some(text: str | None) -> list[str]:
    """An event's text as lines (a step's line with its test report is several)."""
    return [] if text is None else text.split("\n")


class PlainReporter:
    """Writes each event's line to ``stream`` as it happens (steps started together as
    one ``[RUN] a, b (parallel)`` line, see :class:`RunLines`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines = RunLines()

    def __call__(self, event: ev.Event) -> None:
        texts = self.lines.feed(event)
        if texts:
            self.stream.write("".join(t + "\n" for t in texts))
            self.stream.flush()

    def close(self) -> None:
        texts = self.lines.flush()
        if texts:
            self.stream.write("".join(t + "\n" for t in texts))
            self.stream.flush()
