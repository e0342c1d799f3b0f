"""Trees: a directory packed into one canonical archive blob, and safe extraction.

The canonical archive ("kata-tree/1") is a self-describing record stream::

    b"kata-tree/1\\n"
    record*   where record = u32 big-endian header length, msgpack header, [content]
    header    [kind, path, arg]:
                ["d", path, 0]        directory (mode 0755)
                ["f", path, size]     regular file (0644), followed by `size` raw bytes
                ["x", path, size]     executable file (0755), followed by `size` raw bytes
                ["l", path, target]   symlink (target: any non-empty bytes, stored as data)
              ["e"]                   end of archive (a truncated stream is detected)

``path`` and ``target`` are bytes (names need not be UTF-8), relative, '/'-separated.
Entries are sorted by their path components (so a directory's entries follow it
contiguously); nothing else (mtime, owner, the order the filesystem lists entries,
compression level) enters the stream. The tree digest is the sha256 of this
uncompressed stream. Hard links are stored as files; devices, FIFOs and sockets are
refused.

Symlinks are data: a link is stored with its target text as it was (absolute, or
leading out of the tree: a virtualenv's ``bin/python -> /usr/bin/python3``), and
extracted as that same link. Nothing here ever resolves one: packing reads links with
``readlink`` and never descends into them, and extraction never writes through one.

Extraction trusts nothing: every path, order, parent, link and size is checked by this
module (no tarfile), and every write goes through a directory fd the extraction itself
created (``O_NOFOLLOW``, ``O_EXCL``), so no symlink — whether in the archive or planted
beside the target — is ever written through: an entry's parent must be a directory of
the archive itself, never a link (``evil -> /tmp`` followed by ``evil/x`` is refused).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import queue
import stat
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import msgpack

from .errors import StoreError
from .files import os_error

if TYPE_CHECKING:
    from concurrent.futures import Future

MAGIC = b"kata-tree/1\n"
_LEN = struct.Struct(">I")
MAX_HEADER = 64 * 1024
MAX_NAME = 255
MAX_PATH = 4096
SMALL_FILE = 256 * 1024
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds an extraction enforces against decompression bombs and absurd entries."""

    max_bytes: int = 64 << 30        # total uncompressed file content
    max_entries: int = 5_000_000
    max_entry_size: int = 32 << 30   # one file


# ---------------------------------------------------------------- packing

@dataclass(frozen=True, slots=True)
class _Entry:
    key: tuple[bytes, ...]
    kind: str
    abspath: bytes
    size: int = 0
    target: bytes = b""


def _record(kind: str, path: bytes, arg: int | bytes) -> bytes:
    head = msgpack.packb([kind, path, arg], use_bin_type=True)
    return _LEN.pack(len(head)) + head


def record_header(kind: str, path: bytes, arg: int | bytes) -> bytes:
    """The header an entry has in the canonical archive (its length prefix included; a
    file's content follows it): what ``kata.remote.trees.archive_digest`` counts."""
    return _record(kind, path, arg)


END_RECORD = (lambda h: _LEN.pack(len(h)) + h)(msgpack.packb(["e"], use_bin_type=True))
#: the canonical archive of an empty directory (what a step without artifacts stores)
EMPTY_TREE = MAGIC + END_RECORD


def is_executable(mode: int) -> bool:
    """Whether a regular file of ``st_mode`` ``mode`` is an "x" entry of a tree: its owner's
    execute bit decides (git's rule); the group's and others' bits are not kept, so a file
    of mode 0654 is "f". Every place that turns a file on disk into a tree entry (here, the
    remote executor's packing of a workspace) must use this one rule, or the same output
    gets two digests."""
    return bool(mode & stat.S_IXUSR)


#: the modes ``extract(readonly=True)`` gives (what a step sees of its inputs and of its
#: dependencies' artifacts, the lower layers of its workspace): by entry kind
READONLY_MODES = {"f": 0o444, "x": 0o555, "d": 0o555}

#: the modification time ``extract(readonly=True)`` gives every entry, in ns since the
#: epoch: 1980-01-02T00:00:00Z. A step's inputs and its dependencies' artifacts carry it on
#: every host (a fresh unpack, a merged stack, a worker's input root), so a step that
#: records mtimes (zip, tar, a wheel, a jar) makes the same bytes everywhere and early
#: cutoff holds across machines. 1980 because zip cannot store an earlier date (Python's
#: zipfile refuses one), and the 2nd so that no time zone's local time falls before it.
STEP_MTIME_NS = 315_619_200 * 10**9
_STEP_TIMES = (STEP_MTIME_NS, STEP_MTIME_NS)


def _pack_error(reason: str, message: str, path: bytes) -> StoreError:
    return StoreError(reason, message, obj=os.fsdecode(path))


def _classify(abspath: bytes, key: tuple[bytes, ...], st: os.stat_result) -> _Entry:
    rel = b"/".join(key)
    if len(rel) > MAX_PATH:
        raise _pack_error("store.tree.path_too_long",
                          f"{os.fsdecode(rel[:80])}... is a path of {len(rel)} bytes; a tree "
                          f"holds paths of at most {MAX_PATH}", rel[:200])
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return _Entry(key, "d", abspath)
    if stat.S_ISREG(mode):
        return _Entry(key, "x" if is_executable(mode) else "f", abspath, st.st_size)
    if stat.S_ISLNK(mode):
        target = os.readlink(abspath)
        if not _link_target_ok(target):
            raise _pack_error("store.tree.bad_symlink",
                              f"symlink {os.fsdecode(rel)} has an empty or over-long target", rel)
        return _Entry(key, "l", abspath, target=target)
    raise _pack_error("store.tree.unsupported_file",
                      f"{os.fsdecode(rel)} is a device, FIFO or socket; trees hold only files, "
                      "directories and symlinks", rel)


def _walk(root: bytes, key: tuple[bytes, ...], out: list[_Entry]) -> None:
    """Append every entry below ``key`` (unsorted). Iterative: a step can nest its
    directories deeper than Python's recursion limit; a path the archive cannot hold
    (longer than ``MAX_PATH``) is a StoreError, not a tree no extraction would take."""
    todo = [key]
    while todo:
        key = todo.pop()
        path = os.path.join(root, *key) if key else root
        with os.scandir(path) as it:
            children = list(it)
        for child in children:
            ckey = key + (child.name,)
            entry = _classify(child.path, ckey, child.stat(follow_symlinks=False))
            out.append(entry)
            if entry.kind == "d":
                todo.append(ckey)


def _split_subset(path: str) -> tuple[bytes, ...]:
    raw = os.fsencode(path)
    parts = tuple(p for p in raw.strip(b"/").split(b"/") if p not in (b"", b"."))
    if raw.startswith(b"/") or b".." in parts or not parts:
        raise StoreError("store.tree.bad_path",
                         f"tree path {path!r} must be relative and inside the directory", obj=path)
    return parts


def _real_dir(broot: bytes, sub: str) -> tuple[bytes, ...]:
    """The components of ``sub``, a path under ``broot`` every component of which is a
    real directory (no link on the way), or StoreError store.tree.bad_path."""
    parts = _split_subset(sub)
    for depth in range(1, len(parts) + 1):
        try:
            st = os.lstat(os.path.join(broot, *parts[:depth]))
        except FileNotFoundError:
            raise StoreError("store.tree.missing_path", f"{sub} does not exist", obj=sub) from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError("store.tree.bad_path", f"{sub} is not a directory", obj=sub)
    return parts


def scan(root: str, paths: Sequence[str] | None = None,
         dir_links: Mapping[str, str] | None = None) -> list[_Entry]:
    """The sorted entries of ``root`` (or of ``paths`` under it, with their parents).

    ``dir_links`` maps some of ``paths`` (each a symlink) to the real directory under
    ``root`` it leads to (a root-relative path with no link on it, resolved by the
    caller): such a path is packed as a directory holding that directory's content,
    instead of as the link (an artifact ``result -> build/out`` carries ``build/out``)."""
    broot = os.fsencode(os.path.abspath(root))
    try:
        if not stat.S_ISDIR(os.stat(broot).st_mode):
            raise StoreError("store.tree.not_a_directory", f"{root} is not a directory", obj=root)
        entries: dict[tuple[bytes, ...], _Entry] = {}
        if not paths:
            found: list[_Entry] = []
            _walk(broot, (), found)
            entries = {e.key: e for e in found}
        for sub in paths or ():
            parts = _split_subset(sub)
            for depth in range(1, len(parts) + 1):
                key = parts[:depth]
                abspath = os.path.join(broot, *key)
                try:
                    st = os.lstat(abspath)
                except FileNotFoundError:
                    raise StoreError("store.tree.missing_path",
                                     f"{sub} does not exist under {root}", obj=sub) from None
                entry = _classify(abspath, key, st)
                if depth < len(parts) and entry.kind != "d":
                    raise StoreError("store.tree.bad_path",
                                     f"{os.fsdecode(b'/'.join(key))} in {sub} is not a directory",
                                     obj=sub)
                entries[key] = entry
            source = (dir_links or {}).get(sub)
            if source is not None and entries[parts].kind == "l":
                real = _real_dir(broot, source)
                entries[parts] = _Entry(parts, "d", os.path.join(broot, *real))
                found = []
                _walk(broot, real, found)
                cut = len(real)
                entries.update((parts + e.key[cut:],
                                _Entry(parts + e.key[cut:], e.kind, e.abspath, e.size, e.target))
                               for e in found)
            elif entries[parts].kind == "d":
                found = []
                _walk(broot, parts, found)
                entries.update((e.key, e) for e in found)
    except FileNotFoundError as err:
        raise StoreError("store.tree.missing_path", f"{root}: {err}", obj=root) from err
    except PermissionError as err:
        raise StoreError("store.permission", f"cannot read {err.filename}: {err.strerror}",
                         obj=os.fsdecode(err.filename or root)) from err
    except OSError as err:  # ENAMETOOLONG, ELOOP: what a step left is no host fault
        raise StoreError("store.tree.unreadable", f"cannot read {err.filename}: "
                         f"{err.strerror}", obj=os.fsdecode(err.filename or root)) from err
    return sorted(entries.values(), key=lambda e: e.key)


def _open_regular(path: bytes) -> int:
    """An fd of the regular file ``path``, never of what replaced it since it was listed:
    a symlink fails (``O_NOFOLLOW``), a FIFO or device is opened without blocking
    (``O_NONBLOCK``) and refused by its fstat."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file any more", os.fsdecode(path))
    os.set_blocking(fd, True)
    return fd


def _read_small(path: bytes) -> bytes:
    fd = _open_regular(path)
    try:
        parts = []
        while True:
            data = os.read(fd, CHUNK)
            if not data:
                break
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _read_batch(batch: list[_Entry]) -> bytes:
    """Records (headers and contents) of consecutive small entries, as one buffer."""
    parts: list[bytes] = []
    for entry in batch:
        path = b"/".join(entry.key)
        if entry.kind == "d":
            parts.append(_record("d", path, 0))
        elif entry.kind == "l":
            parts.append(_record("l", path, entry.target))
        else:
            try:
                data = _read_small(entry.abspath)
            except OSError as err:
                raise StoreError("store.tree.unreadable", f"cannot read {os.fsdecode(path)}: {err}",
                                 obj=os.fsdecode(path)) from err
            parts.append(_record(entry.kind, path, len(data)))
            parts.append(data)
    return b"".join(parts)


def _batches(entries: list[_Entry]) -> Iterator[list[_Entry] | _Entry]:
    """Group small entries into ~1 MiB batches; a big file is its own item."""
    batch: list[_Entry] = []
    size = 0
    for entry in entries:
        if entry.kind in "fx" and entry.size > SMALL_FILE:
            if batch:
                yield batch
                batch, size = [], 0
            yield entry
            continue
        batch.append(entry)
        size += entry.size + 64
        if size >= CHUNK or len(batch) >= 512:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def stream(entries: list[_Entry], *, workers: int = 4) -> Iterator[bytes]:
    """The canonical archive of ``entries`` as chunks; small files are read ahead in threads
    (a bounded window of ~1 MiB batches, so memory stays bounded)."""
    yield MAGIC
    window = 16
    it = _batches(entries)
    first = list(itertools.islice(it, 2))
    if len(first) < 2:  # one batch or one file (a step's few artifacts): no threads to start
        for item in first:
            if isinstance(item, _Entry):
                yield from _file_record(item, b"/".join(item.key), None)
            else:
                yield _read_batch(item)
        yield END_RECORD
        return
    it = itertools.chain(first, it)
    from concurrent.futures import ThreadPoolExecutor  # here: a run that packs nothing never loads it

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[bytes] | _Entry] = deque()

        def refill() -> None:
            while len(pending) < window:
                item = next(it, None)
                if item is None:
                    return
                pending.append(pool.submit(_read_batch, item) if isinstance(item, list) else item)

        refill()
        while pending:
            item = pending.popleft()
            if isinstance(item, _Entry):
                yield from _file_record(item, b"/".join(item.key), None)
            else:
                yield item.result()
            refill()
    yield END_RECORD


def _file_record(entry: _Entry, path: bytes, fut: Future[bytes] | None) -> Iterator[bytes]:
    # The size recorded is the size read: a file changing while it is packed must not
    # produce a stream whose header lies about its content.
    try:
        if fut is not None:
            data = fut.result()
            yield _record(entry.kind, path, len(data))
            yield data
            return
        with open(_open_regular(entry.abspath), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            yield _record(entry.kind, path, size)
            left = size
            while left:
                data = fh.read(min(CHUNK, left))
                if not data:
                    raise StoreError("store.tree.changed",
                                     f"{os.fsdecode(path)} shrank while it was being packed",
                                     obj=os.fsdecode(path))
                left -= len(data)
                yield data
    except OSError as err:
        raise StoreError("store.tree.unreadable", f"cannot read {os.fsdecode(path)}: {err}",
                         obj=os.fsdecode(path)) from err


def restream(items: Iterable[tuple[str, bytes, "int | bytes", "Iterable[bytes] | None"]]) -> Iterator[bytes]:
    """The canonical archive of entries that come from elsewhere (a remote cache), already in
    canonical order: (kind "d"|"f"|"x"|"l", path, size or link target, content chunks for a
    file). Nothing is checked here: the digest of what comes out proves (or not) that it is
    the tree it claims to be, and extraction validates it like any other archive."""
    yield MAGIC
    for kind, path, arg, chunks in items:
        yield _record(kind, path, arg)
        if chunks is not None:
            yield from chunks
    yield END_RECORD


class _ManifestTap:
    """Parses a canonical archive as it streams past (chunks split anywhere) and records
    what each file and link entry holds: ``out[path] = (kind, "sha256:<hex>")``, the
    digest of a file's content or of a link's target; directories are not recorded."""

    def __init__(self, out: dict[str, tuple[str, str]]) -> None:
        self.out = out
        self.magic = len(MAGIC)
        self.head = bytearray()
        self.left = 0  # content bytes of the current file still to come
        self.sha = hashlib.sha256()
        self.entry: tuple[str, str] = ("", "")

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        i, n = 0, len(view)
        head = self.head
        while i < n:
            if self.magic:
                take = min(self.magic, n - i)
                self.magic -= take
            elif self.left:
                take = min(self.left, n - i)
                self.sha.update(view[i:i + take])
                self.left -= take
                if not self.left:
                    self._file_done()
            elif not head and i + 4 <= n and i + 4 + _LEN.unpack_from(view, i)[0] <= n:
                # the common case: the whole header inside this chunk
                end = i + 4 + _LEN.unpack_from(view, i)[0]
                self._header(msgpack.unpackb(view[i + 4:end]))
                take = end - i
            else:  # a header split across chunks
                want = 4 - len(head) if len(head) < 4 else 4 + _LEN.unpack_from(head)[0] - len(head)
                take = min(want, n - i)
                head += view[i:i + take]
                if len(head) > 4 and len(head) == 4 + _LEN.unpack_from(head)[0]:
                    self._header(msgpack.unpackb(bytes(head[4:])))
                    head.clear()
            i += take

    def _header(self, header: list) -> None:
        kind = header[0]
        if kind in ("f", "x"):
            self.entry = (kind, os.fsdecode(header[1]))
            self.sha = hashlib.sha256()
            self.left = header[2]
            if not self.left:
                self._file_done()
        elif kind == "l":
            self.out[os.fsdecode(header[1])] = ("l", "sha256:" + hashlib.sha256(header[2]).hexdigest())

    def _file_done(self) -> None:
        kind, path = self.entry
        self.out[path] = (kind, "sha256:" + self.sha.hexdigest())


def tap_manifest(chunks: Iterable[bytes], out: dict[str, tuple[str, str]]) -> Iterator[bytes]:
    """Pass the chunks of a canonical archive through unchanged, filling ``out`` with each
    file's and link's (kind, digest) as those very bytes go by (see ``_ManifestTap``)."""
    tap = _ManifestTap(out)
    for chunk in chunks:
        tap.feed(chunk)
        yield chunk


def pack_bytes(root: str, paths: Sequence[str] | None = None) -> bytes:
    """The whole canonical archive in memory (tests, small trees)."""
    return b"".join(stream(scan(root, paths)))


# ---------------------------------------------------------------- extraction

def _bad(reason: str, message: str, path: bytes | str | None) -> StoreError:
    name = os.fsdecode(path) if isinstance(path, bytes) else path
    return StoreError(f"store.archive.{reason}", f"unsafe archive: {message}", obj=name)


def _link_target_ok(target: object) -> bool:
    """A link target is data: any non-empty byte string without NUL, at most MAX_PATH
    bytes (what ``symlink(2)`` itself takes). Where it points is never checked, since
    nothing here follows it."""
    return isinstance(target, bytes) and 0 < len(target) <= MAX_PATH and b"\0" not in target


def _check_path(path: object) -> tuple[bytes, ...]:
    if isinstance(path, bytes) and 0 < len(path) <= MAX_PATH and b"\0" not in path \
            and not path.startswith(b"/"):
        parts = path.split(b"/")
        if b"" not in parts and b"." not in parts and b".." not in parts \
                and max(map(len, parts)) <= MAX_NAME:
            return tuple(parts)  # the common case; any failure is diagnosed below
    return _check_path_slow(path)


def _check_path_slow(path: object) -> tuple[bytes, ...]:
    if not isinstance(path, bytes):
        raise _bad("bad_header", "entry path is not a byte string", repr(path))
    shown = path
    if not path:
        raise _bad("bad_name", "empty entry name", shown)
    if b"\0" in path:
        raise _bad("bad_name", f"entry name contains NUL: {path!r}", shown.replace(b"\0", b"\\0"))
    if path.startswith(b"/"):
        raise _bad("absolute_path", f"absolute path {os.fsdecode(path)}", shown)
    if len(path) > MAX_PATH:
        raise _bad("bad_name", "entry path too long", shown[:200])
    parts = tuple(path.split(b"/"))
    for part in parts:
        if part == b"..":
            raise _bad("path_escape", f"'..' in {os.fsdecode(path)}", shown)
        if part in (b"", b"."):
            raise _bad("bad_name", f"empty or '.' component in {os.fsdecode(path)}", shown)
        if len(part) > MAX_NAME:
            raise _bad("bad_name", "entry name component too long", shown[:200])
    return parts


def _name(what: object) -> bytes | str | None:
    """An entry name for an error, computed only when there is an error."""
    if callable(what):
        what = what()
    if isinstance(what, tuple):
        return b"/".join(what)
    return what  # type: ignore[return-value]


PREFETCH = 4  # decompressed chunks read ahead


class _Reader:
    """The decompressed archive, read in CHUNK pieces. Once an archive proves bigger than
    one chunk, a thread reads ahead (decompression and sha256 release the GIL), so they
    overlap the parsing and file creation; ``close()`` stops it."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.data = b""
        self.pos = 0
        self._queue: queue.Queue[tuple[bytes, BaseException | None]] | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._eof = False

    def _ahead(self) -> None:
        assert self._queue is not None
        try:
            while not self._stop:
                data = self.src.read(CHUNK)
                self._queue.put((data, None))
                if not data:
                    return
        except BaseException as err:  # handed to the parsing thread, raised in order
            self._queue.put((b"", err))

    def _read(self) -> bytes:
        if self._eof:
            return b""
        if self._queue is None:
            data = self.src.read(CHUNK)
            if len(data) >= CHUNK:
                self._queue = queue.Queue(maxsize=PREFETCH)
                self._thread = threading.Thread(target=self._ahead, name="kata-extract-read",
                                                daemon=True)
                self._thread.start()
            err = None
        else:
            data, err = self._queue.get()
        if err is not None:
            self._eof = True
            raise err
        if not data:
            self._eof = True
        return data

    def close(self) -> None:
        """Stop reading ahead; ``src`` is left where the read-ahead thread stopped."""
        thread = self._thread
        if thread is None:
            return
        self._stop = True
        assert self._queue is not None
        while thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.01)
        self._thread = None

    def exact(self, n: int, what: object) -> bytes:
        pos = self.pos
        end = pos + n
        if end <= len(self.data):
            self.pos = end
            return self.data[pos:end]
        pieces = [self.data[pos:]]
        need = n - len(pieces[0])
        while True:
            data = self._read()
            if not data:
                self.data, self.pos = b"", 0
                raise _bad("truncated", "archive ends in the middle of an entry", _name(what))
            if len(data) >= need:
                pieces.append(data[:need])
                self.data, self.pos = data, need
                return b"".join(pieces)
            pieces.append(data)
            need -= len(data)

    def chunks(self, n: int, what: object) -> Iterator[bytes]:
        left = n
        if self.pos < len(self.data):
            take = min(len(self.data) - self.pos, left)
            out = self.data[self.pos:self.pos + take]
            self.pos += take
            left -= take
            yield out
        while left:
            data = self._read()
            if not data:
                raise _bad("truncated", "archive ends in the middle of a file", _name(what))
            if len(data) > left:
                self.data, self.pos = data, left
                data = data[:left]
            else:
                self.data, self.pos = b"", 0
            left -= len(data)
            yield data

    def at_eof(self) -> bool:
        return self.pos >= len(self.data) and not self._read()


def entries(src: BinaryIO, limits: Limits = Limits()) -> Iterator[tuple[str, tuple[bytes, ...], object, "_Reader"]]:
    """Parse and validate an archive: yields (kind, components, size-or-target, reader)."""
    rd = _Reader(src)
    try:
        yield from _entries(rd, limits)
    finally:
        rd.close()


def _entries(rd: _Reader, limits: Limits) -> Iterator[tuple[str, tuple[bytes, ...], object, _Reader]]:
    if rd.exact(len(MAGIC), "archive header") != MAGIC:
        raise _bad("bad_header", "not a kata-tree/1 archive", "archive header")
    last: tuple[bytes, ...] | None = None
    total = 0
    count = 0
    dirs: set[tuple[bytes, ...]] = {()}
    while True:
        (hlen,) = _LEN.unpack(rd.exact(4, lambda: f"after {os.fsdecode(b'/'.join(last or ()))}"))
        if hlen > MAX_HEADER:
            raise _bad("bad_header", f"entry header of {hlen} bytes", "entry header")
        try:
            head = msgpack.unpackb(rd.exact(hlen, "entry header"), raw=True, use_list=True,
                                   max_bin_len=MAX_PATH + 1, max_str_len=16)
        except (ValueError, msgpack.UnpackException, TypeError) as err:
            raise _bad("bad_header", f"unreadable entry header ({err})", "entry header") from None
        if not isinstance(head, list) or not head:
            raise _bad("bad_header", "entry header is not a list", "entry header")
        kind = head[0]
        if kind == b"e" and len(head) == 1:
            if not rd.at_eof():
                raise _bad("trailing_data", "data after the end of the archive", "end of archive")
            return
        if len(head) != 3:
            raise _bad("bad_header", "entry header has the wrong shape", repr(head)[:100])
        path, arg = head[1], head[2]
        parts = _check_path(path)
        count += 1
        if count > limits.max_entries:
            raise _bad("too_many_entries", f"more than {limits.max_entries} entries", path)
        if last is not None and parts <= last:
            if parts == last:
                raise _bad("duplicate", f"duplicate entry {os.fsdecode(path)}", path)
            raise _bad("unsorted", f"entry {os.fsdecode(path)} is out of canonical order", path)
        last = parts
        if parts[:-1] not in dirs:
            raise _bad("no_parent", f"the parent of {os.fsdecode(path)} is not a directory "
                       "of this archive", path)
        if kind == b"d":
            if arg != 0:
                raise _bad("bad_header", f"directory {os.fsdecode(path)} with a size", path)
            dirs.add(parts)
            yield "d", parts, 0, rd
        elif kind in (b"f", b"x"):
            if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
                raise _bad("bad_header", f"bad size for {os.fsdecode(path)}", path)
            if arg > limits.max_entry_size:
                raise _bad("too_large", f"{os.fsdecode(path)} claims {arg} bytes", path)
            total += arg
            if total > limits.max_bytes:
                raise _bad("too_large", f"archive content exceeds {limits.max_bytes} bytes "
                           f"at {os.fsdecode(path)}", path)
            yield kind.decode(), parts, arg, rd
        elif kind == b"l":
            if not _link_target_ok(arg):
                raise _bad("bad_symlink", f"symlink {os.fsdecode(path)} -> {arg!r}: a target "
                           f"must be 1 to {MAX_PATH} bytes without NUL", path)
            yield "l", parts, arg, rd
        else:
            raise _bad("bad_entry", f"unsupported entry type {kind!r} for {os.fsdecode(path)} "
                       "(hard links, devices and FIFOs are not allowed)", path)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def extract(src: BinaryIO, dest: str, *, limits: Limits = Limits(), readonly: bool = False) -> None:
    """Extract an archive into ``dest`` (created if missing, else it must be empty)."""
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(dest, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(dest).st_mode):
            raise StoreError("store.tree.dest_not_a_directory",
                             f"{dest} is not a directory (or is a symlink)", obj=dest) from None
        if os.listdir(dest):
            raise StoreError("store.tree.dest_not_empty", f"{dest} is not empty", obj=dest) from None
    fmode = {"f": 0o644, "x": 0o755}
    dmode = 0o755
    if readonly:
        fmode = {"f": READONLY_MODES["f"], "x": READONLY_MODES["x"]}
        dmode = READONLY_MODES["d"]
    rootfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack = _DirStack(rootfd)
    umask = os.umask(0)
    os.umask(umask)
    items = entries(src, limits)
    try:
        for kind, parts, arg, rd in items:
            while stack.top_parts() != parts[:-1]:
                _close_dir(stack.pop(), dmode, readonly)
            dirfd = stack.top()
            name = parts[-1]
            if kind == "d":
                os.mkdir(name, 0o755, dir_fd=dirfd)
                fd = os.open(name, _DIR_OPEN, dir_fd=dirfd)
                stack.push(parts, fd)
            elif kind == "l":
                os.symlink(arg, name, dir_fd=dirfd)
                if readonly:
                    os.utime(name, ns=_STEP_TIMES, dir_fd=dirfd, follow_symlinks=False)
            else:
                mode = fmode[kind]
                # the content is read before the file is created: a truncated archive
                # leaves no file behind, and a small file costs one write
                data = rd.exact(arg, parts) if arg <= SMALL_FILE else None
                fd = os.open(name, _CREATE, mode, dir_fd=dirfd)
                try:
                    for chunk in (data,) if data is not None else rd.chunks(arg, parts):
                        done = os.write(fd, chunk) if chunk else 0
                        if done < len(chunk):
                            view = memoryview(chunk)[done:]
                            while view:
                                view = view[os.write(fd, view):]
                    if mode & umask:  # the mode is set at O_CREAT unless the umask masks it
                        os.fchmod(fd, mode)
                    if readonly:
                        os.utime(fd, ns=_STEP_TIMES)
                finally:
                    os.close(fd)
    except OSError as err:
        raise os_error(err, f"extracting into {dest}", dest) from err
    finally:
        items.close()  # stops the read-ahead now, not when the traceback is freed
        while stack:
            _close_dir(stack.pop(), dmode, readonly)


_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _DirStack:
    """The directories an extraction is inside, root first, as (path components, fd).

    At most ``MAX_OPEN`` of their fds are open: a tree nested thousands of levels deep
    (what a step can make) would otherwise need one fd per level and fail with EMFILE
    under the usual limit of 1024. The shallowest are closed first and reopened, level
    by level without following links, when the extraction climbs back to them (entries
    come sorted, so that happens once per directory)."""

    MAX_OPEN = 128

    def __init__(self, rootfd: int) -> None:
        self._parts: list[tuple[bytes, ...]] = [()]
        self._fds: list[int | None] = [rootfd]
        self._open = 1
        self._oldest = 1  # below this index every fd but the root's is closed

    def __bool__(self) -> bool:
        return bool(self._fds)

    def top_parts(self) -> tuple[bytes, ...]:
        return self._parts[-1]

    def push(self, parts: tuple[bytes, ...], fd: int) -> None:
        self._parts.append(parts)
        self._fds.append(fd)
        self._open += 1
        while self._open > self.MAX_OPEN and self._oldest < len(self._fds) - 1:
            old = self._fds[self._oldest]
            if old is not None:
                os.close(old)
                self._fds[self._oldest] = None
                self._open -= 1
            self._oldest += 1

    def top(self) -> int:
        """The fd of the innermost directory, reopened from its nearest open ancestor."""
        i = len(self._fds) - 1
        if self._fds[i] is None:
            j = i - 1
            while self._fds[j] is None:  # the root's fd (index 0) is never closed
                j -= 1
            fd = self._fds[j]
            assert fd is not None
            for name in self._parts[i][len(self._parts[j]):]:
                nxt = os.open(name, _DIR_OPEN, dir_fd=fd)
                if fd != self._fds[j]:
                    os.close(fd)
                fd = nxt
            self._fds[i] = fd
            self._open += 1
        return self._fds[i]  # type: ignore[return-value]

    def pop(self) -> int:
        """The innermost directory's fd (the caller closes it), taken off the stack."""
        fd = self.top()
        self._fds.pop()
        self._parts.pop()
        self._open -= 1
        self._oldest = min(self._oldest, len(self._fds))
        return fd


def _close_dir(fd: int, mode: int, readonly: bool) -> None:
    try:
        if readonly:
            os.fchmod(fd, mode)
            os.utime(fd, ns=_STEP_TIMES)  # last: its entries are all made
    finally:
        os.close(fd)


def settle_dir_mtimes(root: str) -> None:
    """Give every directory under ``root`` (and ``root``) ``STEP_MTIME_NS``, deepest first:
    for a directory assembled from extracted trees (files and links keep theirs)."""
    for dirpath in reversed(_dirs_below(root)):
        os.utime(dirpath, ns=_STEP_TIMES, follow_symlinks=False)


def _dirs_below(root: str) -> list[str]:
    """``root`` and every directory below it, parents before children, no link followed.
    Iterative, not ``os.walk`` (which recurses on Python 3.11): a step's artifacts nest as
    deep as it likes."""
    found = []
    todo = [root]
    while todo:
        top = todo.pop()
        found.append(top)
        with os.scandir(top) as it:
            todo += [e.path for e in it if e.is_dir(follow_symlinks=False)]
    return found


def made_copy(root: str) -> bool:
    """Whether the read-only copy ``root`` (an unpacked tree or a merged stack) is already
    made: a directory. One stat, on the path every step's workspace takes. A copy an older
    kata made, before extractions were stamped, is given ``STEP_MTIME_NS`` here, with
    everything under it: a step must see the same mtimes whichever host or version made its
    copy. Only times change (never contents, which running steps may be reading); ``root``
    is stamped last, so an interrupted pass is finished by the next."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if st.st_mtime_ns != STEP_MTIME_NS:
        for dirpath in reversed(_dirs_below(root)):
            with os.scandir(dirpath) as it:
                names = [e.path for e in it]
            for path in names:
                os.utime(path, ns=_STEP_TIMES, follow_symlinks=False)
        os.utime(root, ns=_STEP_TIMES)
    return True


def iter_chunks(data: bytes) -> Iterable[bytes]:
    return (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
