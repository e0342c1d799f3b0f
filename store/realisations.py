"""Realisations: what a derivation (or resolved) key produced, as immutable files.

``<store>/realisations/<ab>/<key>`` holds the msgpack map of a :class:`Realisation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import StoreError
from .objects import check_digest

FORMAT = "kata-realisation/1"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Realisation:
    """The result of running one derivation: an output tree, a log, how it ended."""

    outputs: str
    log: str | None = None
    exit_status: int = 0
    duration: float = 0.0
    host: str = ""
    created: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_digest(self.outputs)
        if self.log is not None:
            check_digest(self.log)
        if not isinstance(self.exit_status, int) or isinstance(self.exit_status, bool):
            raise StoreError("store.bad_realisation", "exit_status must be an int")
        if not isinstance(self.duration, (int, float)) or not math.isfinite(self.duration):
            raise StoreError("store.bad_realisation", "duration must be a finite number")

    def objects(self) -> tuple[str, ...]:
        """The objects this realisation points at (gc keeps them while it lives)."""
        extra = self.meta.get("objects", ()) if isinstance(self.meta, dict) else ()
        found = [self.outputs] + ([self.log] if self.log else [])
        found += [d for d in extra if isinstance(d, str)]
        return tuple(found)

    def encode(self) -> bytes:
        # a shallow map: asdict() deep-copies meta (a deep artifact stack) for nothing
        data: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}
        data["format"] = FORMAT
        return msgpack.packb(data, use_bin_type=True)

    def index_encode(self) -> bytes:
        """The compact positional form the host-local index keeps (not a file format)."""
        return msgpack.packb([getattr(self, f) for f in _FIELDS], use_bin_type=True)

    @classmethod
    def index_decode(cls, raw: bytes) -> "Realisation":
        """Decode the index's form. It was validated before it was indexed, so it is not
        re-validated: this is the hot path of a fully cached run."""
        obj = _new(cls)
        for setter, value in zip(_SETTERS, msgpack.unpackb(raw, raw=False)):
            setter(obj, value)
        return obj

    @classmethod
    def decode(cls, raw: bytes, *, what: str = "realisation") -> "Realisation":
        try:
            data = msgpack.unpackb(raw, raw=False)
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
                raise ValueError("unknown format")
            return cls(**data)
        except (ValueError, TypeError, msgpack.UnpackException, StoreError) as err:
            raise StoreError("store.corrupt_record", f"{what} is unreadable ({err})",
                             obj=what) from err


_FIELDS = ("outputs", "log", "exit_status", "duration", "host", "created", "meta")
_SETTERS = tuple(getattr(Realisation, f).__set__ for f in _FIELDS)
_new = object.__new__
