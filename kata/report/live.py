"""A live view on a terminal: the plain lines scroll, a status block stays at the bottom.

The status block shows each running step with its elapsed time and last output line,
image pulls with a progress bar (layers, bytes), and a summary line: queued, running
and finished steps and the total elapsed time. Step output is not scrolled (it is in
``kata logs``), except the tail of a step that failed.

Cost: an event only updates counters and queues its line, under a lock. A frame
thread draws at a fixed rate (``FPS``): it erases the previous status block, writes the
lines queued since the last frame and the new block, all in one write. So the terminal
costs the same whether a run emits ten events or ten thousand; a cached 5,000-step run
writes its 5,000 ``[CACHE]`` lines in a few dozen writes. No rich, no curses: a handful
of ANSI sequences every terminal since the VT100 understands.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from kata.realise import events as ev
from kata.report import human_size
from kata.report.plain import RunLines
from kata.report.text import FRAME_MARK, SHOW_CURSOR, styled as _styled, terminal_safe

FPS = 10  # frames a second
_TAIL = 20  # output lines kept per step, shown if it fails
_SHOWN = 8  # running steps listed by name; more are counted
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


# what a step prints that a status row must not carry: escape sequences (a colour would
# leak into the row, a cursor move would break the erase) and control characters (a tab
# or a carriage return moves the cursor too); CSI, OSC (7-bit and their C1 forms, U+009B
# and U+009D, which a terminal obeys as well: kata.report.text.terminal_safe), then any
# other ESC pair and control character, C1 ones included
_CONTROLS = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
                       r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|\x1b.?"
                       r"|[\x00-\x1f\x7f-\x9f]")


def _row_text(text: str) -> str:
    """A step's output line as one status row shows it: what follows its last carriage
    return (a progress bar's latest state), tabs as spaces, no escape sequence and no
    control character."""
    return _CONTROLS.sub("", text.rsplit("\r", 1)[-1].replace("\t", " "))


def _columns(ch: str) -> int:
    """The terminal columns one character takes: 2 for East Asian wide and full-width
    characters (CJK, most emoji), 0 for combining marks, else 1."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _fit(text: str, width: int) -> str:
    """``text`` (no escape sequences) shortened to ``width`` columns, ending in "…" when cut."""
    if sum(map(_columns, text)) <= width:
        return text
    out, seen = [], 0
    for ch in text:
        seen += _columns(ch)
        if seen > width - 1:
            break
        out.append(ch)
    return "".join(out) + "…"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "█" * filled + "░" * (width - filled)


class LiveReporter:
    """Renders the event stream on a terminal ``stream`` at ``fps`` frames a second.

    ``frames`` counts the frames drawn (what the bounded-redraw test checks against the
    number of events). ``close()`` draws the last frame without a status block.
    ``summary=False``: no summary line (a view of image pulls alone: :func:`pull_view`).
    Thread-safe: events may come from any thread.
    """

    def __init__(self, stream: TextIO, *, fps: float = FPS, summary: bool = True) -> None:
        self.stream = stream
        self.summary = summary  # the queued/running/done/elapsed line (False: pulls only)
        self.interval = 1.0 / fps
        self.frames = 0
        self.events = 0
        self.started = ev.process_started()  # "elapsed" is what the user waited
        self.planned = 0
        self.order: tuple[str, ...] = ()  # the planned steps, in order
        self.finished = 0
        self.done_steps: set[str] = set()
        self.running: dict[str, float] = {}  # step -> monotonic start
        self.last: dict[str, str] = {}  # step -> its last output line
        self.tails: dict[str, deque[str]] = {}
        self.pulls: dict[str, ev.ImagePull] = {}
        self.lines = RunLines()  # steps started together announced as one [RUN] line
        self._pending: list[str] = []  # lines to scroll on the next frame
        self._drawn = 0  # lines of status block on screen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kata-live", daemon=True)
        self._thread.start()

    # -- events (cheap: no terminal I/O here) -----------------------------------------
    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            self.events += 1
            if isinstance(event, ev.Parsed):
                self.planned = len(event.planned)
                self.order = event.planned
            elif isinstance(event, ev.StepStarted):
                self.running[event.step] = time.monotonic()
                self.tails[event.step] = deque(maxlen=_TAIL)
            elif isinstance(event, ev.OutputLine):
                self.last[event.step] = event.text
                self.tails.setdefault(event.step, deque(maxlen=_TAIL)).append(event.text)
                return
            elif isinstance(event, (ev.StepPassed, ev.StepFailed, ev.StepSkipped)):
                self.running.pop(event.step, None)
                self.last.pop(event.step, None)
                if event.step not in self.done_steps:
                    self.done_steps.add(event.step)
                    self.finished += 1
            elif isinstance(event, ev.ImagePull):
                if event.done:
                    self.pulls.pop(event.image, None)
                else:
                    self.pulls[event.image] = event
            self._scroll(self.lines.feed(event))

    def _scroll(self, texts: list[str]) -> None:
        # the lines for the next frame; a failed step's last lines follow its verdict
        for text in texts:
            self._pending.append(_styled(text))
            if text.startswith(("[FAIL] ", "[WARN] ")):
                step = text.split(" ", 2)[1]
                self._pending.extend(f"\x1b[2m{step} | {terminal_safe(out)}\x1b[0m"
                                     for out in self.tails.pop(step, ()))

    # -- frames ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._frame(final=False)

    def _status(self, width: int) -> list[str]:
        now = time.monotonic()
        rows = []
        spin = _SPINNER[self.frames % len(_SPINNER)]
        for name, started in list(self.running.items())[:_SHOWN]:
            elapsed = f"{now - started:5.1f}s"  # a long name is cut, never its time
            head = f"{spin} {_fit(name, max(1, width - len(elapsed) - 4))} {elapsed}"
            tail = _row_text(self.last.get(name, ""))
            rows.append(f"\x1b[36m{head}\x1b[0m \x1b[2m{tail[:max(0, width - len(head) - 2)]}"
                        "\x1b[0m" if tail else f"\x1b[36m{head}\x1b[0m")
        if len(self.running) > _SHOWN:
            rows.append(f"  … and {len(self.running) - _SHOWN} more running")
        for pull in list(self.pulls.values()):
            rows.append(f"↓ {_bar(pull.bytes_done, pull.bytes_total)} {pull.layers_done}/"
                        f"{pull.layers_total} layers {human_size(pull.bytes_done)}/"
                        f"{human_size(pull.bytes_total)} {pull.image}")  # a long name is clipped
        if not self.summary:
            return rows
        queued = max(0, self.planned - self.finished - len(self.running))
        nxt = []
        for name in self.order if queued else ():
            if name not in self.done_steps and name not in self.running:
                nxt.append(name)
                if len(nxt) == 3:
                    break
        names = f" (next: {', '.join(nxt)}{', …' if queued > len(nxt) else ''})" if nxt else ""
        rows.append(f"\x1b[2m{queued} queued{names} · {len(self.running)} running · "
                    f"{self.finished}/{self.planned} done · {now - self.started:.1f}s elapsed"
                    "\x1b[0m")
        return rows

    def _frame(self, final: bool) -> None:
        width = max(20, shutil.get_terminal_size((80, 24)).columns)
        with self._lock:
            pending, self._pending = self._pending, []
            status = [] if final else self._status(width)
            if not (pending or status or self._drawn or final):
                return  # nothing to draw (a pull view before its first pull): no write
            self.frames += 1
            out = [FRAME_MARK]
            if self._drawn:  # back to the top of the old block, erase it
                out.append(f"\r\x1b[{self._drawn}A\x1b[J")
            out.extend(text + "\n" for text in pending)
            # a status row must not wrap: the erase above counts rows
            out.extend(_clip(row, width) + "\n" for row in status)
            self._drawn = len(status)
            if final:
                out.append(SHOW_CURSOR)
        # written outside the lock: a slow terminal holds up the next frame, never the run
        # (frames are drawn by one thread, then by close() after it ended: never at once)
        try:
            self.stream.write("".join(out))
            self.stream.flush()
        except (OSError, ValueError):
            self._stop.set()  # the terminal went away: stop drawing, keep running

    def close(self) -> None:
        """Stop the frame thread and draw the last lines (no status block, cursor shown)."""
        if self._stop.is_set() and not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._scroll(self.lines.flush())
        self._frame(final=True)


def _clip(row: str, width: int) -> str:
    """``row`` cut to fewer than ``width`` terminal columns (its colour sequences take
    none, a wide character two), so that it never wraps."""
    out, seen, i = [], 0, 0
    while i < len(row):
        if row[i] == "\x1b":
            end = row.find("m", i)
            if end < 0:
                break
            out.append(row[i:end + 1])
            i = end + 1
            continue
        seen += _columns(row[i])
        if seen > width - 1:
            break
        out.append(row[i])
        i += 1
    return "".join(out) + "\x1b[0m"


@contextmanager
def pull_view(stream: TextIO) -> Iterator[Callable[[ev.ImagePull], None] | None]:
    """Image pulls outside a run (``kata image pull``; a run's images resolved, and pulled,
    before its steps start) on the terminal ``stream``: yields a callback taking
    ``ImagePull`` events, drawn as the live view draws them (a progress bar of layers and
    bytes, at its fixed frame rate, erased when done; a ``[PULL]`` line for each finished
    pull); yields None when ``stream`` is not a terminal (piped output stays plain)."""
    import os

    if not stream.isatty() or os.environ.get("TERM") == "dumb":
        yield None
        return
    view = LiveReporter(stream, summary=False)
    try:
        yield view
    finally:
        view.close()
