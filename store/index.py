"""The LMDB index: a host-local, rebuildable cache over the store's files.

Never the only copy of anything: deleting it loses nothing (``verify --reindex``
rebuilds it). Never on a network filesystem (LMDB's own documentation forbids it):
:func:`is_network_fs` tells the store to put it under the host's state directory.
The map grows on demand; a dead reader's slot is reclaimed on open.
"""

from __future__ import annotations

import errno
import os
import struct
import time

import lmdb

from .errors import StoreError

# msgpack is imported by the methods that encode or decode values: opening the index and
# reading or writing raw rows (the cached path, kata.realise.noop) needs no codec (~8 M
# instructions, datetime included)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the cached path)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import TypeVar

    T = TypeVar("T")

# statfs(2) f_type magics of filesystems LMDB must not live on.
NETWORK_FS = {
    0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x517B: "smb",
    0x65735546: "fuse", 0x00C36400: "ceph", 0x5346414F: "afs", 0x01021997: "9p",
    0x47504653: "gpfs", 0x0BD00BD0: "lustre",
}
_libc = None  # the process's own symbols (libc among them), opened on first use


def fs_type(path: str) -> int:
    """statfs(path).f_type (f_type is the first word of struct statfs on Linux)."""
    global _libc
    import ctypes  # here: ~7 M instructions, which the cached path (kata.realise.noop) skips

    if _libc is None:
        # CDLL(None), not find_library("c"): that runs `ldconfig -p` twice, ~40 ms
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_network_fs(path: str) -> bool:
    return fs_type(path) in NETWORK_FS


_DBS = (b"real", b"objs", b"runs", b"cnt", b"stat", b"unp", b"ver", b"rsum")

# LMDB 0.9 on-disk layout (lmdb's mdb.c, MDB_page/MDB_meta; py-lmdb bundles 0.9.x):
# pages 0 and 1 are meta pages; each starts with a 16-byte page header, then
# mm_magic u32, mm_version u32, mm_address ptr, mm_mapsize size_t, mm_dbs[2] (48 bytes
# each; the free DB's md_pad holds the page size), mm_last_pg, mm_txnid.
_MDB_MAGIC = 0xBEEFC0DE
_MDB_VERSION = 1
_META = struct.Struct("<II8xQ I44x 48x QQ")  # from the end of the page header
_PAGE_HEADER = 16
_MIN_PAGE, _MAX_PAGE = 512, 1 << 16


def default_state_dir(root: str) -> str:
    """Host-local state for a store: beside a local store, else under ~/.local/state/kata."""
    if not is_network_fs(root):
        return os.path.join(root, "local")
    import hashlib

    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    tag = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:16]
    return os.path.join(base, "kata", "stores", tag)


def data_file_damage(path: str) -> str:
    """Why the LMDB data file ``path`` must not be mapped ("" when it may be).

    LMDB maps the whole file and reads any page its meta says is in use: a file
    shorter than ``(last used page + 1) * page size`` (truncated by a full disk, a
    bad copy, a crash of the filesystem) makes the first read of a missing page a
    SIGBUS that kills the process, so the meta pages are read with plain ``read``
    first. The newer valid meta page (higher txnid) wins, as in ``mdb_env_read_header``.
    A missing or empty file is fine (LMDB initialises it).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(2 * _MAX_PAGE)
    except FileNotFoundError:
        return ""
    if size == 0:
        return ""
    metas = []
    for offset in _meta_offsets(head):
        raw = head[offset + _PAGE_HEADER: offset + _PAGE_HEADER + _META.size]
        if len(raw) < _META.size:
            continue
        magic, version, _mapsize, psize, last_pg, txnid = _META.unpack(raw)
        if magic == _MDB_MAGIC and version == _MDB_VERSION and _MIN_PAGE <= psize <= _MAX_PAGE:
            metas.append((txnid, last_pg, psize))
    if not metas:
        return f"{path} has no valid LMDB meta page ({size} bytes)"
    _txnid, last_pg, psize = max(metas)
    needed = (last_pg + 1) * psize
    if size < needed:
        return (f"{path} is truncated: {size} bytes, but its meta page uses "
                f"{last_pg + 1} pages of {psize} bytes ({needed} bytes)")
    return ""


def _meta_offsets(head: bytes) -> list[int]:
    # meta page 0 is at 0; page 1 at the page size, which page 0 records (or, if page 0
    # is damaged, at the common page sizes)
    offsets = [0]
    raw = head[_PAGE_HEADER: _PAGE_HEADER + _META.size]
    if len(raw) == _META.size:
        psize = _META.unpack(raw)[3]
        if _MIN_PAGE <= psize <= _MAX_PAGE:
            offsets.append(psize)
    for psize in (4096, 8192, 16384, 65536):
        if psize not in offsets:
            offsets.append(psize)
    return offsets


class LmdbIndex:
    """Realisations, object sizes and last use, when each object was last verified, runs,
    counters and the stat cache."""

    def __init__(self, path: str, *, map_size: int = 32 << 20) -> None:
        self.path = path
        # why the index was discarded on open ("" when it was not): the store rebuilds
        # it from the files and the CLI says so
        self.discarded = ""
        try:
            os.makedirs(path, exist_ok=True)
            damage = data_file_damage(os.path.join(path, "data.mdb"))
            if damage:  # checked before mapping: a short file would be a SIGBUS
                self._discard(damage)
            try:
                self._open(map_size)
            except lmdb.Error as err:
                # An unreadable index is rebuilt from the files, never trusted.
                self._discard(f"{path}: {err}")
                self._open(map_size)
            self.reader_check()
        except (OSError, lmdb.Error) as err:
            readonly = isinstance(err, (lmdb.ReadonlyError, PermissionError)) or (
                isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES)) or \
                "Read-only file system" in str(err) or "Permission denied" in str(err)
            raise StoreError("store.read_only" if readonly else "store.index",
                             f"cannot open the store's index at {path}: {err}", obj=path) from err

    def _discard(self, why: str) -> None:
        import shutil  # here: opening an intact index needs none of it

        self.discarded = why
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path, exist_ok=True)

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
                try:
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)
                except lmdb.Error as err:
                    raise self._error(err, "growing") from err
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.Error as err:
                raise self._error(err, "writing") from err
        raise StoreError("store.index_full", "the index could not grow", obj=self.path)

    def _error(self, err: lmdb.Error, doing: str) -> StoreError:
        """An LMDB failure as a StoreError: a full disk says so (LMDB reports the errno
        in its message, e.g. ``mdb_txn_commit: No space left on device``)."""
        text = str(err)
        if "No space left" in text or "Disk quota" in text:
            return StoreError("store.disk_full", f"no space left on the index's filesystem "
                              f"while {doing} the index at {self.path}", obj=self.path)
        return StoreError("store.index", f"the index at {self.path} failed while {doing}: {text}",
                          obj=self.path)

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

    def put_realisations(self, items: Mapping[str, bytes]) -> None:
        """Several ``put_realisation`` in one transaction."""
        def fn(t: lmdb.Transaction) -> None:
            for key, raw in items.items():
                t.put(key.encode(), raw, db=self.db["real"])
        self.write(fn)

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
        import msgpack

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
        import msgpack

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
        import msgpack

        raw = self.get("ver", digest.encode())
        return tuple(msgpack.unpackb(raw)) if raw is not None else None

    def note_verified(self, signatures: Mapping[str, tuple[int, ...]]) -> None:
        """Record objects' stat signatures (digest -> signature) in one transaction."""
        import msgpack

        def fn(t: lmdb.Transaction) -> None:
            for digest, signature in signatures.items():
                t.put(digest.encode(), msgpack.packb(list(signature)), db=self.db["ver"])
        self.write(fn)

    # ------------------------------------------------------------ runs

    def put_run(self, run_id: str, raw: bytes, name: str = "", summary: bytes = b"", *,
                counts: Mapping[str, int] | None = None) -> None:
        """Index a run record by id and, with ``name``, its summary by record file name,
        and add ``counts`` to the counters (:meth:`count`), in one transaction."""
        def fn(t: lmdb.Transaction) -> None:
            t.put(run_id.encode(), raw, db=self.db["runs"])
            if name:
                t.put(name.encode(), summary, db=self.db["rsum"])
            for counter, delta in (counts or {}).items():
                self._add(t, counter, delta)
        self.write(fn)

    def run_summaries(self, names: Sequence[str]) -> list[bytes | None]:
        """The encoded summaries of run records by file name (None: not indexed)."""
        db = self.db["rsum"]

        def fn(t: lmdb.Transaction) -> list[bytes | None]:
            if len(names) < 1000:
                return [t.get(n.encode(), db=db) for n in names]
            every = dict(t.cursor(db=db))  # one walk: cheaper than many lookups
            return [every.get(n.encode()) for n in names]
        return self.read(fn)

    def put_run_summaries(self, rows: Mapping[str, bytes]) -> None:
        def fn(t: lmdb.Transaction) -> None:
            for name, raw in rows.items():
                t.put(name.encode(), raw, db=self.db["rsum"])
        self.write(fn)

    def get_run(self, run_id: str) -> bytes | None:
        return self.read(lambda t: t.get(run_id.encode(), db=self.db["runs"]))

    # ------------------------------------------------------------ counters

    def count(self, name: str, delta: int = 1) -> None:
        self.write(lambda t: self._add(t, name, delta))

    def _add(self, t: lmdb.Transaction, name: str, delta: int) -> None:
        old = t.get(name.encode(), db=self.db["cnt"])
        t.put(name.encode(), str(int(old or b"0") + delta).encode(), db=self.db["cnt"])

    def counters(self) -> dict[str, int]:
        return self.read(lambda t: {k.decode(): int(v) for k, v in t.cursor(db=self.db["cnt"])})

    def reset_counters(self) -> None:
        self.write(lambda t: t.drop(self.db["cnt"], delete=False))

    # ------------------------------------------------------------ unpacked trees

    def note_unpacked(self, digest: str) -> None:
        import msgpack

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
        import msgpack

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
        import msgpack

        db = self._index.db["stat"]

        def fn(t: lmdb.Transaction) -> None:
            for p, value in entries.items():
                assert len(value) == 7, value
                t.put(os.fsencode(p), msgpack.packb([STAT_FORMAT, *value]), db=db)
        self._index.write(fn)
