"""The step's output sink (kata.realise.output) merges both streams in arrival order,
masks raw chunks before lines exist, collapses carriage-return rewrites; and `cache: true`
is what opts a secret step into the cache (pure, no containers)."""

from __future__ import annotations

import base64
import io
import threading
from urllib.parse import quote

from kata.loader import load_text
from kata.realise.output import MaskedOutput, collapse
from kata.secrets import Masker

SECRET = "line-one-S3cret\nline-two-S3cret"


class _Realiser:
    def __init__(self, values) -> None:
        self._masker = Masker(values)
        self.events = []

    def emit(self, event) -> None:
        self.events.append(event)


def _sink(values=(SECRET, "tok-abcdef")) -> tuple[MaskedOutput, io.BytesIO, _Realiser]:
    r = _Realiser(list(values))
    log = io.BytesIO()
    sink = MaskedOutput(r._masker, "s", r.emit, log, threading.Lock())
    assert sink.raw
    return sink, log, r


def _feed(data: list[tuple[str, bytes]], chunk: int) -> tuple[bytes, list]:
    """Feed (stream, bytes) writes in order, each cut into ``chunk``-byte reads."""
    sink, log, r = _sink()
    for stream, d in data:
        for i in range(0, len(d), chunk):
            sink(stream, d[i:i + chunk])
    sink.close()
    return log.getvalue(), r.events


def test_values_split_across_chunks_and_lines_are_masked() -> None:
    out = (b"start " + SECRET.encode() + b" mid " + base64.b64encode(SECRET.encode())
           + b"\nx tok-abcdef y\nno newline at the end tok-abc")
    err = b"err " + SECRET.encode().replace(b"\n", b"\r\n") + b"\n"
    for chunk in (1, 2, 3, 7, 4096):
        log, events = _feed([("stderr", err), ("stdout", out)], chunk)
        assert b"S3cret" not in log and b"tok-abcdef" not in log
        assert base64.b64encode(SECRET.encode())[4:20] not in log
        texts = [(e.stream, e.text) for e in events]
        assert ("stdout", "x *** y") in texts
        assert ("stdout", "no newline at the end tok-abc") in texts  # final partial line kept
        assert ("stderr", "err ***") in texts
        assert all("S3cret" not in t for _, t in texts)


def test_a_value_split_across_the_two_streams_is_masked() -> None:
    """``printf tok-abc; printf def >&2``: merged in arrival order, one masker sees it whole,
    in every form the masker knows."""
    forms = [b"tok-abcdef", base64.b64encode(b"tok-abcdef"), base64.b64encode(b"xtok-abcdef"),
             base64.b64encode(b"xytok-abcdef"), quote(SECRET, safe="").encode(),
             b"tok-abcdef".hex().encode()]
    for form in forms:
        for cut in range(1, len(form)):
            for chunk in (1, 3, 4096):
                log, events = _feed([("stdout", b"A " + form[:cut]), ("stderr", form[cut:] + b" B\n")],
                                    chunk)
                assert form not in log, (form, cut, chunk)
                # exactly what one stream carrying the whole line gives
                whole = Masker([SECRET, "tok-abcdef"]).mask(b"A " + form + b" B")
                assert log == whole + b"\n" and b"***" in whole
                assert [e.text for e in events] == [whole.decode()]
    log, _ = _feed([("stdout", b"A tok-a"), ("stderr", b"bcdef B\n")], 2)
    assert log == b"A *** B\n"


def test_streams_keep_their_arrival_order_and_lines_their_first_stream() -> None:
    sink, log, r = _sink(())
    for i in range(50):
        sink("stdout", f"a{i}\n".encode())
        sink("stderr", f"b{i}\n".encode())
        sink("stdout", f"c{i}\n".encode())
    sink("stderr", b"half from stderr, ")
    sink("stdout", b"half from stdout\n")
    sink.close()
    expected = [f"{x}{i}" for i in range(50) for x in "abc"] + ["half from stderr, half from stdout"]
    assert log.getvalue().decode().splitlines() == expected
    assert [e.text for e in r.events] == expected
    assert [e.stream for e in r.events][:3] == ["stdout", "stderr", "stdout"]
    assert r.events[-1].stream == "stderr"


def test_progress_rewrites_collapse_to_the_final_state() -> None:
    sink, log, r = _sink()
    for part in (b"download   0%\r", b"download  50%\r", b"download 100%\n",
                 b"\x1b[2K\rbuilding... \rbuilt\x1b[K\n", b"crlf line\r\n",
                 b"plain tail"):
        sink("stdout", part)
    sink.close()
    assert log.getvalue() == b"download 100%\nbuilt\ncrlf line\nplain tail\n"
    assert [e.text for e in r.events] == ["download 100%", "built", "crlf line", "plain tail"]


def test_a_value_assembled_by_a_rewrite_is_masked() -> None:
    """``zzzzdef\rtok-abc`` shows ``tok-abcdef`` on a terminal: the collapsed line is masked."""
    sink, log, r = _sink()
    sink("stdout", b"xxxxxxxxxdef\rtok-abc\n")
    sink.close()
    assert collapse("xxxxxxxxxdef\rtok-abc") == "tok-abcxxdef"
    sink, log, r = _sink()
    sink("stdout", b"zzzzzzzdef\rtok-abc\n")
    sink.close()
    assert b"tok-abcdef" not in log.getvalue()
    assert log.getvalue() == b"***\n" and r.events[0].text == "***"


def test_collapse_values() -> None:
    assert collapse("10%\r50%\r100%") == "100%"
    assert collapse("abcdef\rxy") == "xycdef"
    assert collapse("abc\r") == "abc"
    assert collapse("héllo\rab") == "abllo"  # columns are characters, not bytes
    assert collapse("12345\r\x1b[Kab") == "ab"
    assert collapse("a\r\x1b[2Kdone") == "done"
    assert collapse("no rewrite  ") == "no rewrite  "
    assert collapse("x\x1b[31mred\x1b[0m") == "x\x1b[31mred\x1b[0m"


def test_cache_true_opts_a_secret_step_in() -> None:
    steps = load_text("""
steps:
  - {name: a, image: x, secrets: [TOKEN]}
  - {name: b, image: x, secrets: [TOKEN], cache: true}
  - {name: c, image: x, secrets: [TOKEN], cache: {enabled: true, paths: [.cache]}}
  - {name: d, image: x, secrets: [TOKEN], cache: {paths: [.cache]}}
  - {name: e, image: x, cache: false}
  - {name: f, image: x}
  - {name: g, image: x, services: [{name: db, image: y, secrets: [TOKEN]}]}
  - {name: h, image: x, services: [{name: db, image: y, secrets: [TOKEN]}], cache: true}
  - {name: i, image: x, services: [{name: db, image: y}]}
""").steps
    assert [s.cacheable for s in steps] == [False, True, True, False, False, True,
                                            False, True, True]
