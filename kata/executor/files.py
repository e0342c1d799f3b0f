"""Directories on disk <-> REAPI ``Directory`` trees in a CAS, for remote execution.

The REAPI (``build.bazel.remote.execution.v2``, remote_execution.proto) names a blob by
the SHA-256 of its bytes and its size; a directory is a ``Directory`` message (files,
directories and symlinks each sorted by name, serialised deterministically) named by the
digest of those bytes. An output directory travels as one ``Tree`` message (its root
and every directory below it).

- ``Cas``: the few CAS calls both ends need (FindMissingBlobs, BatchUpdateBlobs and
  ByteStream.Write for blobs over ``BATCH_LIMIT``, BatchReadBlobs and ByteStream.Read).
- ``pack_dir``: a directory on disk -> its ``Directory`` messages and file blobs
  (nothing read twice, nothing uploaded that the CAS has: ``Cas.upload``).
- ``materialise``: a ``Directory`` tree -> files on disk (the worker's input root).
- ``sync_dir``: make a directory on disk equal to a tree, rewriting only what differs
  from the tree it was packed as (the client, after the action ran).

Regular files, directories and symlinks travel; any other file type (a FIFO, a socket, a
device) raises ``KataError("remote.unsupported_file")`` naming it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from kata.remote._api.google.bytestream import bytestream_pb2, bytestream_pb2_grpc

BATCH_LIMIT = 1 << 20  # blobs up to 1 MiB go in batches, larger ones through ByteStream
BATCH_TOTAL = 3 << 20  # bytes per BatchUpdateBlobs/BatchReadBlobs call (BuildGrid: ~4 MiB)
CHUNK = 1 << 20  # ByteStream chunk size
FIND_MISSING_BATCH = 2000  # digests per FindMissingBlobs call


def digest_of(data: bytes) -> re_pb2.Digest:
    """The REAPI digest of ``data``: lowercase hex SHA-256 and size in bytes."""
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(digest: re_pb2.Digest) -> str:
    """``hash/size``: a digest as a dict key and in messages."""
    return f"{digest.hash}/{digest.size_bytes}"


def message_bytes(message) -> bytes:  # noqa: ANN001 - a protobuf message
    """The canonical bytes of a message (deterministic serialisation, as REAPI asks)."""
    return message.SerializeToString(deterministic=True)


def channel(url: str) -> grpc.Channel:
    """A channel to ``grpc://HOST:PORT`` (plaintext) or ``grpcs://HOST:PORT`` (TLS with the
    system roots); ``KataError("remote.bad_url")`` for anything else."""
    for scheme, secure in (("grpc://", False), ("grpcs://", True), ("http://", False),
                           ("https://", True)):
        if url.startswith(scheme):
            target = url[len(scheme):].rstrip("/")
            if not target:
                break
            options = [("grpc.max_receive_message_length", 64 << 20),
                       ("grpc.max_send_message_length", 64 << 20)]
            if secure:
                return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
            return grpc.insecure_channel(target, options)
    raise KataError("remote.bad_url", f"{url!r} is not a remote address: use "
                    "grpc://HOST:PORT (or grpcs://HOST:PORT for TLS)", obj=url)


@dataclass(slots=True)
class Packed:
    """A directory packed for the CAS: its root digest, every ``Directory`` message (by
    ``key``), and where each file blob's bytes are (``key`` -> a path on disk)."""

    root: re_pb2.Digest
    directories: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    # path relative to the root -> (key, executable) for files, ("->target", False) symlinks
    entries: dict[str, tuple[str, bool]] = field(default_factory=dict)


def _file_digest(path: str) -> re_pb2.Digest:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return re_pb2.Digest(hash=h.hexdigest(), size_bytes=size)


def pack_dir(root: str | os.PathLike[str], packed: Packed | None = None,
             prefix: str = "") -> Packed:
    """Hash the tree under ``root`` into ``Directory`` messages (nothing is sent).

    Extra top-level entries can be added later with ``add_dir``/``add_file`` on a
    ``Root``; this returns the tree of ``root`` alone."""
    out = packed if packed is not None else Packed(root=re_pb2.Digest())
    out.root = _pack(Path(root), out, prefix)
    return out


def _pack(path: Path, out: Packed, rel: str) -> re_pb2.Digest:
    directory = re_pb2.Directory()
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(entry.path)
            directory.symlinks.add(name=entry.name, target=target)
            out.entries[child] = ("->" + target, False)
        elif stat.S_ISDIR(st.st_mode):
            digest = _pack(Path(entry.path), out, child)
            directory.directories.add(name=entry.name, digest=digest)
        elif stat.S_ISREG(st.st_mode):
            digest = _file_digest(entry.path)
            executable = bool(st.st_mode & 0o111)
            directory.files.add(name=entry.name, digest=digest, is_executable=executable)
            out.files.setdefault(key(digest), entry.path)
            out.entries[child] = (key(digest), executable)
        else:
            raise KataError("remote.unsupported_file", f"{child} is neither a file, a "
                            "directory nor a symlink: it cannot be sent to a remote "
                            "executor", obj=child, exit_code=1)
    data = message_bytes(directory)
    digest = digest_of(data)
    out.directories[key(digest)] = data
    return digest


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


def _digest_from_key(k: str) -> re_pb2.Digest:
    h, size = k.split("/")
    return re_pb2.Digest(hash=h, size_bytes=int(size))


class Cas:
    """The CAS of one REAPI instance: blobs up and down, missing ones only."""

    def __init__(self, chan: grpc.Channel, instance: str = "") -> None:
        self.instance = instance
        self._cas = re_grpc.ContentAddressableStorageStub(chan)
        self._bytestream = bytestream_pb2_grpc.ByteStreamStub(chan)

    def missing(self, digests: Iterable[re_pb2.Digest]) -> list[re_pb2.Digest]:
        """Those of ``digests`` the CAS does not hold (FindMissingBlobs, in batches)."""
        todo = {key(d): d for d in digests if d.size_bytes > 0}
        keys = list(todo)
        found: list[re_pb2.Digest] = []
        for i in range(0, len(keys), FIND_MISSING_BATCH):
            reply = self._cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
                instance_name=self.instance,
                blob_digests=[todo[k] for k in keys[i:i + FIND_MISSING_BATCH]]))
            found.extend(reply.missing_blob_digests)
        return found

    def upload(self, blobs: dict[str, bytes], files: dict[str, str] | None = None) -> int:
        """Send what the CAS lacks of ``blobs`` (key -> bytes) and ``files`` (key -> path);
        return how many blobs were sent."""
        files = files or {}
        wanted = [_digest_from_key(k) for k in (*blobs, *files)]
        missing = self.missing(wanted)
        batch: list[re_pb2.BatchUpdateBlobsRequest.Request] = []
        size = 0
        for digest in missing:
            k = key(digest)
            if digest.size_bytes > BATCH_LIMIT:
                self._write(digest, files[k] if k in files else None, blobs.get(k))
                continue
            data = blobs[k] if k in blobs else Path(files[k]).read_bytes()
            if size + len(data) > BATCH_TOTAL and batch:
                self._batch_update(batch)
                batch, size = [], 0
            batch.append(re_pb2.BatchUpdateBlobsRequest.Request(digest=digest, data=data))
            size += len(data)
        if batch:
            self._batch_update(batch)
        return len(missing)

    def _batch_update(self, batch: list) -> None:  # noqa: ANN001
        reply = self._cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(
            instance_name=self.instance, requests=batch))
        for r in reply.responses:
            if r.status.code != 0:
                raise KataError("remote.upload_failed", f"the CAS refused blob "
                                f"{key(r.digest)}: {r.status.message}", exit_code=1)

    def _write(self, digest: re_pb2.Digest, path: str | None, data: bytes | None) -> None:
        prefix = f"{self.instance}/" if self.instance else ""
        resource = f"{prefix}uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        def chunks() -> Iterator[bytestream_pb2.WriteRequest]:
            offset = 0
            if data is not None:
                source: Iterator[bytes] = (data[i:i + CHUNK] for i in range(0, len(data), CHUNK))
            else:
                assert path is not None
                source = _read_chunks(path)
            for chunk in source:
                last = offset + len(chunk) >= digest.size_bytes
                yield bytestream_pb2.WriteRequest(resource_name=resource if offset == 0 else "",
                                                  write_offset=offset, data=chunk,
                                                  finish_write=last)
                offset += len(chunk)

        self._bytestream.Write(chunks())

    def read(self, digests: Iterable[re_pb2.Digest]) -> dict[str, bytes]:
        """The bytes of each of ``digests`` (key -> bytes); ``remote.blob_missing`` for one
        the CAS does not have."""
        out: dict[str, bytes] = {}
        batch: list[re_pb2.Digest] = []
        size = 0
        for digest in {key(d): d for d in digests}.values():
            if digest.size_bytes == 0:
                out[key(digest)] = b""
            elif digest.size_bytes > BATCH_LIMIT:
                out[key(digest)] = b"".join(self.stream(digest))
            else:
                if size + digest.size_bytes > BATCH_TOTAL and batch:
                    out.update(self._batch_read(batch))
                    batch, size = [], 0
                batch.append(digest)
                size += digest.size_bytes
        if batch:
            out.update(self._batch_read(batch))
        return out

    def _batch_read(self, batch: list[re_pb2.Digest]) -> dict[str, bytes]:
        reply = self._cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
            instance_name=self.instance, digests=batch))
        out = {}
        for r in reply.responses:
            if r.status.code != 0:
                raise KataError("remote.blob_missing", f"the CAS has no blob {key(r.digest)}: "
                                f"{r.status.message}", obj=key(r.digest), exit_code=1)
            out[key(r.digest)] = r.data
        return out

    def stream(self, digest: re_pb2.Digest) -> Iterator[bytes]:
        """A blob's bytes in chunks (ByteStream.Read)."""
        prefix = f"{self.instance}/" if self.instance else ""
        resource = f"{prefix}blobs/{digest.hash}/{digest.size_bytes}"
        for reply in self._bytestream.Read(bytestream_pb2.ReadRequest(resource_name=resource)):
            yield reply.data

    def fetch_to(self, digest: re_pb2.Digest, path: str, executable: bool) -> None:
        """Write one blob to a new file at ``path``."""
        mode = 0o755 if executable else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            if digest.size_bytes > BATCH_LIMIT:
                for chunk in self.stream(digest):
                    f.write(chunk)
            elif digest.size_bytes:
                f.write(self.read([digest])[key(digest)])
        os.chmod(path, mode)

    def directories(self, root: re_pb2.Digest) -> dict[str, re_pb2.Directory]:
        """Every ``Directory`` of the tree under ``root`` (key -> message), level by level."""
        out: dict[str, re_pb2.Directory] = {}
        level = [root]
        while level:
            data = self.read(d for d in level if key(d) not in out)
            nxt = []
            for k, blob in data.items():
                directory = re_pb2.Directory()
                directory.ParseFromString(blob)
                out[k] = directory
                nxt.extend(d.digest for d in directory.directories)
            level = [d for d in nxt if key(d) not in out]
        return out


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


def walk(root: re_pb2.Directory, directories: dict[str, re_pb2.Directory],
         rel: str = "") -> Iterator[tuple[str, str, object]]:
    """Every entry of a tree: (relative path, kind "dir" | "file" | "symlink", node)."""
    for d in root.directories:
        path = f"{rel}/{d.name}" if rel else d.name
        yield path, "dir", d
        child = directories.get(key(d.digest))
        if child is None:
            raise KataError("remote.blob_missing", f"the tree lacks directory {path} "
                            f"({key(d.digest)})", obj=path, exit_code=1)
        yield from walk(child, directories, path)
    for f in root.files:
        yield (f"{rel}/{f.name}" if rel else f.name), "file", f
    for s in root.symlinks:
        yield (f"{rel}/{s.name}" if rel else s.name), "symlink", s


def materialise(cas: Cas, root: re_pb2.Directory, directories: dict[str, re_pb2.Directory],
                dest: str | os.PathLike[str]) -> None:
    """Write the tree ``root`` into the (existing, empty) directory ``dest``."""
    dest = Path(dest)
    files = []
    for rel, kind, node in walk(root, directories):
        target = dest / rel
        if kind == "dir":
            target.mkdir()
        elif kind == "symlink":
            os.symlink(node.target, target)  # type: ignore[attr-defined]
        else:
            files.append((target, node))
    small = [n.digest for _t, n in files if n.digest.size_bytes <= BATCH_LIMIT]  # type: ignore[attr-defined]
    data = cas.read(small)
    for target, node in files:
        digest = node.digest  # type: ignore[attr-defined]
        mode = 0o755 if node.is_executable else 0o644  # type: ignore[attr-defined]
        if key(digest) in data:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data[key(digest)])
            os.chmod(target, mode)
        else:
            cas.fetch_to(digest, str(target), node.is_executable)  # type: ignore[attr-defined]


def sync_dir(cas: Cas, before: Packed, root: re_pb2.Directory,
             directories: dict[str, re_pb2.Directory], dest: str | os.PathLike[str]) -> int:
    """Make ``dest`` (packed as ``before``) hold exactly the tree ``root``: remove what
    the tree no longer has, write what is new or changed. Returns the files written."""
    dest = Path(dest)
    wanted: dict[str, tuple[str, object]] = {}
    for rel, kind, node in walk(root, directories):
        wanted[rel] = (kind, node)
    # remove entries that vanished or changed kind, deepest first
    for rel in sorted(_existing(dest), key=lambda p: p.count("/"), reverse=True):
        now = wanted.get(rel)
        path = dest / rel
        is_dir = path.is_dir() and not path.is_symlink()
        if now is None or (now[0] == "dir") != is_dir:
            if is_dir:
                _rmtree(path)
            else:
                path.unlink()
    written = 0
    small: list[re_pb2.Digest] = []
    todo: list[tuple[Path, object]] = []
    for rel, (kind, node) in sorted(wanted.items(), key=lambda kv: kv[0].count("/")):
        path = dest / rel
        if kind == "dir":
            if not path.is_dir():
                path.mkdir()
            continue
        if kind == "symlink":
            old = before.entries.get(rel)
            if old == ("->" + node.target, False) and path.is_symlink():  # type: ignore[attr-defined]
                continue
            if path.is_symlink() or path.exists():
                path.unlink()
            os.symlink(node.target, path)  # type: ignore[attr-defined]
            continue
        digest = node.digest  # type: ignore[attr-defined]
        old = before.entries.get(rel)
        if old == (key(digest), node.is_executable) and path.is_file() \
                and not path.is_symlink():  # type: ignore[attr-defined]
            continue
        if path.is_symlink() or path.exists():
            path.unlink()
        todo.append((path, node))
        if digest.size_bytes <= BATCH_LIMIT:
            small.append(digest)
    data = cas.read(small)
    for path, node in todo:
        digest = node.digest  # type: ignore[attr-defined]
        mode = 0o755 if node.is_executable else 0o644  # type: ignore[attr-defined]
        if key(digest) in data:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data[key(digest)])
            os.chmod(path, mode)
        else:
            cas.fetch_to(digest, str(path), node.is_executable)  # type: ignore[attr-defined]
        written += 1
    return written


def _existing(dest: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(dest):
        rel = os.path.relpath(dirpath, dest)
        for name in dirnames + filenames:
            yield name if rel == "." else f"{rel}/{name}"


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
