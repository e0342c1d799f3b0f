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

A run's :class:`RunSummary` (what ``kata runs`` and ``kata web`` list) is computed from
its record by :meth:`Run.summary` and kept by the store's index beside the record
(``Store.run_summaries``), encoded by :func:`encode_summary` as the msgpack list
``[SUMMARY_VERSION, id, pipeline, ref, commit, event, status, steps, ran, cached, failed,
skipped, started, duration, scope, retried, cancelled]``; a list of another version reads
as absent (the store recomputes it from the record). Version 3 added ``cancelled``
(version 2 counted cancelled steps among ``failed``, so its rows cannot be split and are
recomputed).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import msgpack

from .errors import StoreError

FORMAT = "kata-run/1"
SUMMARY_VERSION = 3  # the first element of an encoded RunSummary (encode_summary)
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
    report: str = ""  # the step's test report blob (`reports:`), "" none
    needs: tuple[str, ...] = ()  # the step's dependencies (names), as the graph had them
    phases: Phases | None = None  # when it was queued, prepared, ran (None: not recorded)

    def to_obj(self) -> dict[str, Any]:
        out = {n: getattr(self, n) for n in _STEP_FIELDS}  # sorted names: a sorted map
        out["service_logs"] = dict(self.service_logs)
        # defaults are left out: a record without them has the bytes it had before
        if self.attempts == 1:
            del out["attempts"]
        if not self.report:  # likewise
            del out["report"]
        if self.needs:
            out["needs"] = list(self.needs)
        else:
            del out["needs"]
        if self.phases is not None:
            out["phases"] = self.phases.encode()
        else:
            del out["phases"]
        return out  # built from the sorted names, keys replaced in place: still sorted

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


_STEP_FIELDS = tuple(sorted(f.name for f in fields(StepRecord)))


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
        out.update(targets=list(self.targets), steps=[s.to_obj() for s in self.steps],
                   realisations=list(self.realisations))
        return encode_run(out)

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


class RunSummary(NamedTuple):
    """One recorded run, as listed. ``ref``: the full ref it ran on (``refs/heads/main``,
    ``refs/tags/v1``, "" outside git); ``event``: ``push`` | ``pull_request`` | ``tag`` |
    ``schedule`` with ``--event``, ``local`` without; ``ran``: steps whose container ran,
    ``cached``: steps resolved from the store, ``failed``: failed steps (not those that
failed as allowed, ``allow_failure:``); ``cancelled``: steps stopped while running
(Ctrl-C, ``settings.timeout``, ``fail_fast``);
    ``started``: unix time; ``duration``: wall-clock seconds; ``scope``: the scope its
    records were written in, "" when shared; ``retried``: steps that took more than one
    attempt (``retry:``).

    A named tuple, not a frozen dataclass: a server's first runs page builds 10,000 of
    them from the index, and a tuple is built in one call where a frozen dataclass's
    ``__init__`` sets each of its 14 fields (about 3x the time)."""

    id: str
    pipeline: str
    ref: str
    commit: str
    event: str
    status: str
    steps: int
    ran: int
    cached: int
    failed: int
    skipped: int
    started: float
    duration: float
    scope: str = ""
    retried: int = 0
    cancelled: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "ref": self.ref,
                "commit": self.commit, "event": self.event, "scope": self.scope,
                "status": self.status,
                "steps": {"total": self.steps, "ran": self.ran, "cached": self.cached,
                          "failed": self.failed, "skipped": self.skipped,
                          "retried": self.retried, "cancelled": self.cancelled},
                "started": _iso_time(self.started), "duration": round(self.duration, 3)}


def _iso_time(unix: float) -> str:
    # RFC 3339 UTC with milliseconds: the form of every time in --json (docs/json.md)
    whole = int(unix)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((unix - whole) * 1000):03d}Z"


def summarise(record: Run) -> RunSummary:
    """A run record as a :class:`RunSummary`."""
    steps = record.steps
    tag_ref = record.tag and (record.event == "tag" or not record.branch)
    ref = f"refs/tags/{record.tag}" if tag_ref else \
        f"refs/heads/{record.branch}" if record.branch else ""
    return RunSummary(
        id=record.id, pipeline=record.pipeline, ref=ref, commit=record.commit,
        event=record.event or "local", status=record.status or "unknown", steps=len(steps),
        ran=sum(1 for s in steps if s.cache == "MISS" and s.exit_status is not None),
        cached=sum(1 for s in steps if s.cache == "HIT"),
        failed=sum(1 for s in steps if s.status == "failed"),
        cancelled=sum(1 for s in steps if s.status == "cancelled"),
        skipped=sum(1 for s in steps if s.status == "skipped"),
        started=float(record.started), duration=float(record.wall), scope=record.scope,
        retried=sum(1 for s in steps if s.attempts > 1))


def encode_summary(summary: RunSummary | None) -> bytes:
    """``[SUMMARY_VERSION, *fields]``; None (an unreadable record) as ``[SUMMARY_VERSION]``."""
    row: list[Any] = [SUMMARY_VERSION]
    if summary is not None:
        row.extend(summary)
    return msgpack.packb(row, use_bin_type=True)


def decode_summary(raw: bytes) -> tuple[bool, RunSummary | None]:
    """(known, summary): known False for a row of another version or shape (recompute
    it from the record); (True, None) for a record known to be unreadable."""
    try:
        row = msgpack.unpackb(raw, raw=False, use_list=False)
        if type(row) is not tuple or not row or row[0] != SUMMARY_VERSION:
            return False, None
        if len(row) == 1:
            return True, None
        if len(row) != len(RunSummary._fields) + 1:
            return False, None
        return True, RunSummary._make(row[1:])
    except (ValueError, TypeError, msgpack.UnpackException):
        return False, None


def encode_run(obj: dict[str, Any]) -> bytes:
    """The record's bytes from its map (every field of :class:`Run`, ``steps`` as
    :meth:`StepRecord.to_obj` maps, lists for tuples): sorted, with the format tag. The
    cached path (``kata.realise.noop``) encodes the steps it replays without decoding them."""
    return msgpack.packb(dict(sorted({**obj, "format": FORMAT}.items())), use_bin_type=True)


def record_name(run: Run) -> str:
    """The record's file name under ``<store>/runs``: ``<started ns, 20 digits>-<id>``
    (names sort oldest first)."""
    return f"{int(float(run.started) * 1e9):020d}-{run.id}"
