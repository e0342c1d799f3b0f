"""Kata trees <-> REAPI ``Directory``/``Tree`` messages in a remote CAS.

A Kata tree is one blob, the canonical ``kata-tree/1`` archive (``store/tree.py``): entries
sorted by path components, directories (``d``), files (``f`` 0644, ``x`` 0755) and symlinks
(``l``). In the remote it becomes what every REAPI tool reads (REAPI's ``Directory``):

- each file's content is a CAS blob; a file is a ``FileNode`` (``is_executable`` for ``x``);
- each directory is a ``Directory`` message (files, directories, symlinks, each sorted by
  name), stored as a blob; an empty directory is an empty ``Directory``;
- the whole tree is also one ``Tree`` message (root + every descendant ``Directory``), the
  form ``OutputDirectory.tree_digest`` names.

Back: the ``Tree`` is read, its files fetched (batched, a window ahead, big ones over
ByteStream), and the canonical archive is re-encoded from it (``store.tree.restream``)
straight into the local store. The archive's sha256 must equal the Kata tree digest the
action result named, so a tree that comes back is byte for byte the one that left.

A tree of ``PACK_FILES`` small files or more (``packs``) is also stored as one more
blob: the canonical archive itself, whose REAPI digest is the Kata tree digest's hash and
the archive's size (``archive_digest``; the size follows from the ``Tree`` alone). A host
that fetches the tree reads that one blob over ByteStream instead of a BatchReadBlobs
entry per file, and checks it like every read (its sha256 must be the Kata tree digest
the record names); when the remote no longer holds it (evicted, or uploaded by a client
that did not pack it) the files are fetched one by one as above. The ``Directory`` tree stays complete either way:
other REAPI clients never need the archive.

Names are bytes in Kata and UTF-8 strings in REAPI: a tree with a name or link target that
is not UTF-8 is not uploaded (RemoteError remote.unsupported); it stays local.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kata.atomicfile import write_atomic
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote.cas import Cas, Digest, RemoteError, digest_of, message_digest
from store import Store
from store import tree as kata_tree

#: the tree format's rules for files on disk (which file is "x"; the modes a step sees its
#: inputs and dependencies with), for remote execution (kata.executor), which does not
#: import the store itself: its workspaces must match a local step's exactly
is_executable = kata_tree.is_executable
READONLY_MODES = kata_tree.READONLY_MODES
STEP_MTIME_NS = kata_tree.STEP_MTIME_NS  # the mtime of what a step sees

_WINDOW = 8  # batches of file contents fetched ahead of the archive being written
_UPLOADERS = 4  # batches sent at once (a server writes each batch's blobs one by one)
_READ_AHEAD = 16  # ByteStream chunks (1 MiB from BuildGrid) read ahead of the store's writer
#: a tree with at least this many files, of at most PACK_MEAN_BYTES each on average, also
#: travels as one blob: its canonical archive (``archive_digest``). Below the count the
#: per-blob costs are small; above the mean size moving the bytes dominates them, and
#: storing big trees twice in the remote would cost more than it saves
PACK_FILES = 1000
PACK_MEAN_BYTES = 64 << 10


def packs(files: int, file_bytes: int) -> bool:
    """Whether a tree of ``files`` files holding ``file_bytes`` bytes in all travels as
    its archive blob too (``PACK_FILES``, ``PACK_MEAN_BYTES``)."""
    return files >= PACK_FILES and file_bytes <= files * PACK_MEAN_BYTES


@dataclass
class _Dir:
    files: list[re_pb2.FileNode] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    links: list[re_pb2.SymlinkNode] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A tree as the remote holds it: the ``Tree`` message's digest and the root
    ``Directory``'s (what ``bgd cas download-dir`` takes)."""

    tree_digest: Digest
    root_digest: Digest


def _name(part: bytes) -> str:
    try:
        return part.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteError("remote.unsupported", f"name {part!r} is not UTF-8 (REAPI names "
                          "are strings)") from None


def archive_digest(tree: str, entries: Iterable[tuple[str, bytes, "int | bytes"]]) -> Digest:
    """The REAPI digest of the Kata tree ``tree``'s canonical archive (``store/tree.py``)
    as a blob: ``tree``'s hash and the archive's size, computed from its entries (kind,
    path, size or link target; canonical order) without their contents."""
    size = len(kata_tree.MAGIC) + len(kata_tree.END_RECORD)
    for kind, path, arg in entries:
        size += len(kata_tree.record_header(kind, path, arg))
        if kind in ("f", "x"):
            size += arg  # type: ignore[operator]
    return Digest(hash=tree.partition(":")[2], size_bytes=size)


def memo_path(store: Store, tree: str) -> str:
    """Where this host keeps the REAPI ``Tree`` of the Kata tree ``tree`` once it was
    computed (uploaded or downloaded): ``<state dir>/remote-trees/<ab>/<hex>``. A cache of
    a pure function of the tree's content: deleting it is always safe."""
    hexd = tree.partition(":")[2]
    return os.path.join(store.state_dir, "remote-trees", hexd[:2], hexd)


def _memo_read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    check, data = raw[:64], raw[64:]
    return data if hashlib.sha256(data).hexdigest().encode() == check else None


def _memo_write(path: str, data: bytes) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, hashlib.sha256(data).hexdigest().encode() + data)
    except OSError:
        pass  # a memo is an optimisation: without it the tree is hashed again next time


def _from_memo(cas: Cas, data: bytes) -> Uploaded | None:
    """The tree a memo names, if the remote still holds every blob of it (one
    FindMissingBlobs over the digests the memo already knows: nothing read or hashed)."""
    tree = re_pb2.Tree()
    try:
        tree.ParseFromString(data)
    except Exception:  # protobuf's DecodeError: a memo from elsewhere; upload afresh
        return None
    tree_digest = digest_of(data)
    root_digest = message_digest(tree.root)[0]
    wanted = [tree_digest, root_digest]
    for d in (tree.root, *tree.children):
        wanted.extend(f.digest for f in d.files)
    wanted.extend(message_digest(d)[0] for d in tree.children)
    if cas.find_missing(wanted):
        return None
    return Uploaded(tree_digest=tree_digest, root_digest=root_digest)


def upload_tree(cas: Cas, store: Store, tree: str, *, memo: bool = False) -> Uploaded:
    """Put the Kata tree ``tree`` (``sha256:<hex>``) into the remote CAS as REAPI
    ``Directory`` blobs, a ``Tree`` blob and its files' blobs; send only what
    FindMissingBlobs says is missing. Returns the digests to name it by.

    One pass over the local blob: file contents are gathered into batches of up to the
    server's ``max_batch_total_size_bytes``; each batch is hashed, asked about
    (FindMissingBlobs) and its missing blobs sent (BatchUpdateBlobs) on ``_UPLOADERS``
    threads while the pass goes on (hashing there runs beside it: hashlib releases the
    GIL), at most ``_WINDOW`` batches held, so memory stays bounded whatever the tree's
    size; identical contents are sent once. A file too big for a batch is spooled and
    streamed over ByteStream. A tree of ``PACK_FILES`` small files or more (``packs``)
    also sends its canonical archive as one blob (``archive_digest``), beside the last
    batches. The ``Directory`` and ``Tree`` blobs go last. With ``memo``,
    a tree this host turned into a REAPI Tree before (``memo_path``) is neither read nor
    hashed again when the remote still holds all of it. RemoteError on any remote failure."""
    if memo and (data := _memo_read(memo_path(store, tree))) is not None:
        known = _from_memo(cas, data)
        if known is not None:
            return known
    dirs: dict[tuple[bytes, ...], _Dir] = {(): _Dir()}
    listing: list[tuple[str, bytes, int | bytes]] = []  # the archive's entries, for its size
    files = file_bytes = 0
    sent = _Sent()
    limit = cas.batch_limit
    per_batch = cas.max_batch_blobs
    batch: list[tuple[re_pb2.FileNode, bytes]] = []
    size = 0
    sending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=_UPLOADERS, thread_name_prefix="kata-cas-up") as pool:
        try:
            with store.open_blob(tree) as blob:
                for kind, parts, arg, rd in kata_tree.entries(blob):
                    parent = dirs[parts[:-1]]
                    name = _name(parts[-1])
                    listing.append((kind, b"/".join(parts), arg))  # type: ignore[arg-type]
                    if kind == "d":
                        dirs[parts] = _Dir()
                        parent.dirs.append(name)
                        continue
                    if kind == "l":
                        parent.links.append(re_pb2.SymlinkNode(name=name, target=_name(arg)))  # type: ignore[arg-type]
                        continue
                    n: int = arg  # type: ignore[assignment]
                    files += 1
                    file_bytes += n
                    node = re_pb2.FileNode(name=name, is_executable=kind == "x")
                    parent.files.append(node)
                    if n > limit:
                        node.digest.CopyFrom(_send_big(cas, rd.chunks(n, parts), n, sent))
                    elif n == 0:
                        node.digest.CopyFrom(_EMPTY)
                    else:
                        if batch and (size + n + 100 > limit or len(batch) >= per_batch):
                            sending.append(pool.submit(_hash_and_send, cas, batch, sent))
                            batch, size = [], 0
                            while len(sending) > _WINDOW:
                                sending.popleft().result()
                        batch.append((node, b"".join(rd.chunks(n, parts))))
                        size += n + 100
            if batch:
                sending.append(pool.submit(_hash_and_send, cas, batch, sent))
            if packs(files, file_bytes):
                sending.append(pool.submit(_send_archive, cas, store, tree,
                                           archive_digest(tree, listing)))
            del listing
            while sending:
                sending.popleft().result()
        finally:
            for fut in sending:
                fut.cancel()
    tree_digest, tree_data, root_digest, small = _messages(dirs)
    _send_missing(cas, small)
    if memo:
        _memo_write(memo_path(store, tree), tree_data)
    return Uploaded(tree_digest=tree_digest, root_digest=root_digest)


def _messages(dirs: dict[tuple[bytes, ...], _Dir],
              ) -> tuple[Digest, bytes, Digest, dict[tuple[str, int], tuple[Digest, bytes]]]:
    """The ``Directory`` messages of ``dirs`` and their ``Tree``: (Tree digest, Tree bytes,
    root Directory digest, every Directory and Tree blob by (hash, size))."""
    messages: dict[tuple[bytes, ...], tuple[re_pb2.Directory, Digest, bytes]] = {}
    for path in sorted(dirs, key=len, reverse=True):  # children before their parents
        d = dirs[path]
        children = []
        for name in sorted(d.dirs):
            child = messages[path + (name.encode(),)]
            children.append(re_pb2.DirectoryNode(name=name, digest=child[1]))
        msg = re_pb2.Directory(files=sorted(d.files, key=lambda f: f.name),
                               directories=children,
                               symlinks=sorted(d.links, key=lambda s: s.name))
        digest, data = message_digest(msg)
        messages[path] = (msg, digest, data)
    root = messages[()]
    tree_children: dict[str, re_pb2.Directory] = {}
    for path in sorted(messages):  # parents first: readers may stream it in order
        if path:
            msg, digest, _ = messages[path]
            tree_children.setdefault(digest.hash, msg)
    tree_digest, tree_data = message_digest(re_pb2.Tree(root=root[0],
                                                        children=list(tree_children.values())))
    small = {(tree_digest.hash, tree_digest.size_bytes): (tree_digest, tree_data)}
    for _, digest, data in messages.values():
        small[(digest.hash, digest.size_bytes)] = (digest, data)
    return tree_digest, tree_data, root[1], small


_EMPTY = Digest(hash=hashlib.sha256(b"").hexdigest(), size_bytes=0)


class _Sent:
    """The blobs (hash, size) one upload has sent or is sending, shared by its threads."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def claim(self, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Of ``keys``, those no thread claimed before (now claimed by the caller)."""
        with self._lock:
            new = {k for k in keys if k not in self._keys}
            self._keys |= new
            return new


def _hash_and_send(cas: Cas, batch: list[tuple[re_pb2.FileNode, bytes]], sent: _Sent) -> None:
    """Hash a batch of file contents into their ``FileNode``s (on an uploader thread:
    hashlib releases the GIL for blobs over 2 KiB, so hashing runs beside the pass over
    the archive), then send those the remote lacks (``_send_missing``); contents another
    batch of this upload already carries are not sent twice."""
    blobs: dict[tuple[str, int], tuple[Digest, bytes]] = {}
    for node, content in batch:
        d = node.digest
        d.hash = hashlib.sha256(content).hexdigest()
        d.size_bytes = len(content)
        blobs.setdefault((d.hash, d.size_bytes), (d, content))
    new = sent.claim(blobs)
    if new:
        _send_missing(cas, {k: v for k, v in blobs.items() if k in new})


def _send_missing(cas: Cas, blobs: dict[tuple[str, int], tuple[Digest, bytes]]) -> None:
    """FindMissingBlobs over ``blobs``, then BatchUpdateBlobs (ByteStream for a big one)
    of the missing ones."""
    missing = {(d.hash, d.size_bytes) for d in cas.find_missing(d for d, _ in blobs.values())}
    if missing:
        cas.upload({k: v for k, v in blobs.items() if k in missing})


def _send_big(cas: Cas, chunks: Iterator[bytes], n: int, sent: _Sent) -> Digest:
    """A file too big for a batch: spooled (memory, then disk) while hashed, then streamed
    over ByteStream unless the remote has it or this tree sent it already."""
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        h = hashlib.sha256()
        for c in chunks:
            h.update(c)
            spool.write(c)
        d = Digest(hash=h.hexdigest(), size_bytes=n)
        if not sent.claim([(d.hash, n)]):
            return d
        if cas.find_missing([d]):
            def content():  # noqa: ANN202 - from the start, on each try
                spool.seek(0)
                return iter(lambda: spool.read(1 << 20), b"")

            cas.write(d, content)
    return d


def _send_archive(cas: Cas, store: Store, tree: str, digest: Digest) -> None:
    """The tree's canonical archive as one blob (``archive_digest``), streamed over
    ByteStream from the local store unless the remote holds it already."""
    if not cas.find_missing([digest]):
        return

    def content() -> Iterator[bytes]:  # from the start, on each try; read on this thread
        with store.objects.open(tree) as blob:  # (the store's index stays on its own)
            while chunk := blob.read(1 << 20):
                yield chunk

    cas.write(digest, content)


# ------------------------------------------------------------------ downloading

def read_tree(cas: Cas, tree_digest: Digest) -> re_pb2.Tree:
    return _parse_tree(tree_digest, cas.read_many([tree_digest])[tree_digest.hash])


def _parse_tree(tree_digest: Digest, data: bytes) -> re_pb2.Tree:
    tree = re_pb2.Tree()
    try:
        tree.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError
        raise RemoteError("remote.bad_answer", f"Tree {tree_digest.hash}: {err}") from None
    return tree


def _entries(tree: re_pb2.Tree) -> list[tuple[str, bytes, "int | bytes", Digest | None]]:
    """The Kata archive's entries of a REAPI Tree, in canonical order (path components
    compared as bytes; a directory's entries right after it)."""
    by_digest = {message_digest(d)[0].hash: d for d in tree.children}
    out: list[tuple[str, bytes, int | bytes, Digest | None]] = []

    def walk(d: re_pb2.Directory, prefix: bytes, depth: int) -> None:
        if depth > 512:
            raise RemoteError("remote.bad_answer", "Tree nests too deep")
        items: list[tuple[bytes, str, object]] = []
        items += [(f.name.encode(), "x" if f.is_executable else "f", f) for f in d.files]
        items += [(s.name.encode(), "l", s) for s in d.symlinks]
        items += [(n.name.encode(), "d", n) for n in d.directories]
        items.sort(key=lambda i: i[0])
        for name, kind, node in items:
            path = prefix + name
            if kind == "d":
                child = by_digest.get(node.digest.hash)  # type: ignore[attr-defined]
                if child is None:
                    raise RemoteError("remote.bad_answer", f"Tree lacks directory {path!r}")
                out.append(("d", path, 0, None))
                walk(child, path + b"/", depth + 1)
            elif kind == "l":
                out.append(("l", path, node.target.encode(), None))  # type: ignore[attr-defined]
            else:
                digest = node.digest  # type: ignore[attr-defined]
                out.append((kind, path, digest.size_bytes, digest))

    walk(tree.root, b"", 0)
    return out


def download_tree(cas: Cas, store: Store, tree: str, tree_digest: Digest, *,
                  workers: int = 4, memo: bool = False) -> None:
    """Bring the Kata tree ``tree`` into the local store from the REAPI ``Tree`` at
    ``tree_digest`` (``memo``: and remember that Tree, see ``upload_tree``). A tree of
    ``PACK_FILES`` small files or more (``packs``) is read as its archive blob when the
    remote holds it (one ByteStream read, checked by ``tree`` itself; not memoised: that proves the
    bytes, not that the Tree message describes them), else file by file. RemoteError
    remote.bad_answer when what arrives re-encodes to another digest (the local store
    then holds no record of it); RemoteError on any remote failure."""
    tree_data = cas.read_many([tree_digest])[tree_digest.hash]
    entries = _entries(_parse_tree(tree_digest, tree_data))
    sizes = [e[2] for e in entries if e[3] is not None]
    if packs(len(sizes), sum(sizes)) and \
            _fetch_archive(cas, store, tree, archive_digest(tree, (e[:3] for e in entries))):
        # no memo: the archive's digest proves the tree, not that the Tree message is its
        # (a record pairing them wrongly would have this host upload that Tree in its name)
        return
    limit = cas.batch_limit
    units: list[list[Digest]] = []  # consecutive small files, fetched together
    unit_of: list[int] = []  # per entry: its unit (-1: none, -2: streamed)
    cur: list[Digest] = []
    cur_size = 0
    for kind, _path, _arg, digest in entries:
        if digest is None or digest.size_bytes == 0:
            unit_of.append(-1)
        elif digest.size_bytes > limit:
            unit_of.append(-2)
        else:
            if cur and (cur_size + digest.size_bytes + 100 > limit
                        or len(cur) >= cas.max_batch_blobs):
                units.append(cur)
                cur, cur_size = [], 0
            cur.append(digest)
            cur_size += digest.size_bytes
            unit_of.append(len(units))
    if cur:
        units.append(cur)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures: dict[int, Future[dict[str, bytes]]] = {}

        def fetch(i: int) -> dict[str, bytes]:
            if i not in futures:
                for j in range(i, min(i + _WINDOW, len(units))):
                    if j not in futures:
                        futures[j] = pool.submit(cas.read_many, units[j])
            return futures[i].result()

        def items() -> Iterator[tuple[str, bytes, "int | bytes", "list[bytes] | Iterator[bytes] | None"]]:
            done = -1
            for (kind, path, arg, digest), unit in zip(entries, unit_of):
                if kind in ("d", "l"):
                    yield kind, path, arg, None
                elif unit == -1:
                    yield kind, path, arg, [b""]
                elif unit == -2:
                    assert digest is not None
                    yield kind, path, arg, cas.read(digest)
                else:
                    assert digest is not None
                    if unit > done:  # drop what the earlier units held
                        for k in [k for k in futures if k < unit]:
                            del futures[k]
                        done = unit
                    yield kind, path, arg, [fetch(unit)[digest.hash]]

        try:
            got = store.put_blob(_Chunks(kata_tree.restream(items())))
        finally:
            for f in futures.values():
                f.cancel()
    if got != tree:
        raise RemoteError("remote.bad_answer", f"the remote's tree re-encodes to {got}, "
                          f"not {tree}")
    if memo:
        _memo_write(memo_path(store, tree), tree_data)


def _fetch_archive(cas: Cas, store: Store, tree: str, digest: Digest) -> bool:
    """Put the tree's archive blob (``archive_digest``) into the local store straight from
    ByteStream; False when the remote does not hold it (the caller fetches the files one
    by one). ``Cas.read`` checks the bytes against ``digest``, whose hash is the Kata tree
    digest itself, and the store hashes them again: RemoteError remote.bad_answer when they
    differ, and nothing of them stays in the store."""
    if cas.find_missing([digest]):
        return False
    try:
        # read ahead on a thread: the stream keeps coming while the store compresses
        got = store.put_blob(_Chunks(_ahead(cas.read(digest), _READ_AHEAD)))
    except RemoteError as err:
        if "NOT_FOUND" in err.message:  # evicted between the two calls
            return False
        raise
    if got != tree:  # unreachable after Cas.read's check; never trust one check alone
        raise RemoteError("remote.bad_answer", f"the remote's archive of {tree} is {got}")
    return True


def _ahead(chunks: Iterator[bytes], depth: int) -> Iterator[bytes]:
    """``chunks``, pulled on a thread (``kata-cas-read``) up to ``depth`` chunks ahead of
    the caller; the thread's error is raised where its chunk would have come. Abandoned
    early (closed, or an error in the caller), the thread is told to stop and not waited
    for: it drops what it holds and closes ``chunks`` when its next chunk (or the call's
    deadline) comes."""
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            put(("error", err))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=pull, name="kata-cas-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "chunk":
                yield value  # type: ignore[misc]
            elif kind == "end":
                thread.join()
                return
            else:
                thread.join()
                raise value  # type: ignore[misc]
    finally:
        stop.set()


class _Chunks(io.RawIOBase):
    """A binary file over an iterator of byte chunks (what ``Store.put_blob`` reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        """Fill ``b`` from as many chunks as fit (small files come one chunk each; a
        view, so a big chunk is not copied again for each piece taken off it)."""
        n, want = 0, len(b)
        while n < want:
            if not self._buf:
                nxt = next(self._it, None)
                if nxt is None:
                    break
                self._buf = memoryview(nxt)
                continue
            take = min(want - n, len(self._buf))
            b[n:n + take] = self._buf[:take]
            self._buf = self._buf[take:]
            n += take
        return n
