"""Re-hash every object, check every record, optionally repair and rebuild the index."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StoreError
from .realisations import Realisation

if TYPE_CHECKING:
    from .core import Store


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    objects: int
    realisations: int
    corrupt: tuple[str, ...] = ()                 # objects whose content is not their digest
    missing: tuple[tuple[str, str], ...] = ()     # (realisation key, missing object)
    bad_records: tuple[str, ...] = ()             # unreadable realisation files
    quarantined: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()                 # realisations removed by --repair
    reindexed: bool = False

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.bad_records)


def quarantine(store: "Store", digests: list[str]) -> list[str]:
    """Move damaged objects to ``<store>/quarantine/<hex>`` (kept for inspection, out of
    every lookup) and forget them in the index; returns the ones moved."""
    qdir = os.path.join(store.root, "quarantine")
    os.makedirs(qdir, exist_ok=True)
    moved = []
    for d in digests:
        try:
            os.replace(store.objects.path(d), os.path.join(qdir, d[7:]))
            moved.append(d)
        except FileNotFoundError:
            pass
    store.index.drop_objects(digests)
    return moved


def verify(store: "Store", *, repair: bool = False, reindex: bool = False) -> VerifyReport:
    corrupt: list[str] = []
    sizes: dict[str, int] = {}
    for digest, _ in store.objects.iter_objects():
        try:
            with store.objects.open(digest) as blob:
                while blob.read(1 << 20):
                    pass
                sizes[digest] = blob.size
        except StoreError as err:
            if err.reason in ("store.corrupt_object",):
                corrupt.append(digest)
            elif err.reason != "store.missing_object":
                raise
    bad = set(corrupt)
    missing: list[tuple[str, str]] = []
    bad_records: list[str] = []
    records: dict[str, bytes] = {}
    for name, path, _ in store.iter_realisations():
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            real = Realisation.decode(raw, what=path)
        except (StoreError, FileNotFoundError):
            bad_records.append(name)
            continue
        records[name] = raw
        for d in real.objects():
            if d not in sizes and d not in bad:
                missing.append((name, d))

    quarantined: list[str] = []
    dropped: list[str] = []
    if repair:
        quarantined = quarantine(store, corrupt)
        broken = set(bad_records) | {k for k, _ in missing}
        for name, raw in records.items():
            if any(d in bad for d in Realisation.decode(raw).objects()):
                broken.add(name)
        for name in sorted(broken):
            store.delete_realisation(name)
            records.pop(name, None)
            dropped.append(name)

    if reindex:
        store.index.clear("real", "objs", "runs", "rsum")  # rsum: refilled as read
        store.index.bulk("real", ((k.encode(), Realisation.decode(v).index_encode())
                                   for k, v in records.items()))
        store.index.note_objects({d: s for d, s in sizes.items() if d not in bad}, when=0.0)
        # (last use unknown: 0, so gc goes by the files' mtimes)
        store.index.bulk("runs", ((run.id.encode(), run.encode()) for run in store.iter_runs()))

    return VerifyReport(objects=len(sizes) + len(corrupt), realisations=len(records) + len(dropped),
                        corrupt=tuple(corrupt), missing=tuple(missing), bad_records=tuple(bad_records),
                        quarantined=tuple(quarantined), dropped=tuple(dropped), reindexed=reindex)


def rebuild_index(store: "Store") -> int:
    """Refill an empty index from the record files (realisations, runs); returns how
    many realisations it indexed.

    The cheap half of ``verify(reindex=True)``: nothing is re-hashed (object sizes and
    last use come back as the objects are used; gc falls back to the files' mtimes).
    Unreadable records are skipped, as a lookup that misses the index would skip them.
    """
    entries = []
    for name, path, _ in store.iter_realisations():
        try:
            with open(path, "rb") as fh:
                entries.append((name.encode(), Realisation.decode(fh.read(), what=path)
                                .index_encode()))
        except (StoreError, OSError):
            continue
    store.index.bulk("real", iter(entries))
    store.index.bulk("runs", ((run.id.encode(), run.encode()) for run in store.iter_runs()))
    return len(entries)
