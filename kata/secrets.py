"""Secret values and the masking of every form of them in a step's output.

Two pieces, both pure (no store, no runtime):

``SecretSource`` resolves the secret *names* a step declares to their values, from
``--secret NAME=VALUE``, ``--secret-file NAME=PATH`` and the environment (in that
order of precedence). A declared secret that is missing is a ``KataError`` before
anything runs; one whose value is shorter than 4 characters (masking it would hide
every ``a`` in the output) is given to the step unmasked, with a warning (``unmaskable``).

``Masker`` knows every *form* of every value (``secret_forms``): the raw bytes, the
value with LF or CRLF line ends, each line of a multi-line value, its base64 at all
three byte alignments (standard and URL-safe alphabets, unwrapped and wrapped at 64/76
columns), its URL-encoded forms and its hex (lower and upper). ``Masker.stream()``
gives a ``MaskStream`` per output stream: feed it byte chunks split anywhere (1-byte
writes included), it returns the masked bytes, replacing each run of bytes covered by
an occurrence of any form with ``***``. It holds back only the bytes that could still
be the start of a form (the longest suffix that is a proper prefix of some form), and
``close()`` flushes them.

How it scans: every form is at least 4 bytes long, so a form can only start where one
of the forms' 4-byte prefixes occurs. A Rust Aho-Corasick DFA (``ahocorasick_rs``)
finds those places in new bytes only (overlapping); each such place becomes a
*candidate* that is then compared, incrementally as bytes arrive, with the few forms
sharing that prefix. Output with no candidate costs one DFA pass and two copies.
Masking semantics: the union of all occurrences of all forms is masked; overlapping or
touching occurrences become one ``***``. The result does not depend on how the output
was chunked (tests check this against the one-shot ``Masker.mask``).
"""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

from kata.errors import KataError
from kata.inputs import read_at_most
from kata.model import is_env_name

MIN_SECRET_LENGTH = 4
MARKER = b"***"
_PREFIX = 4  # every form is at least this long (MIN_SECRET_LENGTH bytes encode to >= 4)
_WRAP_WIDTHS = (64, 76)  # openssl base64 / coreutils base64 and MIME
_PERCENT = re.compile(rb"%[0-9A-F]{2}")


# --------------------------------------------------------------------------- sources


def _split_assignment(arg: str, flag: str) -> tuple[str, str]:
    name, sep, value = arg.partition("=")
    if not sep:
        raise KataError("secret.bad_argument", f"{flag} expects NAME=..., got {name!r}", obj=name)
    if not is_env_name(name):
        raise KataError(
            "secret.bad_name",
            f"{flag}: {name!r} is not a valid secret name (letters, digits, _; not starting with a digit)",
            obj=name,
        )
    return name, value


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSource:
    """Where secret values come from. Values never appear in repr().

    values: from ``--secret NAME=VALUE`` (highest precedence).
    files: from ``--secret-file NAME=PATH``, read when resolved.
    environ: the process environment (lowest precedence).
    """

    values: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: Mapping[str, str] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_args(
        cls,
        secrets: Sequence[str] = (),
        secret_files: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> SecretSource:
        """Parse ``--secret``/``--secret-file`` arguments; ``environ`` defaults to os.environ.
        A ``--secret-file`` path that does not exist is ``secret.unreadable`` here, even if no
        step of the run declares the name; its content is read only by ``resolve``."""
        values: dict[str, str] = {}
        files: dict[str, str] = {}
        for arg in secrets:
            name, value = _split_assignment(arg, "--secret")
            if name in values:
                raise KataError("secret.duplicate", f"--secret {name} is given twice", obj=name)
            values[name] = value
        for arg in secret_files:
            name, path = _split_assignment(arg, "--secret-file")
            if name in files or name in values:
                raise KataError(
                    "secret.duplicate", f"secret {name} is given more than once on the command line", obj=name
                )
            if not path:
                raise KataError("secret.bad_argument", f"--secret-file {name}= needs a path", obj=name)
            try:  # a wrong path is a typo whether or not this run reads it; stat only, no read
                os.stat(path)
            except OSError as exc:
                raise KataError("secret.unreadable", f"--secret-file {name}: cannot read {path}: "
                                f"{exc.strerror}", obj=name) from exc
            files[name] = path
        env = dict(os.environ if environ is None else environ)
        return cls(values=values, files=files, environ=env)

    def resolve(self, names: Iterable[str], needed_by: Mapping[str, str] | None = None
                ) -> dict[str, str]:
        """Values of the declared ``names``; KataError secret.missing naming, from
        ``needed_by`` (secret name -> the step that declares it), the step that needs it,
        and a name given on the command line that no step declares when it is close to a
        missing one (a typo: ``--secret PYPI_TOKN=...``). A value shorter than
        MIN_SECRET_LENGTH is returned too (the product page's ``DEPLOY_TOKEN=xxx kata run``
        runs); ``unmaskable`` names those for a warning, ``maskable`` leaves them out of the
        ``Masker``."""
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            if not is_env_name(name):
                raise KataError("secret.bad_name", f"{name!r} is not a valid secret name", obj=name)
        missing = [n for n in wanted if n not in self.values and n not in self.files and n not in self.environ]
        if missing:
            import difflib

            needed_by = needed_by or {}
            named = [f"{n} (step {needed_by[n]})" if n in needed_by else n for n in missing]
            given = [n for n in (*self.values, *self.files) if n not in wanted]
            typos = [f"{g} was given, which no step of this run declares: did you mean {m[0]}?"
                     for g in given if (m := difflib.get_close_matches(g, missing, n=1))]
            raise KataError(
                "secret.missing",
                "missing secret(s): " + ", ".join(named)
                + " (set them in the environment, or pass --secret NAME=VALUE or --secret-file NAME=PATH)"
                + "".join(f"; {t}" for t in typos),
                obj=missing[0],
            )
        resolved: dict[str, str] = {}
        for name in wanted:
            if name in self.values:
                value = self.values[name]
            elif name in self.files:
                value = _read_secret_file(name, self.files[name])
            else:
                value = self.environ[name]
            resolved[name] = value
        return resolved


# The largest secret file read (GitHub Actions stops at 48 KB per secret): enough for a
# certificate chain, a kubeconfig or a service-account key; a device such as /dev/zero or
# a wrong path to a large file is refused instead of read until memory runs out.
MAX_SECRET_FILE = 64 << 10


def _read_secret_file(name: str, path: str) -> str:
    """The value in ``path``: a regular file, or a pipe (``<(pass show x)``, /dev/stdin
    fed by a pipe), at most MAX_SECRET_FILE bytes. Devices, directories and sockets are
    refused without reading (``secret.unreadable``); a longer content is
    ``secret.too_large``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KataError(
            "secret.unreadable", f"--secret-file {name}: cannot read {path}: {exc.strerror}", obj=name
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a device" if
                    stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise KataError("secret.unreadable", f"--secret-file {name}: {path} is {kind}; "
                            "give a regular file (or a pipe) holding the value", obj=name)
        os.set_blocking(fd, True)
        # the value, and a trailing newline that is not part of it
        data = read_at_most(fd, MAX_SECRET_FILE + 2)
    except OSError as exc:
        raise KataError(
            "secret.unreadable", f"--secret-file {name}: cannot read {path}: {exc.strerror}", obj=name
        ) from exc
    finally:
        os.close(fd)
    value_size = len(data) - (2 if data.endswith(b"\r\n") else 1 if data.endswith(b"\n") else 0)
    if value_size > MAX_SECRET_FILE:
        raise KataError("secret.too_large", f"--secret-file {name}: {path} holds more than "
                        f"{MAX_SECRET_FILE >> 10} KiB; secrets are limited to that size", obj=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KataError("secret.unreadable", f"--secret-file {name}: {path} is not UTF-8 text", obj=name) from exc
    # a file written by `echo value > file` ends in one newline that is not part of the value
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def unmaskable(values: Mapping[str, str]) -> list[str]:
    """Names of the ``values`` too short to be masked (fewer than MIN_SECRET_LENGTH
    characters: masking ``a`` would hide every ``a`` in the output). They are given to the
    steps that declare them but appear unmasked; the caller warns."""
    return [name for name, value in values.items() if len(value) < MIN_SECRET_LENGTH]


def maskable(values: Iterable[str]) -> list[str]:
    """The values long enough for ``Masker`` (see ``unmaskable``)."""
    return [v for v in values if len(v) >= MIN_SECRET_LENGTH]


# --------------------------------------------------------------------------- forms


def _b64_fragments(value: bytes) -> set[bytes]:
    """The base64 characters that are fixed whatever surrounds ``value``, at offsets 0/1/2.

    With ``value`` starting at byte ``a`` of a 3-byte group, its bits occupy
    [8a, 8a + 8n) of the encoded stream; base64 character i encodes bits [6i, 6i + 6),
    so the characters that depend on ``value`` alone are those with 6i >= 8a and
    6i + 6 <= 8a + 8n.
    """
    out = set()
    n = len(value)
    for a in range(3):
        encoded = base64.b64encode(b"\0" * a + value)
        start = -(-8 * a // 6)
        end = (8 * a + 8 * n) // 6
        out.add(encoded[start:end])
    out.add(base64.b64encode(value))  # the value alone, with its padding
    return out


def _url_forms(value: bytes) -> set[bytes]:
    out = set()
    for encode in (quote, quote_plus):
        for safe in ("", "/"):
            form = encode(value, safe=safe).encode("ascii")
            out.add(form)
            out.add(_PERCENT.sub(lambda m: m.group().lower(), form))
    return out


def secret_forms(value: str | bytes) -> frozenset[bytes]:
    """Every byte string that ``Masker`` masks for ``value`` (each at least 4 bytes)."""
    # surrogateescape: an environment value that is not UTF-8 is masked as the bytes it was
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    wholes = {raw}
    lines: set[bytes] = set()
    if b"\n" in raw or b"\r" in raw:
        lf = raw.replace(b"\r\n", b"\n")
        wholes |= {lf, lf.replace(b"\n", b"\r\n")}
        # each line on its own: a multi-line value is often printed or logged line by line
        lines = {line for line in raw.splitlines() if len(line.strip()) >= MIN_SECRET_LENGTH}
    forms = set(wholes) | lines
    for whole in wholes:
        for b64 in _b64_fragments(whole):
            forms.add(b64)
            forms.add(b64.translate(_URLSAFE))
        full = base64.b64encode(whole)
        for width in _WRAP_WIDTHS:
            if len(full) > width:
                forms.update(full[i : i + width] for i in range(0, len(full), width))
        forms.add(whole.hex().encode("ascii"))
        forms.add(whole.hex().upper().encode("ascii"))
        forms |= _url_forms(whole)
    return frozenset(f for f in forms if len(f) >= _PREFIX)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


# --------------------------------------------------------------------------- masking


class Masker:
    """The compiled forms of a set of secret values; shared by all streams of a run."""

    __slots__ = ("_by_prefix", "_short_prefixes", "_automaton", "_forms", "marker")

    def __init__(self, values: Iterable[str | bytes], *, marker: bytes = MARKER) -> None:
        forms: set[bytes] = set()
        for value in values:
            if len(value) < MIN_SECRET_LENGTH:
                raise KataError(
                    "secret.too_short",
                    f"a secret value of {len(value)} character(s) cannot be masked "
                    f"(at least {MIN_SECRET_LENGTH})",
                )
            forms |= secret_forms(value)
        self.marker = marker
        self._forms = frozenset(forms)
        by_prefix: dict[bytes, list[bytes]] = {}
        for form in sorted(forms):
            by_prefix.setdefault(form[:_PREFIX], []).append(form)
        self._by_prefix = {k: tuple(v) for k, v in by_prefix.items()}
        prefixes = list(self._by_prefix)
        self._short_prefixes = frozenset(p[:k] for p in prefixes for k in range(1, _PREFIX))
        self._automaton = None
        if prefixes:  # imported only when there is something to mask (not on cached runs)
            import ahocorasick_rs

            self._automaton = ahocorasick_rs.BytesAhoCorasick(
                prefixes, implementation=ahocorasick_rs.Implementation.DFA)

    @property
    def forms(self) -> frozenset[bytes]:
        return self._forms

    def stream(self) -> MaskStream:
        """A fresh masking state for one output stream (stdout, stderr, a service log)."""
        return MaskStream(self)

    def mask(self, data: bytes) -> bytes:
        """Mask a complete byte string (one chunk, then close)."""
        s = self.stream()
        return s.feed(data) + s.close()



def _extend(buf: bytearray, start: int, done: int, avail: int, forms: list[bytes],
            masks: list[tuple[int, int]]) -> list[bytes]:
    """One candidate match at ``buf[start:]`` whose first ``done`` bytes already equal every
    form in ``forms``, with ``avail`` bytes now buffered: each form seen whole is appended to
    ``masks`` as ``(start, end)``; returns the forms still matching so far but longer than
    what is buffered (the candidate stays open for them)."""
    still = []
    for form in forms:
        n = min(len(form), avail)
        if buf[start + done : start + n] == form[done:n]:
            if n == len(form):
                masks.append((start, start + n))
            else:
                still.append(form)
    return still

class MaskStream:
    """Masks one stream fed in chunks of any size; see the module doc for the semantics."""

    __slots__ = ("_m", "_buf", "_scanned", "_cands", "_masks", "_continued")

    def __init__(self, masker: Masker) -> None:
        self._m = masker
        self._buf = bytearray()
        self._scanned = 0  # starts < _scanned were looked up in the prefix automaton
        self._cands: list[list] = []  # [start, bytes compared so far, forms still matching], by start
        self._masks: list[tuple[int, int]] = []  # occurrences [a, b) not yet emitted
        self._continued = False  # the last output ended inside a masked run that goes on at _buf[0]

    @property
    def held(self) -> int:
        """Bytes received but not yet emitted (a possible beginning of a form)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._m._automaton is None:
            return bytes(chunk)
        buf = self._buf
        buf += chunk
        self._advance()
        self._scan()
        return self._emit(self._holdback())

    def close(self) -> bytes:
        """Emit everything still held back; the stream can be reused afterwards."""
        self._cands.clear()
        out = self._emit(len(self._buf))
        self._scanned = 0
        self._masks.clear()
        self._continued = False
        return out

    # -- internals

    def _advance(self) -> None:
        """Compare the new bytes with the forms each open candidate may still be."""
        buf, end, masks = self._buf, len(self._buf), self._masks
        alive = []
        for cand in self._cands:
            start, done, forms = cand
            avail = end - start
            still = _extend(buf, start, done, avail, forms, masks)
            if still:
                cand[1], cand[2] = avail, still
                alive.append(cand)
        self._cands = alive

    def _scan(self) -> None:
        """Find new candidate starts (a 4-byte prefix of some form) in the unscanned bytes."""
        buf, end = self._buf, len(self._buf)
        lo = self._scanned
        if end - lo < _PREFIX:
            return
        with memoryview(buf) as view, view[lo:end] as region:
            hits = self._m._automaton.find_matches_as_indexes(region, overlapping=True)
        self._scanned = end - _PREFIX + 1
        if not hits:
            return
        by_prefix, masks, cands = self._m._by_prefix, self._masks, self._cands
        for _, s, _ in sorted(hits, key=lambda h: h[1]):
            start = lo + s
            forms = by_prefix[bytes(buf[start : start + _PREFIX])]
            avail = end - start
            still = _extend(buf, start, _PREFIX, avail, forms, masks)
            if still:
                cands.append([start, avail, still])

    def _holdback(self) -> int:
        """Where the bytes that may still begin a form start (len(buf) if none)."""
        buf, end = self._buf, len(self._buf)
        if self._cands:
            return self._cands[0][0]
        short = self._m._short_prefixes
        for s in range(max(self._scanned, end - _PREFIX + 1, 0), end):
            if bytes(buf[s:]) in short:
                return s
        return end

    def _emit(self, h: int) -> bytes:
        if h == 0:
            return b""
        buf, marker = self._buf, self._m.marker
        out: list[bytes] = []
        masks = self._masks = _merge(self._masks)
        kept: list[tuple[int, int]] = []
        pos = 0
        cont = self._continued
        for i, (a, b) in enumerate(masks):
            if a >= h:
                kept.extend(masks[i:])
                break
            if a > pos:
                out.append(buf[pos:a])
                cont = False
            if not cont:
                out.append(marker)
                cont = True
            if b > h:
                kept.append((h, b))
                pos = h
            else:
                pos = b
        if pos < h:
            out.append(buf[pos:h])
            cont = False
        self._continued = cont
        del buf[:h]
        self._scanned = max(self._scanned - h, 0)
        for cand in self._cands:
            cand[0] -= h
        self._masks = [(a - h, b - h) for a, b in kept]
        return b"".join(out)


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or touching intervals."""
    if len(intervals) < 2:
        return intervals
    merged: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged
