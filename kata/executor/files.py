"""Directories on disk <-> REAPI ``Directory`` trees in a CAS, for remote execution.

The REAPI (``build.bazel.remote.execution.v2``, remote_execution.proto) names a blob by
the SHA-256 of its bytes and its size; a directory is a ``Directory`` message (files,
directories and symlinks each sorted by name, serialised deterministically) named by the
digest of those bytes. An output directory travels as one ``Tree`` message (its root
and every directory below it).

- ``upload``/``fetch_to``/``directories``: blobs up and down through ``kata.remote.cas.Cas``
  (FindMissingBlobs first; batches, ByteStream for big blobs; every read verified).
- ``pack_dir``: a directory on disk -> its ``Directory`` messages and file blobs
  (nothing read twice, nothing uploaded that the CAS has: ``Cas.upload``).
- ``materialise``: a ``Directory`` tree -> files on disk (the worker's input root).
- ``BlobCache``: blobs a process already read or sent, by hash, so a worker asks the CAS
  only for what it has not seen (a chain's next input root is mostly the last output).
- ``sync_dir``: make a directory on disk equal to a tree, rewriting only what differs
  from the tree it was packed as (the client, after the action ran).

Regular files, directories and symlinks travel; any other file type (a FIFO, a socket, a
device) raises ``KataError("remote.unsupported_file")`` naming it, and a name or link target
that is not UTF-8 (REAPI strings are) ``KataError("remote.unsupported_name")``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachetools import LRUCache

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote.cas import Cas, RemoteError, tree_directories
from kata.remote.trees import READONLY_MODES, STEP_MTIME_NS, is_executable
from procs.leftovers import remove_tree

_STEP_TIMES = (STEP_MTIME_NS, STEP_MTIME_NS)

CHUNK = 1 << 20  # bytes read from a file at a time
# blobs adding up to no more than this are sent in one batch without FindMissingBlobs
# first: asking costs a round trip, sending a few KiB again costs nothing
SEND_WITHOUT_ASKING = 64 << 10


class Abandoned(Exception):
    """A write through a closed ``Gate``: its caller gave the work up (Ctrl-C)."""


class Gate:
    """Lets a sync's writes into a directory through until ``close``; ``close`` waits for
    the one write in progress, so once it returns nothing more is written there. What
    syncs a workspace on a thread of its own (given up on Ctrl-C while a read from the
    CAS still blocks it) goes through one, so the caller can remove the workspace at
    once without racing a late file into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.closed = False

    def __enter__(self) -> None:
        self._lock.acquire()
        if self.closed:
            self._lock.release()
            raise Abandoned()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def run(self, fn, *args) -> bool:  # noqa: ANN001, ANN002
        """``fn(*args)`` unless closed (then nothing: False), never during ``close``."""
        with self._lock:
            if self.closed:
                return False
            fn(*args)
            return True


_OPEN = Gate()  # never closed: for writers that are not given one


def digest_of(data: bytes) -> re_pb2.Digest:
    """The REAPI digest of ``data``: lowercase hex SHA-256 and size in bytes."""
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(digest: re_pb2.Digest) -> str:
    """A digest as a dict key: its hash (what ``Cas.read_many`` keys its answer by)."""
    return digest.hash


def message_bytes(message) -> bytes:  # noqa: ANN001 - a protobuf message
    """The canonical bytes of a message (deterministic serialisation, as REAPI asks)."""
    return message.SerializeToString(deterministic=True)


@dataclass(slots=True)
class Packed:
    """A directory packed for the CAS: its root digest, every ``Directory`` message (by
    ``key``), and where each file blob's bytes are (``key`` -> a path on disk)."""

    root: re_pb2.Digest
    directories: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    # path relative to the root -> (key, executable) for files, ("->target", False) symlinks
    entries: dict[str, tuple[str, bool]] = field(default_factory=dict)


class DigestMemo:
    """File digests one process already computed, so a file seen again is not read again
    (a remote run packs each step's workspace, and most of it is the same files: the
    inputs and the dependencies' artifacts, read-only layers of the step's overlay).

    Keyed by the path inside the workspace and the file's inode number, size, mtime and
    ctime (nanoseconds). Not by the device: each step's overlay is a mount of its own
    with a device number of its own, while a lower layer's file keeps its real inode
    number. Git's "racily clean" rule guards the key: a file is remembered only when its
    ctime is at least ``RACY`` seconds older than the moment it was hashed, so a later
    change (which sets ctime to its own moment) or a new file reusing the inode (created
    after the old one was hashed) cannot look the same."""

    RACY = 2.0

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int, int, int], re_pb2.Digest] = {}

    @staticmethod
    def _key(rel: str, st: os.stat_result) -> tuple[str, int, int, int, int]:
        return rel, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def digest(self, rel: str, path: str, st: os.stat_result) -> re_pb2.Digest:
        """The digest of the regular file ``path`` (``rel`` in its workspace) whose
        ``lstat`` is ``st``: remembered, or read and hashed."""
        key = self._key(rel, st)
        known = self._known.get(key)
        if known is not None:
            return known
        now = time.time_ns()
        digest = _file_digest(path)
        if st.st_ctime_ns < now - int(self.RACY * 1e9) and len(self._known) < 1_000_000:
            self._known[key] = digest
        return digest


class BlobCache:
    """Blobs this process read from or sent to the CAS, kept in memory by hash (the least
    recently used leave first). A blob is named by its content, so an entry is never
    stale, whatever the CAS has since dropped. A worker running a chain of steps finds most
    of each input root here (the directories and files of the workspace it sent back for
    the step before), and asks the CAS only for the rest: no ``GetTree`` when every
    directory is known, no read of the files it already has.

    ``limit``: bytes kept in all; ``largest``: the biggest blob kept (bytes). Thread-safe
    (a worker's slots share one)."""

    def __init__(self, limit: int = 64 << 20, largest: int = 1 << 20) -> None:
        self.limit, self.largest = limit, largest
        self._blobs: LRUCache[str, bytes] = LRUCache(maxsize=limit, getsizeof=len)
        self._lock = threading.Lock()

    def get(self, h: str) -> bytes | None:
        """The blob whose SHA-256 is the hex ``h``, or None."""
        with self._lock:
            return self._blobs.get(h)

    def put(self, h: str, data: bytes) -> None:
        """Keep ``data``, whose SHA-256 the caller checked is the hex ``h``."""
        if len(data) > min(self.largest, self.limit):
            return
        with self._lock:
            self._blobs[h] = data

    def read_many(self, cas: Cas, digests: Iterable[re_pb2.Digest]) -> dict[str, bytes]:
        """``Cas.read_many`` (hash -> bytes, each checked against its digest) asking the
        CAS only for what is not kept here, and keeping what it answers."""
        out: dict[str, bytes] = {}
        rest = []
        for d in digests:
            data = self.get(d.hash)
            if data is None:
                rest.append(d)
            else:
                out[d.hash] = data
        if rest:
            got = cas.read_many(rest)
            for h, data in got.items():
                self.put(h, data)
            out.update(got)
        return out


def _file_digest(path: str) -> re_pb2.Digest:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return re_pb2.Digest(hash=h.hexdigest(), size_bytes=size)


def pack_dir(root: str | os.PathLike[str], packed: Packed | None = None,
             prefix: str = "", memo: DigestMemo | None = None,
             special: list[str] | None = None) -> Packed:
    """Hash the tree under ``root`` into ``Directory`` messages (nothing is sent);
    ``memo``: file digests known from earlier packs (``DigestMemo``); ``special``: where
    the relative paths of FIFOs, sockets and devices go, left out of the tree (None:
    KataError remote.unsupported_file for the first one).

    Extra top-level entries can be added later with ``add_dir``/``add_file`` on a
    ``Root``; this returns the tree of ``root`` alone."""
    out = packed if packed is not None else Packed(root=re_pb2.Digest())
    out.root = _pack(Path(root), out, prefix, memo, special)
    return out


def _pack(path: Path, out: Packed, rel: str, memo: DigestMemo | None = None,
          special: list[str] | None = None) -> re_pb2.Digest:
    # Iterative (a step can nest its directories deeper than Python recurses): list every
    # directory, parents first, then build their messages children first.
    listed: list[tuple[str, list[tuple[os.DirEntry, os.stat_result]]]] = []
    todo = [(str(path), rel)]
    while todo:
        here, here_rel = todo.pop()
        with os.scandir(here) as it:
            entries = [(e, e.stat(follow_symlinks=False)) for e in sorted(it, key=lambda e: e.name)]
        listed.append((here_rel, entries))
        todo.extend((e.path, f"{here_rel}/{e.name}" if here_rel else e.name)
                    for e, st in entries if stat.S_ISDIR(st.st_mode))
    digests: dict[str, re_pb2.Digest] = {}
    for here_rel, entries in reversed(listed):
        directory = re_pb2.Directory()
        for entry, st in entries:
            child = f"{here_rel}/{entry.name}" if here_rel else entry.name
            _utf8(entry.name, child, "name")
            if stat.S_ISLNK(st.st_mode):
                target = _utf8(os.readlink(entry.path), child, "link target")
                directory.symlinks.add(name=entry.name, target=target)
                out.entries[child] = ("->" + target, False)
            elif stat.S_ISDIR(st.st_mode):
                directory.directories.add(name=entry.name, digest=digests.pop(child))
            elif stat.S_ISREG(st.st_mode):
                digest = memo.digest(child, entry.path, st) if memo is not None \
                    else _file_digest(entry.path)
                executable = is_executable(st.st_mode)  # the store's rule: the same tree
                directory.files.add(name=entry.name, digest=digest, is_executable=executable)
                out.files.setdefault(key(digest), entry.path)
                out.entries[child] = (key(digest), executable)
            elif special is not None:
                special.append(child)
            else:
                raise KataError("remote.unsupported_file", f"{child} is neither a file, a "
                                "directory nor a symlink: it cannot be sent to a remote "
                                "executor", obj=child, exit_code=1)
        data = message_bytes(directory)
        digest = digest_of(data)
        out.directories[key(digest)] = data
        digests[here_rel] = digest
    return digests[rel]


def _utf8(text: str, child: str, what: str) -> str:
    """``text`` (a name or link target, surrogate-escaped as ``os`` gives it) when UTF-8 can
    encode it, as a REAPI string must be; else KataError ``remote.unsupported_name``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(child).decode("utf-8", "backslashreplace")
        raise KataError("remote.unsupported_name", f"{shown}: its {what} is not UTF-8, which "
                        "REAPI names and link targets must be", obj=shown, exit_code=1) from None
    return text


def join_root(packed: Packed, dirs: dict[str, re_pb2.Digest],
              files: dict[str, bytes]) -> re_pb2.Digest:
    """A new root holding ``dirs`` (name -> packed directory digest) and small ``files``
    (name -> bytes, kept in ``packed``'s inline blobs); its digest, recorded in
    ``packed.directories``."""
    directory = re_pb2.Directory()
    for name in sorted(set(dirs) | set(files)):
        if name in dirs:
            directory.directories.add(name=name, digest=dirs[name])
        else:
            data = files[name]
            digest = digest_of(data)
            packed.directories[key(digest)] = data  # sent like a Directory: bytes in memory
            directory.files.add(name=name, digest=digest)
    data = message_bytes(directory)
    digest = digest_of(data)
    packed.directories[key(digest)] = data
    return digest


def upload(cas: Cas, blobs: dict[str, bytes], files: dict[str, str] | None = None,
           present: set[str] | None = None) -> int:
    """Send what the CAS lacks of ``blobs`` (hash -> bytes) and ``files`` (hash -> a path
    holding those bytes): FindMissingBlobs first, then batches, ByteStream for a blob over
    the batch limit. ``present``: hashes this process knows the CAS holds (it sent or
    read them in this run): neither asked about nor sent; what this call sends or finds
    there is added to it. Returns how many blobs were sent. RemoteError as ``Cas`` raises
    it."""
    files = files or {}
    present = present if present is not None else set()
    digests = {h: digest_of(b) for h, b in blobs.items() if h not in present}
    for h, path in files.items():
        if h not in digests and h not in present:
            digests[h] = re_pb2.Digest(hash=h, size_bytes=os.stat(path).st_size)
    total = sum(d.size_bytes for d in digests.values())
    if total <= SEND_WITHOUT_ASKING and total <= cas.batch_limit:
        missing = [d for d in digests.values() if d.size_bytes]  # one round trip, not two
    else:
        missing = cas.find_missing(digests.values())
    small: dict[tuple[str, int], tuple[re_pb2.Digest, bytes]] = {}
    for digest in missing:
        h = digest.hash
        if digest.size_bytes > cas.batch_limit:
            # a callable: a write the server makes start over reads the content afresh
            cas.write(digest, (lambda h=h: iter((blobs[h],))) if h in blobs
                      else (lambda h=h: _read_chunks(files[h])))
        else:
            data = blobs[h] if h in blobs else Path(files[h]).read_bytes()
            small[(h, digest.size_bytes)] = (digest, data)
    cas.upload(small)
    present.update(digests)
    return len(missing)


def fetch_to(cas: Cas, digest: re_pb2.Digest, path: str | os.PathLike[str], executable: bool,
             data: bytes | None = None, *, readonly: bool = False, gate: Gate = _OPEN) -> None:
    """Write one blob (``data`` when already read, else streamed) to a new file: mode
    0644/0755, or with ``readonly`` 0444/0555 (``store.tree.READONLY_MODES``). Each
    write goes through ``gate`` (Abandoned once it is closed)."""
    if readonly:
        mode = READONLY_MODES["x" if executable else "f"]
    else:
        mode = 0o755 if executable else 0o644
    with gate:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        if data is not None:
            with gate:
                f.write(data)
        elif digest.size_bytes:
            for chunk in cas.read(digest):
                with gate:
                    f.write(chunk)
        with gate:
            if readonly:  # what a local step sees too (``store.tree.STEP_MTIME_NS``)
                f.flush()
                os.utime(f.fileno(), ns=_STEP_TIMES)
            f.flush()
            os.chmod(path, mode)


def directories(cas: Cas, root: re_pb2.Digest, known: dict[str, bytes] | None = None,
                cache: BlobCache | None = None) -> dict[str, re_pb2.Directory]:
    """Every ``Directory`` of the tree under ``root`` (hash -> message): from ``cache``
    when it holds them all, else one GetTree call (what it answers is kept in ``cache``),
    or, from a server that refuses it or answers it wrongly, level by level (``known``:
    blobs already read, hash -> bytes, not asked for again)."""
    known = known or {}
    if cache is not None:
        kept, lacking = tree_directories(root, lambda h: _parsed(known.get(h) or cache.get(h)))
        if not lacking:
            return kept
    try:
        tree = cas.get_tree(root)
    except RemoteError as err:
        if err.reason not in ("remote.unsupported", "remote.bad_answer"):
            raise
    else:
        if cache is not None:  # get_tree checked each against the digest its parent names
            for h, directory in tree.items():
                cache.put(h, message_bytes(directory))
        return tree
    out: dict[str, re_pb2.Directory] = {}
    level = [root]
    while level:
        data = {d.hash: known[d.hash] for d in level if d.hash in known}
        rest = [d for d in level if d.hash not in known]
        if rest:
            data.update(cas.read_many(rest))
        nxt = []
        for h, blob in data.items():
            directory = re_pb2.Directory()
            directory.ParseFromString(blob)
            out[h] = directory
            nxt.extend(d.digest for d in directory.directories)
        level = list({d.hash: d for d in nxt if d.hash not in out}.values())
    return out


def _parsed(data: bytes | None) -> re_pb2.Directory | None:
    if data is None:
        return None
    directory = re_pb2.Directory()
    directory.ParseFromString(data)
    return directory


def _read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def tree_message(packed: Packed) -> re_pb2.Tree:
    """The ``Tree`` of a packed directory (its root and every distinct directory below)."""
    root = re_pb2.Directory()
    root.ParseFromString(packed.directories[key(packed.root)])
    children = []
    for k, data in sorted(packed.directories.items()):
        if k == key(packed.root):
            continue
        child = re_pb2.Directory()
        child.ParseFromString(data)
        children.append(child)
    return re_pb2.Tree(root=root, children=children)


def tree_index(tree: re_pb2.Tree) -> tuple[re_pb2.Directory, dict[str, re_pb2.Directory]]:
    """(root, key -> child ``Directory``) of a ``Tree`` message."""
    children = {key(digest_of(message_bytes(c))): c for c in tree.children}
    return tree.root, children


def _check_names(directory: re_pb2.Directory, rel: str) -> None:
    """KataError remote.bad_answer unless every node of ``directory`` has a name that is one
    path component (not empty, ``.`` or ``..``; no ``/`` or NUL) and no two share one, as
    REAPI requires: a tree comes from a worker or a CAS (anyone who can speak the Bots API
    can hand back a result), and a name such as ``../x``, or a symlink and a directory
    both named ``a``, would make whoever writes the tree write outside its directory."""
    seen: set[str] = set()
    for node in (*directory.directories, *directory.files, *directory.symlinks):
        name = node.name
        if name in ("", ".", "..") or "/" in name or "\0" in name or name in seen:
            where = f"{rel}/{name}" if rel else name
            raise KataError("remote.bad_answer", f"the tree names {where!r}, which is not one "
                            "path component or not unique in its directory (REAPI names "
                            "must be both): refused", obj=where, exit_code=1)
        seen.add(name)


def walk(root: re_pb2.Directory, directories: dict[str, re_pb2.Directory],
         rel: str = "") -> Iterator[tuple[str, str, object]]:
    """Every entry of a tree: (relative path, kind "dir" | "file" | "symlink", node), a
    directory before everything below it. Iterative: a tree may nest deeper than Python
    recurses. KataError remote.bad_answer for a name that could leave the tree
    (``_check_names``)."""
    todo = [(root, rel)]
    while todo:
        here, here_rel = todo.pop()
        _check_names(here, here_rel)
        below = []
        for d in here.directories:
            path = f"{here_rel}/{d.name}" if here_rel else d.name
            yield path, "dir", d
            child = directories.get(key(d.digest))
            if child is None:
                raise KataError("remote.blob_missing", f"the tree lacks directory {path} "
                                f"({key(d.digest)})", obj=path, exit_code=1)
            below.append((child, path))
        for f in here.files:
            yield (f"{here_rel}/{f.name}" if here_rel else f.name), "file", f
        for s in here.symlinks:
            yield (f"{here_rel}/{s.name}" if here_rel else s.name), "symlink", s
        todo.extend(reversed(below))


def materialise(cas: Cas, root: re_pb2.Directory, directories: dict[str, re_pb2.Directory],
                dest: str | os.PathLike[str], *, readonly: bool = False,
                cache: BlobCache | None = None) -> None:
    """Write the tree ``root`` into the (existing, empty) directory ``dest`` (file blobs
    from ``cache`` when it has them; those read are kept there). With ``readonly`` its
    files and directories (not ``dest`` itself) get the modes a local step sees its inputs
    and dependencies' artifacts with (0444/0555, directories 0555:
    ``store.tree.extract(readonly=True)``), so a step on a worker sees what it would see
    locally."""
    dest = Path(dest)
    files = []
    made = []
    for rel, kind, node in list(walk(root, directories)):  # every name checked first
        target = dest / rel
        if kind == "dir":
            target.mkdir()
            made.append(target)
        elif kind == "symlink":
            os.symlink(node.target, target)  # type: ignore[attr-defined]
            if readonly:
                os.utime(target, ns=_STEP_TIMES, follow_symlinks=False)
        else:
            files.append((target, node))
    _write_files(cas, files, readonly=readonly, cache=cache)
    if readonly:
        for target in reversed(made):  # deepest first: a directory's mtime set after its entries
            os.chmod(target, READONLY_MODES["d"])
            os.utime(target, ns=_STEP_TIMES)


def _write_files(cas: Cas, todo: list, *, readonly: bool = False,  # noqa: ANN001
                 cache: BlobCache | None = None, gate: Gate = _OPEN) -> None:
    """Write each (path, FileNode): small blobs read in batches (or found in ``cache``),
    big ones streamed."""
    small = [n.digest for _p, n in todo if n.digest.size_bytes <= cas.batch_limit]
    data = cache.read_many(cas, small) if cache is not None else cas.read_many(small)
    for path, node in todo:
        fetch_to(cas, node.digest, path, node.is_executable, data.get(node.digest.hash),
                 readonly=readonly, gate=gate)


def _lmode(path: Path) -> int:
    """``path``'s own ``st_mode`` (a link is not followed: its target may be anything, even
    a name no stat can follow), 0 when nothing is there."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def sync_dir(cas: Cas, before: Packed, root: re_pb2.Directory,
             directories: dict[str, re_pb2.Directory], dest: str | os.PathLike[str],
             cache: BlobCache | None = None, gate: Gate = _OPEN) -> int:
    """Make ``dest`` (packed as ``before``) hold exactly the tree ``root``: remove what
    the tree no longer has, write what is new or changed (small blobs found in ``cache``
    are not read from the CAS). Returns the files written. Nothing in ``dest`` is
    followed: a symlink is an entry like any other. Every change goes through ``gate``:
    Abandoned once it is closed (``dest`` is then half synced: its owner discards it)."""
    dest = Path(dest)
    wanted: dict[str, tuple[str, object]] = {}
    for rel, kind, node in walk(root, directories):
        wanted[rel] = (kind, node)
    # remove entries that vanished or changed kind, deepest first
    for rel in sorted(_existing(dest), key=lambda p: p.count("/"), reverse=True):
        now = wanted.get(rel)
        path = dest / rel
        is_dir = stat.S_ISDIR(_lmode(path))
        if now is None or (now[0] == "dir") != is_dir:
            with gate:
                if is_dir:
                    _rmtree(path)
                else:
                    path.unlink()
    todo: list[tuple[Path, object]] = []
    for rel, (kind, node) in sorted(wanted.items(), key=lambda kv: kv[0].count("/")):
        path = dest / rel
        mode = _lmode(path)
        if kind == "dir":
            if not stat.S_ISDIR(mode):
                with gate:
                    path.mkdir()
            continue
        if kind == "symlink":
            old = before.entries.get(rel)
            if old == ("->" + node.target, False) and stat.S_ISLNK(mode):  # type: ignore[attr-defined]
                continue
            with gate:
                if mode:
                    path.unlink()
                os.symlink(node.target, path)  # type: ignore[attr-defined]
            continue
        digest = node.digest  # type: ignore[attr-defined]
        old = before.entries.get(rel)
        if old == (key(digest), node.is_executable) and stat.S_ISREG(mode):  # type: ignore[attr-defined]
            continue
        if mode:
            with gate:
                path.unlink()
        todo.append((path, node))
    _write_files(cas, todo, cache=cache, gate=gate)
    return len(todo)


def own_copies(before: Packed, blobs: dict[str, bytes], root: re_pb2.Directory,
               directories: dict[str, re_pb2.Directory], limit: int) -> BlobCache:
    """The file blobs of the tree ``root`` that ``sync_dir`` will write into the directory
    packed as ``before`` and that this process already has: sent as ``blobs`` (hash ->
    bytes) or a file of ``before`` (read now, before the sync changes anything; kept only
    when the bytes still hash to the digest). Blobs of at most ``limit`` bytes. A step's
    output often holds its inputs' bytes under new names (a copy, a move), and a worker
    does not send back what it read from the CAS moments before: these need no read."""
    out = BlobCache(limit=256 << 20, largest=limit)  # beyond: read from the CAS
    for rel, kind, node in walk(root, directories):
        if kind != "file":
            continue
        h = key(node.digest)  # type: ignore[attr-defined]
        if before.entries.get(rel) == (h, node.is_executable) or out.get(h) is not None \
                or node.digest.size_bytes > limit:  # type: ignore[attr-defined]
            continue
        data = blobs.get(h)
        if data is None and h in before.files:
            try:
                data = Path(before.files[h]).read_bytes()
            except OSError:
                continue
        if data is not None and hashlib.sha256(data).hexdigest() == h:
            out.put(h, data)
    return out


def make_fifos(dest: str | os.PathLike[str], paths: list[str]) -> None:
    """A FIFO at each relative path of ``paths`` under ``dest`` where nothing is (what a
    worker's step left as a FIFO, socket or device: ``pack_dir``'s ``special``), reached
    without following any link. KataError remote.bad_answer for a path that is not made
    of plain components."""
    for rel in paths:
        parts = rel.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise KataError("remote.bad_answer", f"the result names special file {rel!r}, "
                            "which is not a path inside the workspace: refused", obj=rel,
                            exit_code=1)
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                os.close(fd)
                fd = nxt
            try:
                os.mkfifo(parts[-1], 0o644, dir_fd=fd)
            except FileExistsError:
                pass
        finally:
            os.close(fd)


def _existing(dest: Path) -> Iterator[str]:
    """Every path below ``dest``, relative, never through a link; iterative (``os.walk``
    recurses on Python 3.11, and a step's workspace can nest deeper than that)."""
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(dest / rel if rel else dest) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                yield path
                if entry.is_dir(follow_symlinks=False):
                    todo.append(path)


def _rmtree(path: Path) -> None:
    remove_tree(str(path))
