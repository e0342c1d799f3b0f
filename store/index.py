"""The LMDB index: a host-local, rebuildable cache over the store's files.

Never the only copy of anything: deleting it loses nothing (``verify --reindex``
rebuilds it). Never on a network filesystem (LMDB's own documentation forbids it):
:func:`is_network_fs` tells the store to put it under the host's state directory.
The map grows on demand; a dead reader's slot is reclaimed on open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import lmdb
import msgpack

from .errors import StoreError

T = TypeVar("T")

# statfs(2) f_type magics of filesystems LMDB must not live on.
NETWORK_FS = {
    0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x517B: "smb",
    0x65735546: "fuse", 0x00C36400: "ceph", 0x5346414F: "afs", 0x01021997: "9p",
    0x47504653: "gpfs", 0x0BD00BD0: "lustre",
}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_type(path: str) -> int:
    """statfs(path).f_type (f_type is the first word of struct statfs on Linux)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_network_fs(path: str) -> bool:
    return fs_type(path) in NETWORK_FS


_DBS = (b"real", b"objs", b"runs", b"cnt", b"stat", b"unp", b"ver")


class LmdbIndex:
    """Realisations, object sizes and last use, when each object was last verified, runs,
    counters and the stat cache."""

    def __init__(self, path: str, *, map_size: int = 32 << 20) -> None:
        self.path = path
        try:
            os.makedirs(path, exist_ok=True)
            try:
                self._open(map_size)
            except lmdb.Error:
                # An unreadable index is rebuilt from the files, never trusted.
                shutil.rmtree(path, ignore_errors=True)
                os.makedirs(path, exist_ok=True)
                self._open(map_size)
            self.reader_check()
        except (OSError, lmdb.Error) as err:
            raise StoreError("store.index", f"cannot open the store's index at {path}: {err}",
                             obj=path) from err

    def _open(self, map_size: int) -> None:
        self.env = lmdb.open(self.path, map_size=map_size, max_dbs=len(_DBS) + 2,
                             sync=False, metasync=False, lock=True, max_readers=256)
        self.db = {name.decode(): self.env.open_db(name) for name in _DBS}

    def close(self) -> None:
        self.env.close()

    def reader_check(self) -> int:
        """Reclaim the reader slots of dead processes; returns how many were freed."""
        return self.env.reader_check()

    # ------------------------------------------------------------ transactions

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in a write transaction, growing the map when it is full."""
        for _ in range(64):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
        raise StoreError("store.index_full", "the index could not grow", obj=self.path)

    def get(self, db: str, key: bytes) -> bytes | None:
        """One lookup (the hot path: no closure, no retry loop unless the map moved)."""
        try:
            with self.env.begin(db=self.db[db]) as txn:
                return txn.get(key)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.read(lambda t: t.get(key, db=self.db[db]))

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        for _ in range(4):
            try:
                with self.env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
        raise StoreError("store.index", "the index keeps being resized", obj=self.path)

    # ------------------------------------------------------------ realisations

    def get_realisation(self, key: str) -> bytes | None:
        return self.get("real", key.encode())

    def put_realisation(self, key: str, raw: bytes) -> None:
        self.write(lambda t: t.put(key.encode(), raw, db=self.db["real"]))

    def drop_realisations(self, keys: Sequence[str]) -> None:
        def fn(t: lmdb.Transaction) -> None:
            for key in keys:
                t.delete(key.encode(), db=self.db["real"])
        self.write(fn)

    def all_realisations(self) -> dict[str, bytes]:
        return self.read(lambda t: {k.decode(): bytes(v) for k, v in t.cursor(db=self.db["real"])})

    def realisation_keys(self) -> list[str]:
        return self.read(lambda t: [k.decode() for k in t.cursor(db=self.db["real"]).iternext(values=False)])

    # ------------------------------------------------------------ objects

    def note_objects(self, items: Mapping[str, int], when: float | None = None) -> None:
        """Record size and last-use time of objects (digest -> uncompressed size, -1 unknown)."""
        now = time.time() if when is None else when

        def fn(t: lmdb.Transaction) -> None:
            for digest, size in items.items():
                k = digest.encode()
                if size < 0:
                    old = t.get(k, db=self.db["objs"])
                    size = msgpack.unpackb(old)[0] if old else -1
                t.put(k, msgpack.packb([size, now]), db=self.db["objs"])
        self.write(fn)

    def object_info(self) -> dict[str, tuple[int, float]]:
        def fn(t: lmdb.Transaction) -> dict[str, tuple[int, float]]:
            out = {}
            for k, v in t.cursor(db=self.db["objs"]):
                size, used = msgpack.unpackb(v)
                out[k.decode()] = (size, used)
            return out
        return self.read(fn)

    def drop_objects(self, digests: Sequence[str]) -> None:
        def fn(t: lmdb.Transaction) -> None:
            for d in digests:
                t.delete(d.encode(), db=self.db["objs"])
                t.delete(d.encode(), db=self.db["ver"])
        self.write(fn)

    def verified(self, digest: str) -> tuple[int, ...] | None:
        """The stat signature (dev, ino, size, mtime_ns, ctime_ns) of the object's file when
        its content was last hashed and found to match its digest; None: never."""
        raw = self.get("ver", digest.encode())
        return tuple(msgpack.unpackb(raw)) if raw is not None else None

    def note_verified(self, signatures: Mapping[str, tuple[int, ...]]) -> None:
        """Record objects' stat signatures (digest -> signature) in one transaction."""
        def fn(t: lmdb.Transaction) -> None:
            for digest, signature in signatures.items():
                t.put(digest.encode(), msgpack.packb(list(signature)), db=self.db["ver"])
        self.write(fn)

    # ------------------------------------------------------------ runs

    def put_run(self, run_id: str, raw: bytes) -> None:
        self.write(lambda t: t.put(run_id.encode(), raw, db=self.db["runs"]))

    def get_run(self, run_id: str) -> bytes | None:
        return self.read(lambda t: t.get(run_id.encode(), db=self.db["runs"]))

    # ------------------------------------------------------------ counters

    def count(self, name: str, delta: int = 1) -> None:
        def fn(t: lmdb.Transaction) -> None:
            old = t.get(name.encode(), db=self.db["cnt"])
            t.put(name.encode(), str(int(old or b"0") + delta).encode(), db=self.db["cnt"])
        self.write(fn)

    def counters(self) -> dict[str, int]:
        return self.read(lambda t: {k.decode(): int(v) for k, v in t.cursor(db=self.db["cnt"])})

    def reset_counters(self) -> None:
        self.write(lambda t: t.drop(self.db["cnt"], delete=False))

    # ------------------------------------------------------------ unpacked trees

    def note_unpacked(self, digest: str) -> None:
        self.write(lambda t: t.put(digest.encode(), msgpack.packb(time.time()), db=self.db["unp"]))

    def drop_unpacked(self, digest: str) -> None:
        self.write(lambda t: t.delete(digest.encode(), db=self.db["unp"]))

    # ------------------------------------------------------------ rebuild

    def clear(self, *names: str) -> None:
        def fn(t: lmdb.Transaction) -> None:
            for name in names:
                t.drop(self.db[name], delete=False)
        self.write(fn)

    def bulk(self, name: str, items: Iterator[tuple[bytes, bytes]]) -> None:
        batch = list(items)
        def fn(t: lmdb.Transaction) -> None:
            for k, v in batch:
                t.put(k, v, db=self.db[name])
        self.write(fn)


# Version tag of a stat cache value. Values are msgpack arrays
# [STAT_FORMAT, dev, ino, mode, size, mtime_ns, ctime_ns, digest]; anything else (the
# version 1 form [size, mtime_ns, ino, digest] among them) reads as absent, never as a key.
STAT_FORMAT = 2


class LmdbStatCache:
    """The compiler's source stat cache (``kata.inputs.StatCache``): absolute path ->
    (dev, ino, mode, size, mtime_ns, ctime_ns, digest), the digest a "sha256:<hex>"."""

    def __init__(self, index: LmdbIndex) -> None:
        self._index = index

    def get_many(self, paths: Sequence[str]) -> Mapping[str, tuple[int, int, int, int, int, int, str]]:
        db = self._index.db["stat"]

        def fn(t: lmdb.Transaction) -> dict[str, tuple[int, int, int, int, int, int, str]]:
            out = {}
            for p in paths:
                raw = t.get(os.fsencode(p), db=db)
                if raw is None:
                    continue
                try:
                    value = msgpack.unpackb(raw)
                except (ValueError, msgpack.UnpackException):
                    continue
                if (type(value) is list and len(value) == 8 and value[0] == STAT_FORMAT
                        and type(value[7]) is str):
                    out[p] = tuple(value[1:])
            return out
        return self._index.read(fn)

    def put_many(self, entries: Mapping[str, tuple[int, int, int, int, int, int, str]]) -> None:
        db = self._index.db["stat"]

        def fn(t: lmdb.Transaction) -> None:
            for p, value in entries.items():
                assert len(value) == 7, value
                t.put(os.fsencode(p), msgpack.packb([STAT_FORMAT, *value]), db=db)
        self._index.write(fn)
