"""How events are written, without the events: times, the ``--json`` line, the process clock.

Standard library only (``json``, ``time``, ``os``; ``json`` when the first line is written):
the cached path (``kata.realise.noop``) writes the same lines as the reporters without
importing the event classes, and its plain lines without ``json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# the version of every --json document and event line kata writes (docs/json.md); bumped
# when a field changes meaning or goes away, not when one is added
JSON_VERSION = 1

_second: tuple[int, str] = (-1, "")  # the last whole second formatted, with its text


def iso_time(unix: float) -> str:
    """``2026-11-30T06:57:01.123Z``: UTC with milliseconds (RFC 3339), as --json writes
    every time."""
    global _second
    whole = int(unix)
    second, text = _second  # one tuple: threads never see a torn pair
    if second != whole:  # one strftime per second, not per event
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((unix - whole) * 1000):03d}Z"


def stamped(data: dict[str, object], at: float | None = None) -> dict[str, object]:
    """``data`` (with its ``event`` first) plus ``version`` and ``time`` (``at``, unix
    seconds; default now): one line of the ``--json`` stream."""
    out: dict[str, object] = {"event": data["event"], "version": JSON_VERSION,
                              "time": iso_time(time.time() if at is None else at)}
    out.update(data)  # "event" again: same value, its place (first) kept
    return out


# json.dumps(x, ensure_ascii=False) builds a new JSONEncoder per call; the same encoder,
# made once, gives the same text (a cached run writes ~2,000 lines to its live journal)
_encode: Callable[[object], str] | None = None


def event_line(data: dict[str, object]) -> str:
    """A JSON line for an event (``data`` as ``kata.realise.events.to_dict`` gives it, or
    one the CLI writes itself: ``plan``, ``skip``, ``error``), stamped: the ``--json``
    line and the live journal's."""
    global _encode
    if _encode is None:
        import json

        _encode = json.JSONEncoder(ensure_ascii=False).encode
    return _encode(stamped(data))


def process_started() -> float:
    """The ``time.monotonic()`` value at which this process started (the kernel's record).

    /proc/self/stat field 22 is the start time in clock ticks since boot; CLOCK_BOOTTIME
    counts from boot as well (both include suspend). Resolution: one clock tick (10 ms).
    Falls back to "now" where /proc is not readable.
    """
    import os

    now_mono, now_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 (1-based, after comm)
    except (OSError, ValueError, IndexError):
        return now_mono
    return now_mono - max(0.0, now_boot - start)
