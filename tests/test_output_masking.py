"""The realiser's output sink masks raw chunks per stream before lines exist, and
`cache: true` is what opts a secret step into the cache (pure, no containers)."""

from __future__ import annotations

import base64
import io
import threading

from kata.loader import load_text
from kata.realise.realiser import _MaskedOutput
from kata.secrets import Masker

SECRET = "line-one-S3cret\nline-two-S3cret"


class _Realiser:
    def __init__(self, values) -> None:
        self._masker = Masker(values)
        self.events = []

    def emit(self, event) -> None:
        self.events.append(event)


def _feed(data: dict[str, bytes], chunk: int) -> tuple[bytes, list]:
    r = _Realiser([SECRET, "tok-abcdef"])
    log = io.BytesIO()
    sink = _MaskedOutput(r, "s", log, threading.Lock())
    assert sink.raw
    streams = list(data.items())
    longest = max(len(d) for _, d in streams)
    for i in range(0, longest, chunk):  # the two streams interleaved, as the runtime does
        for stream, d in streams:
            if d[i:i + chunk]:
                sink(stream, d[i:i + chunk])
    sink.close()
    return log.getvalue(), r.events


def test_values_split_across_chunks_and_lines_are_masked() -> None:
    out = (b"start " + SECRET.encode() + b" mid " + base64.b64encode(SECRET.encode())
           + b"\nx tok-abcdef y\nno newline at the end tok-abc")
    err = b"err " + SECRET.encode().replace(b"\n", b"\r\n") + b"\n"
    for chunk in (1, 2, 3, 7, 4096):
        log, events = _feed({"stdout": out, "stderr": err}, chunk)
        assert b"S3cret" not in log and b"tok-abcdef" not in log
        assert base64.b64encode(SECRET.encode())[4:20] not in log
        texts = [(e.stream, e.text) for e in events]
        assert ("stdout", "x *** y") in texts
        assert ("stdout", "no newline at the end tok-abc") in texts  # final partial line kept
        assert ("stderr", "err ***") in texts
        assert all("S3cret" not in t for _, t in texts)


def test_cache_true_opts_a_secret_step_in() -> None:
    steps = load_text("""
steps:
  - {name: a, image: x, secrets: [TOKEN]}
  - {name: b, image: x, secrets: [TOKEN], cache: true}
  - {name: c, image: x, secrets: [TOKEN], cache: {enabled: true, paths: [.cache]}}
  - {name: d, image: x, secrets: [TOKEN], cache: {paths: [.cache]}}
  - {name: e, image: x, cache: false}
  - {name: f, image: x}
""").steps
    assert [s.cacheable for s in steps] == [False, True, True, False, False, True]
