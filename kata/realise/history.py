"""History: the runs and the cached results a store holds, as values the CLI renders.

``kata runs`` lists :class:`RunSummary` values (one per recorded run), ``kata cache
list``/``stats`` list :class:`CacheEntry` values: one per *result*, however many keys
it is recorded under (a step's result is recorded under its derivation hash and, with
dependencies, its resolved hash too; an early-cutoff hit records it once more). Both are
read through the store's API only (``list_runs``, ``iter_realisations``, ``get_run``);
nothing here writes.

Run and realisation records are read by field name through :func:`_field`, so a record
may be a mapping (older records) or a typed value with attributes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kata.realise.events import iso_time
from store.errors import StoreError


def _field(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def local_time(unix: float) -> str:
    """``2026-11-30 07:57``: local time, minutes, as the tables show times."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """One recorded run. ``ref``: the full ref it ran on (``refs/heads/main``,
    ``refs/tags/v1``, "" outside git); ``event``: ``push`` | ``pull_request`` | ``tag`` |
    ``schedule`` with ``--event``, ``local`` without; ``ran``: steps whose container ran,
    ``cached``: steps resolved from the store, ``failed``: failed or cancelled steps;
    ``started``: unix time; ``duration``: wall-clock seconds."""

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

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "ref": self.ref,
                "commit": self.commit, "event": self.event, "status": self.status,
                "steps": {"total": self.steps, "ran": self.ran, "cached": self.cached,
                          "failed": self.failed, "skipped": self.skipped},
                "started": iso_time(self.started), "duration": round(self.duration, 3)}


def summarise_run(record: Any) -> RunSummary:
    """A run record (as ``Store.list_runs`` returns it) as a :class:`RunSummary`."""
    steps = list(_field(record, "steps") or ())
    branch, tag = _field(record, "branch") or "", _field(record, "tag") or ""
    event = _field(record, "event") or ""
    ref = f"refs/tags/{tag}" if tag and (event == "tag" or not branch) else \
        f"refs/heads/{branch}" if branch else ""
    return RunSummary(
        id=str(_field(record, "id", "")), pipeline=_field(record, "pipeline") or "", ref=ref,
        commit=_field(record, "commit") or "", event=event or "local",
        status=_field(record, "status") or "unknown", steps=len(steps),
        ran=sum(1 for s in steps if _field(s, "cache") == "MISS"
                and _field(s, "exit_status") is not None),
        cached=sum(1 for s in steps if _field(s, "cache") == "HIT"),
        failed=sum(1 for s in steps if _field(s, "status") in ("failed", "cancelled")),
        skipped=sum(1 for s in steps if _field(s, "status") == "skipped"),
        started=float(_field(record, "started") or 0.0),
        duration=float(_field(record, "wall") or 0.0))


def runs(store: Any, *, pipeline: str | None = None, limit: int = 20) -> list[RunSummary]:
    """The newest ``limit`` runs (of ``pipeline``, or of every pipeline), newest first."""
    return [summarise_run(r) for r in store.list_runs(pipeline=pipeline, limit=limit)]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    """One cached result: ``kind`` ``step`` (a step's output and log) or ``cache-dir``
    (a step's ``cache.paths`` contents); ``keys``: every realisation key it is recorded
    under, sorted; ``key``: the one shown (the step's derivation hash when its run record
    says which, else the first); ``created``: unix time; ``duration``: seconds the step
    ran; ``scope``: "" when shared, else the scope it was written in."""

    key: str
    keys: tuple[str, ...]
    kind: str
    pipeline: str
    step: str
    run: str
    created: float
    exit_status: int
    duration: float
    outputs: str
    scope: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "keys": list(self.keys), "kind": self.kind,
                "pipeline": self.pipeline, "step": self.step, "run": self.run,
                "created": iso_time(self.created), "exit_status": self.exit_status,
                "duration": round(self.duration, 3), "outputs": self.outputs,
                "scope": self.scope}


def _kind(real: Any) -> str:
    kind = _field(real, "kind")
    if kind is not None:
        return kind
    meta = _field(real, "meta") or {}
    return "step" if isinstance(meta, dict) and meta.get("step") else ""


def _meta(real: Any, name: str) -> str:
    value = _field(real, name)
    if value is None:
        meta = _field(real, "meta") or {}
        value = meta.get(name, "") if isinstance(meta, dict) else ""
    return str(value or "")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheListing:
    """What ``kata cache list`` shows: the entries newest first, and how many records
    were internal (input snapshots, records of unknown kind) or unreadable."""

    entries: tuple[CacheEntry, ...]
    records: int
    internal: int
    unreadable: int


def cache_entries(store: Any, records: Iterable[tuple[str, Any]] | None = None) -> CacheListing:
    """Every cached result of ``store``, each once (see :class:`CacheEntry`).

    ``records``: (key, realisation) pairs to use instead of reading the store's files.
    """
    unreadable = 0
    if records is None:
        pairs: list[tuple[str, Any]] = []
        for key, _path, _mtime in store.iter_realisations():
            try:
                real = store.get_realisation(key)
            except StoreError:  # a corrupt record is counted, never fatal
                real = None
            if real is None:
                unreadable += 1
                continue
            pairs.append((key, real))
    else:
        pairs = list(records)
    groups: dict[tuple, list[tuple[str, Any]]] = {}
    internal = 0
    for key, real in pairs:
        kind = _kind(real)
        if kind not in ("step", "cache-dir"):
            internal += 1
            continue
        ident = (kind, _meta(real, "pipeline"), _meta(real, "step"), _meta(real, "run"),
                 _field(real, "outputs"), _meta(real, "scope"),
                 key if kind == "cache-dir" else "")
        groups.setdefault(ident, []).append((key, real))
    entries = []
    drv_by_run: dict[tuple[str, str], str] = {}
    for (kind, pipeline, step, run, outputs, scope, _), found in groups.items():
        keys = tuple(sorted(k for k, _ in found))
        key = keys[0]
        if kind == "step" and run:
            if (run, step) not in drv_by_run:
                drv_by_run[(run, step)] = _drv_hash(store, run, step)
            if drv_by_run[(run, step)] in keys:
                key = drv_by_run[(run, step)]
        real = found[0][1]
        entries.append(CacheEntry(
            key=key, keys=keys, kind=kind, pipeline=pipeline, step=step, run=run,
            created=float(min(_field(r, "created") or 0.0 for _, r in found)),
            exit_status=int(_field(real, "exit_status") or 0),
            duration=float(_field(real, "duration") or 0.0), outputs=outputs or "",
            scope=scope))
    entries.sort(key=lambda e: (-e.created, e.pipeline, e.step, e.key))
    return CacheListing(entries=tuple(entries), records=len(pairs) + unreadable,
                        internal=internal, unreadable=unreadable)


def _drv_hash(store: Any, run_id: str, step: str) -> str:
    try:
        record = store.get_run(run_id)
    except StoreError:  # an unreadable run record: fall back to the first key
        return ""
    for s in _field(record, "steps") or () if record is not None else ():
        if _field(s, "name") == step:
            return _field(s, "drv_hash") or ""
    return ""
