"""Run records: what one ``kata run`` did, per step, as typed values.

``<store>/runs/<started ns>-<id>`` holds the msgpack map of a :class:`Run` (format tag
``kata-run/1``): the run's fields, sorted, with ``steps`` a list of :class:`StepRecord`
maps (their fields, sorted; ``service_logs`` a map service -> log digest). Records
written before the tag existed (untagged maps with the same field names) are read:
missing fields take their defaults, unknown ones are ignored.

Fields added later are encoded only when they hold something, so a record without them
has the bytes it had before (``tests/golden``) and older readers, which ignore unknown
fields, read newer records:
- ``needs``: the step's dependencies by name (the DAG the web dashboard draws);
- ``phases``: ``[1, ready, started, running, ended]``, the step's phase boundaries as unix
  times (:class:`Phases`; the leading 1 is the encoding's version: a reader ignores a
  list whose version it does not know). Queued from ``ready`` (its dependencies done) to
  ``started`` (a worker took it); preparing (workspace, image pull) until ``running``
  (the runtime has the image and starts the container); running until ``ended``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from .errors import StoreError

FORMAT = "kata-run/1"
PHASES_VERSION = 1  # the first element of an encoded ``phases`` list
_FIELDS: dict[type, frozenset[str]] = {}  # a record type's field names (decoding, read often)
_RUN_ID = re.compile(r"^[0-9A-Za-z_.-]{1,100}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Phases:
    """When a step went through its phases, unix seconds (float): ``ready`` (its
    dependencies were done, or the run began), ``started`` (a worker took it: queued
    before), ``running`` (its image was there and its container was being started:
    workspace and image pull before; equal to ``started`` for a step that never reached
    its container), ``ended``. A cache hit has all four equal (the moment it was found).
    Ordered: ready <= started <= running <= ended (clamped on construction)."""

    ready: float
    started: float
    running: float
    ended: float

    def __post_init__(self) -> None:
        for name in ("ready", "started", "running", "ended"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise StoreError("store.bad_run", f"phase time {name} must be a finite number")
        started = max(self.started, self.ready)
        running = min(max(self.running, started), max(self.ended, started))
        object.__setattr__(self, "started", started)
        object.__setattr__(self, "running", running)
        object.__setattr__(self, "ended", max(self.ended, running))

    def encode(self) -> list[float | int]:
        return [PHASES_VERSION, self.ready, self.started, self.running, self.ended]

    @classmethod
    def decode(cls, obj: Any) -> "Phases | None":
        """The phases of an encoded list; None for an unknown version or shape."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 5 or obj[0] != PHASES_VERSION:
            return None
        try:
            return cls(ready=obj[1], started=obj[2], running=obj[3], ended=obj[4])
        except StoreError:
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """One step of a run. ``cache``: HIT | MISS | "" (never looked at); ``key``: the key
    that hit, or the one it was recorded under; ``produced_by``: for a hit, the run that
    ran it."""

    name: str
    status: str  # passed | failed | allowed (failed, allow_failure) | cancelled | skipped
    cache: str = ""
    drv_hash: str = ""
    key: str = ""
    duration: float = 0.0
    exit_status: int | None = None
    log: str = ""
    outputs: str = ""
    produced_by: str = ""
    message: str = ""
    service_logs: tuple[tuple[str, str], ...] = ()  # (service, log digest)
    attempts: int = 1  # attempts made (`retry:`); only the last one's result is recorded
    needs: tuple[str, ...] = ()  # the step's dependencies (names), as the graph had them
    phases: Phases | None = None  # when it was queued, prepared, ran (None: not recorded)

    def to_obj(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["service_logs"] = dict(self.service_logs)
        # defaults are left out: a record without them has the bytes it had before
        if self.attempts == 1:
            del out["attempts"]
        if self.needs:
            out["needs"] = list(self.needs)
        else:
            del out["needs"]
        if self.phases is not None:
            out["phases"] = self.phases.encode()
        else:
            del out["phases"]
        return dict(sorted(out.items()))

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "StepRecord":
        known = _FIELDS.get(cls) or _FIELDS.setdefault(cls, frozenset(f.name for f in fields(cls)))
        data = {k: v for k, v in obj.items() if k in known}
        logs = data.get("service_logs") or {}
        data["service_logs"] = tuple(sorted(logs.items())) if isinstance(logs, dict) else ()
        needs = data.get("needs") or ()
        data["needs"] = tuple(n for n in needs if isinstance(n, str)) \
            if isinstance(needs, (list, tuple)) else ()
        data["phases"] = Phases.decode(data.get("phases"))
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A run: where it ran (pipeline, git commit, branch, event, tag, scope), when
    (``started`` unix time, ``wall`` seconds), how it ended (passed | failed |
    interrupted) and its steps in pipeline order. ``realisations``: extra record keys
    gc keeps while this run is among the last ``keep_runs`` (the steps' keys are kept
    anyway)."""

    id: str
    pipeline: str = ""
    commit: str = ""
    branch: str = ""
    event: str = ""
    tag: str = ""
    scope: str = ""
    started: float = 0.0
    wall: float = 0.0
    status: str = ""
    targets: tuple[str, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    realisations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _RUN_ID.match(self.id):
            raise StoreError("store.bad_run",
                             f"a run needs an id of letters, digits, '._-': {self.id!r}",
                             obj=str(self.id))
        if not isinstance(self.started, (int, float)) or not math.isfinite(self.started):
            raise StoreError("store.bad_run", "started must be a finite number", obj=self.id)

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def keys(self) -> set[str]:
        """The realisation keys this run used (gc roots)."""
        out = set(self.realisations)
        for s in self.steps:
            out.update(k for k in (s.key, s.drv_hash) if k)
        return out

    def encode(self) -> bytes:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(format=FORMAT, targets=list(self.targets),
                   steps=[s.to_obj() for s in self.steps], realisations=list(self.realisations))
        return msgpack.packb(dict(sorted(out.items())), use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes, *, what: str = "run") -> "Run":
        try:
            obj = msgpack.unpackb(raw, raw=False)
            if not isinstance(obj, dict) or obj.pop("format", FORMAT) != FORMAT:
                raise ValueError("unknown format")
            known = _FIELDS.get(cls) or _FIELDS.setdefault(
                cls, frozenset(f.name for f in fields(cls)))
            data = {k: v for k, v in obj.items() if k in known}
            steps = data.get("steps") or ()
            if isinstance(steps, dict):
                steps = list(steps.values())
            data["steps"] = tuple(StepRecord.from_obj(s) for s in steps if isinstance(s, dict))
            data["targets"] = tuple(data.get("targets") or ())
            data["realisations"] = tuple(k for k in data.get("realisations") or ()
                                         if isinstance(k, str))
            for name in ("pipeline", "commit", "branch", "event", "tag", "scope", "status"):
                if data.get(name) is None:
                    data.pop(name, None)
            return cls(**data)
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as err:
            raise StoreError("store.corrupt_record", f"{what} is unreadable ({err})",
                             obj=what) from err
