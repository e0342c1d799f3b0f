"""The plain lines that need no event classes: keys, durations, the ``[DONE]`` line, the
live view's colours and frame marks.

Standard library only: the cached path (``kata.realise.noop``) writes its ``[DONE]`` line
with :func:`done_line` as the plain reporter does, from the same counts, and on a
terminal styles its lines as the live view does.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the cached path)

if TYPE_CHECKING:
    from kata.realise.events import Done


#: the live view's colour of a line, by its first word (SGR parameters)
STYLE = {"[PASS]": "32", "[FAIL]": "31", "[SKIP]": "33", "[WARN]": "33", "[RETRY]": "33",
         "[CANCEL]": "33",
         "[CACHE]": "34", "[PULL]": "36", "[DONE]": "1"}
FRAME_MARK = "\x1b[?25l"  # each live frame starts by hiding the cursor (tests count frames by it)
SHOW_CURSOR = "\x1b[?25h"  # the live view's last frame ends with it


def styled(text: str) -> str:
    """A plain line as the live view shows it (coloured by its first word)."""
    code = STYLE.get(text.split(" ", 1)[0])
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


_SGR = "\x1b\\[[0-9;:]*m"  # Select Graphic Rendition: colours, bold, reset
_CONTROL = "[\x00-\x08\x0b-\x1f\x7f-\x9f]"


def terminal_safe(text: str) -> str:
    """A step's text (its output line, a test name, a path it made) as kata prints it:
    colours (SGR sequences, ``ESC [ … m``), tabs and newlines kept (a whole log at once
    is as its lines one by one), every other control character
    shown in caret notation (``ESC ] 0 ; x BEL`` as ``^[]0;x^G``, a C1 control as its
    7-bit form, ``\\x9b`` as ``^[[``), so that what a step prints can colour its lines but
    never retitle, clear, move the cursor of or write the clipboard of the terminal of
    whoever reads it (`kata run`, `kata logs`, a hook's ``remote:`` lines; git's sideband
    shows only colours the same way). The stored log keeps the bytes as printed."""
    if text.isprintable():  # no control character at all (C speed): most lines
        return text
    global _UNSAFE, _PARTS
    if _UNSAFE is None:
        import re

        _UNSAFE = re.compile(_UNSAFE_CONTROL)
        _PARTS = re.compile(f"({_SGR})|({_CONTROL})")
    if _UNSAFE.search(text) is None:  # tabs, colours: kept as they are
        return text
    return _PARTS.sub(_caret, text)


# a control character that no SGR sequence starts at: one ``_PARTS.sub`` would change
# (a coloured line otherwise went through the Python-level ``_caret`` per sequence): a
# control character, unless it was an ESC and an SGR's ``[ … m`` follows it; the
# character class leads, so the regex engine scans for it at C speed
_UNSAFE_CONTROL = _CONTROL + "(?<!\x1b(?=\\[[0-9;:]*m))"
_UNSAFE = _PARTS = None  # compiled on first use (the cached path imports this module)


def _caret(m) -> str:  # noqa: ANN001 - re.Match
    if m.group(1):
        return m.group(1)
    c = ord(m.group(2))
    if c == 0x7f:
        return "^?"
    return "^" + chr(c + 0x40) if c < 0x20 else "^[" + chr(c - 0x40)


def short_key(key: str) -> str:
    return key.split(":", 1)[-1][:7] + "..."


def seconds(value: float) -> str:
    return f"{value:.1f}s"


def done_line(event: "Done") -> str:
    """The ``[DONE]`` line of a ``Done`` event (or of anything with its fields)."""
    cancelled = getattr(event, "cancelled_steps", 0)
    count = event.passed + event.failed + event.skipped + event.allowed + cancelled
    steps = "step" if count == 1 else "steps"
    wall = seconds(event.wall)
    if event.failed == 0 and event.skipped == 0 and event.allowed == 0 and cancelled == 0:
        if event.cached == 0:
            return f"[DONE] All {count} {steps} passed ({seconds(event.total)} total, {wall} wall)"
        return f"[DONE] {count} {steps} ({event.cached} cached, {event.ran} ran) — {wall} wall time"
    passed = f"passed ({event.cached} cached)" if event.cached else "passed"  # of the passed
    parts = [f"{n} {what}" for n, what in ((cancelled, "cancelled"), (event.failed, "failed"),
                                           (event.allowed, "allowed to fail"),
                                           (event.skipped, "skipped"),
                                           (event.passed, passed)) if n]
    prefix = "[DONE] "
    if event.cancelled:  # what stopped it: the run's status is "failed" either way
        stop = getattr(event, "stop", "")
        prefix = ("[DONE] Pipeline timeout (settings.timeout): " if stop == "pipeline timeout"
                  else "[DONE] Interrupted: ")
    return f"{prefix}{count} {steps}: {', '.join(parts)} — {wall} wall time"
