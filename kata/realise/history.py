"""History: the runs and the cached results a store holds, as values the CLI renders.

``kata runs`` lists :class:`RunSummary` values (one per recorded run, ``store.runs``), ``kata cache
list``/``stats`` list :class:`CacheEntry` values: one per *result*, however many keys
it is recorded under (a step's result is recorded under its derivation hash and, with
dependencies, its resolved hash too; an early-cutoff hit records it once more). Both are
read through the store's API only (``list_runs``, ``iter_realisations``, ``get_run``);
nothing here writes.

Records are the store's typed values (``store.runs.Run``, ``store.Realisation``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kata.keys import trusted_scope
from kata.realise.events import iso_time
from store.errors import StoreError
from store.realisations import Realisation
from store.runs import Run, RunSummary, summarise


def local_time(unix: float) -> str:
    """``2026-11-30 07:57``: local time, minutes, as the tables show times."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


def summarise_run(record: Run) -> RunSummary:
    """A run record (as ``Store.list_runs`` returns it) as a :class:`RunSummary`
    (``store.runs.summarise``: the store keeps these in its index as it records runs)."""
    return summarise(record)


def runs(store: Any, *, pipeline: str | None = None, limit: int = 20) -> list[RunSummary]:
    """The newest ``limit`` runs (of ``pipeline``, or of every pipeline), newest first:
    the summaries the store's index keeps (records are decoded only where it lacks one)."""
    return store.run_summaries(pipeline=pipeline, limit=limit)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheListing:
    """What ``kata cache list`` shows: the entries newest first, and how many records
    were internal (input snapshots, records of unknown kind) or unreadable."""

    entries: tuple[CacheEntry, ...]
    records: int
    internal: int
    unreadable: int


def cache_entries(store: Any,
                  records: Iterable[tuple[str, Realisation]] | None = None) -> CacheListing:
    """Every cached result of ``store``, each once (see :class:`CacheEntry`).

    ``records``: (key, realisation) pairs to use instead of reading the store's.
    """
    unreadable = 0
    if records is None:
        pairs: list[tuple[str, Realisation]] = []
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
    groups: dict[tuple, list[tuple[str, Realisation]]] = {}
    internal = 0
    for key, real in pairs:
        if real.kind not in ("step", "cache-dir"):
            internal += 1  # input snapshots, and records of the old format's unknown kind
            continue
        ident = (real.kind, real.pipeline, real.step, real.run, real.outputs, real.scope,
                 key if real.kind == "cache-dir" else "")
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
            created=min(r.created for _, r in found), exit_status=real.exit_status,
            duration=real.duration, outputs=outputs, scope=scope))
    entries.sort(key=lambda e: (-e.created, e.pipeline, e.step, e.key))
    return CacheListing(entries=tuple(entries), records=len(pairs) + unreadable,
                        internal=internal, unreadable=unreadable)


def _drv_hash(store: Any, run_id: str, step: str) -> str:
    """The derivation hash ``run_id``'s record gives ``step`` ("" when unknown)."""
    try:
        record = store.get_run(run_id)
    except StoreError:  # an unreadable run record: the caller shows the first key
        return ""
    found = record.step(step) if record is not None else None
    return found.drv_hash if found is not None else ""


def previous_derivation(store: Any, pipeline: str | None, step: str, *,
                        before: str | None = None, other_than: str = "",
                        limit: int = 200) -> bytes | None:
    """The encoded derivation record of ``step``'s last realisation (a run of ``pipeline``,
    any pipeline for None, where the step passed), what ``kata why`` diffs against.

    ``before``: only runs recorded before the run of this id (newest first from there);
    ``other_than``: pass over realisations of this derivation hash (a miss is explained
    by the last *different* derivation); ``limit``: runs looked at, at most."""
    found = previous_derivations(store, pipeline, {step: other_than}, before=before,
                                 limit=limit)
    return found[step][0]


def previous_derivations(store: Any, pipeline: str | None, steps: dict[str, str], *,
                         before: str | None = None, limit: int = 200, trusted: bool = False
                         ) -> dict[str, tuple[bytes | None, bool]]:
    """For each step of ``steps`` (name -> its derivation hash now, "" for none): (the
    encoded derivation record of its last realisation, or None; True when that last
    realisation had the same hash, then with None: nothing changed). One walk over the runs,
    newest first from ``before`` (exclusive), at most ``limit`` runs of ``pipeline``.
    Records before ``before`` are not decoded (run file names carry the run id).
    ``trusted``: pass over untrusted runs (what a trusted run or ``kata why`` compares
    against: an untrusted branch's run must not make a changed step read unchanged)."""
    out: dict[str, tuple[bytes | None, bool]] = {n: (None, False) for n in steps}
    pending = set(steps)
    names = store.run_names()
    if before is not None:
        at = next((i for i, n in enumerate(names) if n.endswith("-" + before)), len(names))
        names = names[at + 1:]
    looked = 0
    for name in names:
        if not pending or looked >= limit:
            break
        try:
            record = store.read_run(name)
        except StoreError:
            continue
        if record is None or (pipeline is not None and record.pipeline != pipeline) or \
                (trusted and not trusted_scope(record.scope)):
            continue
        looked += 1
        for entry in record.steps:
            if entry.name not in pending or entry.status != "passed" or not entry.drv_hash:
                continue
            if entry.drv_hash == steps[entry.name]:  # it passed as it is: nothing changed
                out[entry.name] = (None, True)
                pending.discard(entry.name)
                continue
            found = store.get_derivation(entry.drv_hash)
            if found is not None:
                out[entry.name] = (found, out[entry.name][1])
                pending.discard(entry.name)
    return out
