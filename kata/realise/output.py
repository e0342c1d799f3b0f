"""A step's output on its way to the log and the events: merged, masked, cut into lines,
carriage-return rewrites collapsed. Nothing unmasked leaves this module.

Order. A terminal shows stdout and stderr in the order the program wrote them because
both are one device; a pipe (``cmd 2>&1 | cat``) keeps that order for the same reason.
containerd 1.6's runc shim cannot: whatever stdio paths it is given (even one FIFO for
both, or a ``file://`` URI), it creates one OS pipe per stream and copies each in its own
goroutine (``pkg/process/io.go``: ``runc.NewPipeIO``, ``copyPipes``), so their relative
order is lost before kata reads anything. The step's shell therefore starts with
:data:`MERGE_STDERR` (``exec 2>&1``): both descriptors are the one stdout pipe, the
kernel orders the writes, and the order is the terminal's on every run. The streams
cannot then be told apart (a terminal cannot either); a line is labelled with the stream
its first byte arrived on, which is ``stdout`` for everything a step's commands write.

Masking. Whatever arrives (stdout and, should anything reach it, stderr) is fed in
arrival order into ONE :class:`kata.secrets.MaskStream`, so a value written half to each
stream, or across any chunking, is masked in every form the masker knows (raw, base64
at three alignments, URL, hex, per line).

Carriage returns. A progress bar rewrites its line with ``\\r`` (and ``ESC[K`` /
``ESC[2K`` erasures); the log and the plain output keep the final state of the line as a
terminal would show it (:func:`collapse`). Collapsing can assemble text that was never
contiguous in the stream (``zzzzET\\rSECR``), so a collapsed line is masked again.
"""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Callable
from typing import IO

from kata.realise import events as ev
from kata.secrets import Masker
from store.errors import StoreError

# prepended to a step's (and a commands service's) shell script: one pipe, one order
MERGE_STDERR = "exec 2>&1\n"

_ERASE = re.compile(r"\x1b\[([012]?)K")  # EL: erase in line (0/none: to end, 1: to start, 2: all)
_REWRITES = (b"\r", b"\x1b[")


def collapse(line: str) -> str:
    """The final state of one output line (no ``\\n`` in it) as a terminal shows it.

    ``\\r`` returns the cursor to column 0 and later text overwrites what is there
    (``"10%\\r100%"`` -> ``"100%"``, ``"abcdef\\rxy"`` -> ``"xycdef"``); ``ESC[K``/``ESC[0K``
    erase from the cursor to the end, ``ESC[1K`` from the start to the cursor (blanks),
    ``ESC[2K`` the whole line (blanks up to the cursor); a trailing ``\\r`` (CRLF line
    ends) changes nothing. Columns are characters, not bytes, so multi-byte text is
    never split. Other escape sequences (colours) are kept as written. Trailing blanks of
    a collapsed line are dropped (a terminal shows none); a line without ``\r`` or
    ``ESC[`` is returned unchanged.
    """
    if "\r" not in line and "\x1b[" not in line:
        return line
    cells: list[str] = []
    for segment in line.split("\r"):
        cursor = 0
        pos = 0
        for m in _ERASE.finditer(segment):
            cursor = _write(cells, cursor, segment[pos:m.start()])
            pos = m.end()
            mode = m.group(1)
            if mode in ("", "0"):
                del cells[cursor:]
            elif mode == "1":
                cells[:cursor] = [" "] * min(cursor, len(cells))
            else:
                cells[:] = [" "] * min(cursor, len(cells))
        _write(cells, cursor, segment[pos:])
    return "".join(cells).rstrip(" ")


def _write(cells: list[str], cursor: int, text: str) -> int:
    end = cursor + len(text)
    if end > len(cells):
        cells.extend(" " * (end - len(cells)))
    cells[cursor:end] = text
    return end


class MaskedOutput:
    """The step's output sink (``kata.runtimes.base.OutputSink`` with ``raw = True``):
    chunks of either stream, merged in arrival order, masked by one streaming masker,
    cut into lines, each line collapsed (:func:`collapse`), written to ``log`` (bytes,
    one write per chunk, every line ending in ``\\n``) and emitted as
    :class:`~kata.realise.events.OutputLine` events.

    Thread-safe: the runtime reads each stream on its own thread. ``close()`` flushes
    what the masker held back and a last line without a newline.
    """

    raw = True  # the runtime hands over chunks as read (kata.runtimes.base.OutputSink)
    _MAX_PENDING = 1 << 20  # a longer line without a newline is passed on in pieces

    def __init__(self, masker: Masker, step: str, emit: Callable[[ev.Event], None],
                 log: IO[bytes], log_lock: threading.Lock) -> None:
        self._masker, self._step, self._emit = masker, step, emit
        self._log, self._log_lock = log, log_lock
        self._stream = masker.stream()
        self._pending = b""
        self._label = "stdout"  # the stream the pending line's first byte came from
        self._lock = threading.Lock()
        self.running: Callable[[], None] | None = None  # the runtime's "container next" hook
        # bytes written to ``log``: what the step's output holds on disk, which a runtime's
        # disk guard counts with its writable layers (kata.runtimes.diskguard)
        self.logged = 0

    def __call__(self, stream: str, data: bytes) -> None:
        with self._lock:
            out = self._stream.feed(data)
            if b"\n" not in out and len(self._pending) + len(out) < self._MAX_PENDING:
                if out:  # no line ends here: only extend the pending line
                    if not self._pending:
                        self._label = stream
                    self._pending += out
                return
            self._lines(out, stream, final=False)

    def close(self) -> None:
        with self._lock:
            self._lines(self._stream.close(), self._label, final=True)

    def _lines(self, data: bytes, stream: str, *, final: bool) -> None:
        if not self._pending:
            self._label = stream
        buf = self._pending + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        if rest and (final or len(rest) >= self._MAX_PENDING):
            lines.append(rest)
            rest = b""
        first = self._label
        self._pending = rest
        if not lines:
            return
        self._label = stream  # the pending rest, if any, came from this chunk
        texts = [line.decode("utf-8", errors="replace") for line in lines]
        if any(r in buf for r in _REWRITES):
            for i, text in enumerate(texts):
                final_state = collapse(text)
                if final_state != text:
                    masked = self._masker.mask(final_state.encode())
                    lines[i] = masked
                    texts[i] = masked.decode("utf-8", errors="replace")
        lines.append(b"")  # one write per chunk, each line ending in a newline
        chunk = b"\n".join(lines)
        with self._log_lock:
            try:
                self._log.write(chunk)
            except OSError as err:  # spooled beside the run's workspaces (realiser)
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise StoreError("store.disk_full", "no space left on kata's state "
                                 "filesystem while writing the step's log") from err
        self.logged += len(chunk)
        emit, step = self._emit, self._step
        label = first
        for text in texts:
            emit(ev.OutputLine(step=step, stream=label, text=text))  # type: ignore[arg-type]
            label = stream  # every later line began in this chunk
