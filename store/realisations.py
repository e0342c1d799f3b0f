"""Realisations: what a derivation (or resolved) key produced, as immutable files.

``<store>/realisations/<ab>/<key>`` holds the msgpack map of a :class:`Realisation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import StoreError
from .objects import check_digest

FORMAT = "kata-realisation/2"
OLD_FORMAT = "kata-realisation/1"  # read (meta mapped to the typed fields), never written
_KEY = re.compile(r"^[0-9A-Za-z_.:-]{8,200}$")


def check_key(key: str) -> str:
    """A realisation key is a hash-like token safe as a file name (e.g. a hex sha256)."""
    if not isinstance(key, str) or not _KEY.match(key) or key.startswith("."):
        raise StoreError("store.bad_key", f"not a realisation key: {key!r}", obj=str(key))
    return key


def key_file_name(key: str) -> tuple[str, str]:
    """(two-character shard, file name) for a key; a 'sha256:' prefix is dropped."""
    name = check_key(key).removeprefix("sha256:").replace(":", "_")
    return name[:2], name


KINDS = ("step", "cache-dir", "inputs", "")  # "": a record of the old format, kind unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class Realisation:
    """The result of running one derivation: an output tree, a log, how it ended.

    Encoding (``kata-realisation/2``): a msgpack map of every field below plus
    ``"format"``; ``stack`` a list of digests. Records of ``kata-realisation/1`` (the same
    first seven fields and an untyped ``meta`` map) are read: ``meta``'s ``run``,
    ``step``, ``pipeline`` and ``stack`` (else ``objects``) become the typed fields.
    """

    outputs: str                 # the output tree digest
    log: str | None = None       # the log blob digest
    exit_status: int = 0
    duration: float = 0.0        # seconds the step ran
    host: str = ""               # who recorded it
    created: float = 0.0         # unix time
    kind: str = "step"           # step | cache-dir (cache.paths contents) | inputs (snapshot)
    run: str = ""                # the run that produced it
    pipeline: str = ""
    step: str = ""
    stack: tuple[str, ...] = ()  # the artifact trees a dependent is handed, bottom first
    scope: str = ""              # "" shared; "ref:<ref>" or "quarantine:<ref>" (kata.keys.Scope)
    # the blob of the step's test report (kata.realise.reports), "" for none; encoded only
    # when set (in the file's map and as an extra last item of the index's form), so every
    # record without one keeps its bytes
    report: str = ""

    def __post_init__(self) -> None:
        check_digest(self.outputs)
        if self.log is not None:
            check_digest(self.log)
        if not isinstance(self.exit_status, int) or isinstance(self.exit_status, bool):
            raise StoreError("store.bad_realisation", "exit_status must be an int")
        if not isinstance(self.duration, (int, float)) or not math.isfinite(self.duration):
            raise StoreError("store.bad_realisation", "duration must be a finite number")
        if self.kind not in KINDS:
            raise StoreError("store.bad_realisation", f"unknown kind {self.kind!r}")
        for name in ("host", "run", "pipeline", "step", "scope"):
            if not isinstance(getattr(self, name), str):
                raise StoreError("store.bad_realisation", f"{name} must be a string")
        if not isinstance(self.stack, tuple):
            object.__setattr__(self, "stack", tuple(self.stack))
        for digest in self.stack:
            check_digest(digest)
        if not isinstance(self.report, str):
            raise StoreError("store.bad_realisation", "report must be a string")
        if self.report:
            check_digest(self.report)

    def objects(self) -> tuple[str, ...]:
        """The objects this realisation points at (gc keeps them while it lives; a hit
        needs every one intact): outputs, log, and every tree of the stack."""
        found = [self.outputs] + ([self.log] if self.log else [])
        found += [self.report] if self.report else []
        return tuple(dict.fromkeys(found + list(self.stack)))

    def encode(self) -> bytes:
        data = {f: getattr(self, f) for f in _FIELDS}
        data["stack"] = list(self.stack)
        data["format"] = FORMAT
        if self.report:
            data["report"] = self.report
        return msgpack.packb(dict(sorted(data.items())), use_bin_type=True)

    def index_encode(self) -> bytes:
        """The compact positional form the host-local index keeps (not a file format)."""
        values = [getattr(self, f) for f in _FIELDS]
        return msgpack.packb(values + [self.report] if self.report else values,
                             use_bin_type=True)

    @classmethod
    def index_decode(cls, raw: bytes) -> "Realisation":
        """Decode the index's form. It was validated before it was indexed, so it is not
        re-validated: this is the hot path of a fully cached run. An index written by an
        older kata (seven fields, the last ``meta``) is mapped like an old record."""
        values = msgpack.unpackb(raw, raw=False)
        if len(values) not in (len(_FIELDS), len(_FIELDS) + 1):
            return cls(**_from_old(dict(zip(_OLD_FIELDS, values))))
        obj = _new(cls)
        for setter, value in zip(_SETTERS, values):
            setter(obj, value)
        _set_stack(obj, tuple(values[_STACK]))
        _set_report(obj, values[-1] if len(values) > len(_FIELDS) else "")
        return obj

    @classmethod
    def decode(cls, raw: bytes, *, what: str = "realisation") -> "Realisation":
        try:
            data = msgpack.unpackb(raw, raw=False)
            if not isinstance(data, dict):
                raise ValueError("not a map")
            tag = data.pop("format", None)
            if tag == OLD_FORMAT:
                data = _from_old(data)
            elif tag != FORMAT:
                raise ValueError("unknown format")
            return cls(**data)
        except (ValueError, TypeError, msgpack.UnpackException, StoreError) as err:
            raise StoreError("store.corrupt_record", f"{what} is unreadable ({err})",
                             obj=what) from err


def _from_old(data: dict[str, Any]) -> dict[str, Any]:
    """A ``kata-realisation/1`` map (untyped ``meta``) as this format's fields."""
    meta = data.pop("meta", None)
    meta = meta if isinstance(meta, dict) else {}
    stack = meta.get("stack", meta.get("objects")) or ()
    data.update(kind="step" if meta.get("step") else "",
                run=str(meta.get("run", "")), pipeline=str(meta.get("pipeline", "")),
                step=str(meta.get("step", "")),
                stack=tuple(d for d in stack if isinstance(d, str)))
    return data


_FIELDS = ("outputs", "log", "exit_status", "duration", "host", "created", "kind", "run",
           "pipeline", "step", "stack", "scope")
_OLD_FIELDS = ("outputs", "log", "exit_status", "duration", "host", "created", "meta")
_STACK = _FIELDS.index("stack")
_SETTERS = tuple(getattr(Realisation, f).__set__ for f in _FIELDS)
_set_stack = Realisation.stack.__set__  # type: ignore[attr-defined]
_set_report = Realisation.report.__set__  # type: ignore[attr-defined]
_new = object.__new__
