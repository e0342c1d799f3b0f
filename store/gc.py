"""Garbage collection over the store's files (what every host sharing it sees).

Roots: the realisations named by the last ``keep_runs`` runs of each (pipeline,
branch), pinned realisations, and anything used within the grace period (builds
running elsewhere on a shared store lose nothing). The rest goes oldest-last-use
first — all of it, or only until the store is under ``max_size``. A realisation is
deleted before the objects it points at, and an object is re-checked just before
it is unlinked (a writer touches an object it re-uses), so a concurrent writer
never ends up with a realisation pointing at a missing object.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import StoreError
from .objects import tmp_name, tmp_owner_dead
from .realisations import Realisation

if TYPE_CHECKING:
    from .core import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    dry_run: bool
    deleted_realisations: tuple[str, ...] = ()
    deleted_objects: tuple[str, ...] = ()
    freed_bytes: int = 0
    kept_objects: int = 0
    kept_bytes: int = 0
    kept_realisations: int = 0
    tmp_removed: int = 0
    roots: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def _roots(store: "Store", keep_runs: int) -> set[str]:
    roots = set(store.pinned())
    seen: dict[tuple, int] = {}
    for run in store.iter_runs():  # newest first
        group = (run.pipeline, run.branch)
        n = seen.get(group, 0)
        if n < keep_runs:
            roots |= run.keys()
            seen[group] = n + 1
    return roots


def filesystem_now(tmp: str) -> float:
    """The time by the clock that stamps the store's files: the mtime of a file made in
    ``tmp`` (the store's tmp directory) just now, else (it cannot be written) this host's.

    Ages are mtimes compared with "now", so both must come from one clock. On a network
    filesystem the server stamps files, and a host whose clock runs hours ahead of it (or
    jumped forward: an RTC fixed by NTP after boot) saw every entry written within those
    hours as older than the grace period, and deleted what a build elsewhere had just
    written. A local filesystem stamps with this host's clock: a jump there moves both,
    except for entries written before it, which can still look old (docs/architecture.md,
    "gc and the clock"). An mtime in the future (the clock set back) reads as fresh."""
    name = os.path.join(tmp, tmp_name("clock"))
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return time.time()
    try:
        os.write(fd, b"\0")  # a write, so filesystems that stamp on write (NFS) do
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        try:
            os.unlink(name)
        except OSError:
            pass  # a dead owner's file, swept by the next open or gc


def collect(store: "Store", *, max_size: int | None = None, older_than: float | None = None,
            dry_run: bool = False, keep_runs: int = 10, grace: float | None = None) -> GcReport:
    now = filesystem_now(store.tmp)
    grace = store.grace if grace is None else grace
    threshold = now - max(grace, older_than or 0.0)
    # The index stamps last uses with this host's clock: read them on the store's, or a
    # host behind the store's clock sees what it used a moment ago as hours old.
    skew = now - time.time()
    used = {d: t + skew if t else 0.0 for d, (_, t) in store.index.object_info().items()}

    objects: dict[str, tuple[int, float]] = {}
    for digest, st in store.objects.iter_objects():
        objects[digest] = (st.st_size, max(st.st_mtime, used.get(digest, 0.0)))

    roots = _roots(store, keep_runs)
    reals: dict[str, tuple[tuple[str, ...], float, str]] = {}
    unreadable: list[tuple[str, str, float]] = []
    known = store.index.all_realisations()  # records are immutable: an indexed one need not be read
    for name, path, mtime in store.iter_realisations():
        try:
            raw = known.get(name)
            if raw is not None:
                real = Realisation.index_decode(raw)
            else:
                with open(path, "rb") as fh:
                    real = Realisation.decode(fh.read(), what=path)
        except (StoreError, FileNotFoundError):
            unreadable.append((name, path, mtime))
            continue
        objs = real.objects()
        last = max([mtime] + [objects.get(d, (0, 0.0))[1] for d in objs])
        reals[name] = (objs, last, path)

    def is_root(name: str) -> bool:
        return name in roots or ("sha256:" + name) in roots

    refcount: dict[str, int] = {}
    for objs, _, _ in reals.values():
        for d in objs:
            refcount[d] = refcount.get(d, 0) + 1

    total = sum(size for size, _ in objects.values())
    doomed_reals: list[str] = []
    doomed_objs: list[str] = []
    freed = 0

    def over() -> bool:
        return max_size is not None and total - freed > max_size

    def free_object(d: str) -> None:
        nonlocal freed
        size, last = objects[d]
        if last < threshold:
            doomed_objs.append(d)
            freed += size
            objects[d] = (size, float("inf"))  # never twice

    # Orphans first (referenced by no realisation), oldest first.
    orphans = sorted((d for d in objects if refcount.get(d, 0) == 0), key=lambda d: objects[d][1])
    for d in orphans:
        if max_size is not None and not over():
            break
        free_object(d)

    candidates = sorted((n for n, (_, last, _) in reals.items() if not is_root(n) and last < threshold),
                        key=lambda n: reals[n][1])
    for name in candidates:
        if max_size is not None and not over():
            break
        doomed_reals.append(name)
        for d in reals[name][0]:
            refcount[d] -= 1
            if refcount[d] == 0 and d in objects:
                free_object(d)

    for name, path, mtime in unreadable:
        if mtime < threshold:
            doomed_reals.append(name)

    tmp_removed = 0
    if not dry_run:
        store.index.drop_realisations(doomed_reals)  # records go before their objects
        for name in doomed_reals:
            path = reals[name][2] if name in reals else None
            try:
                os.unlink(path) if path else store.delete_realisation(name)
            except FileNotFoundError:
                pass
        def unlink_if_old(d: str) -> bool:
            path = store.objects.path(d)
            try:
                if os.stat(path).st_mtime >= threshold:
                    return False  # re-used by a writer since the scan
                os.unlink(path)
            except FileNotFoundError:
                pass
            return True

        # unlink is metadata I/O that releases the GIL: a few threads overlap the waits.
        with ThreadPoolExecutor(max_workers=8) as pool:
            done = list(pool.map(unlink_if_old, doomed_objs, chunksize=256))
        gone = [d for d, ok in zip(doomed_objs, done) if ok]
        store.index.drop_objects(gone)
        tmp_removed = _clean_tmp(store.tmp, now - max(grace, 60.0))
        _evict_unpacked_orphans(store)
        doomed_objs = gone
    doomed_set = set(doomed_objs)
    kept = {d: s for d, (s, _) in objects.items() if d not in doomed_set}
    return GcReport(dry_run=dry_run, deleted_realisations=tuple(doomed_reals),
                    deleted_objects=tuple(doomed_objs), freed_bytes=freed,
                    kept_objects=len(kept), kept_bytes=sum(kept.values()),
                    kept_realisations=len(reals) - len(doomed_reals), tmp_removed=tmp_removed,
                    roots=len(roots))


def _clean_tmp(tmp: str, before: float) -> int:
    """Remove ingest leftovers of writers that died: older than ``before``, or made by a
    process of this host that is gone (a SIGKILLed writer)."""
    removed = 0
    try:
        entries = list(os.scandir(tmp))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime < before or tmp_owner_dead(entry.name):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


def _evict_unpacked_orphans(store: "Store") -> None:
    """This host's unpacked copies of trees no longer in the store go too, and so do
    merged stacks holding any such tree."""
    store.evict_merged(lambda tree: store.objects.has(tree))
    try:
        names = os.listdir(store.unpacked_dir)
    except FileNotFoundError:
        return
    for name in names:
        if len(name) == 64 and not store.objects.has("sha256:" + name):
            store.evict_unpacked("sha256:" + name)
