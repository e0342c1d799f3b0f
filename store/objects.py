"""Immutable blobs named by the sha256 of their uncompressed content.

Layout: ``<store>/objects/sha256/<ab>/<hex>`` holds a zstd frame (content checksum
on) of the blob. A write streams into ``<store>/tmp/`` on the same filesystem,
hashing the uncompressed bytes as they pass, is fsynced, renamed into place and
the directory fsynced. An object already present and intact is never rewritten (its
mtime is refreshed so a concurrent gc sees it as young); one that is damaged (it does
not read back to its digest) is replaced by the copy just written, so rebuilding what
it held heals it. Reads verify the sha256 while
streaming: the frame checksum is a second line of defence, never the only one.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import zstandard

from .errors import StoreError
# the small file helpers live in .files (the cached path writes a run record without
# importing this module, hashlib with it); named here as before
from .files import fsync_dir, os_error, tmp_name, tmp_owner_dead  # noqa: F401

CHUNK = 1 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    """Return the hex part of a ``sha256:<hex>`` digest, or raise ``store.bad_digest``."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise StoreError("store.bad_digest", f"not a sha256 digest: {digest!r}", obj=str(digest))
    return digest[7:]


class _HashingSink:
    """A write-only file that hashes what it is given, then hands it on."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)


class ObjectStore:
    """The blob half of the store: put, open, has, delete, iterate."""

    def __init__(self, root: str, *, level: int = 3, threads: int = -1) -> None:
        self.root = root
        self.objects = os.path.join(root, "objects", "sha256")
        self.tmp = os.path.join(root, "tmp")
        self.level = level
        self.threads = threads

    def path(self, digest: str) -> str:
        hexd = check_digest(digest)
        return os.path.join(self.objects, hexd[:2], hexd)

    def has(self, digest: str) -> bool:
        try:
            os.stat(self.path(digest))
            return True
        except FileNotFoundError:
            return False

    def _compressor(self, size_hint: int) -> "zstandard.ZstdCompressor":
        import zstandard

        threads = self.threads if size_hint < 0 or size_hint > 4 * CHUNK else 0
        return zstandard.ZstdCompressor(level=self.level, write_checksum=True, threads=threads)

    def put_chunks(self, chunks: Iterable[bytes], *, size_hint: int = -1) -> tuple[str, int]:
        """Store the concatenation of ``chunks``; returns (digest, uncompressed size)."""
        import zstandard  # here: reading the index or a record needs no codec

        name = os.path.join(self.tmp, tmp_name("obj"))
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(self.tmp, exist_ok=True)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as err:
            raise os_error(err, "creating a temporary object") from err
        try:
            with open(fd, "wb", buffering=0, closefd=True) as raw:
                out = io.BufferedWriter(raw, CHUNK)
                cctx = self._compressor(size_hint)
                writer = cctx.stream_writer(out, size=size_hint if size_hint >= 0 else -1,
                                            closefd=False, write_size=CHUNK)
                sink = _HashingSink(writer)
                for chunk in chunks:
                    if chunk:
                        sink.write(chunk)
                writer.close()  # ends the one frame (an extra FLUSH_FRAME would add an empty one)
                out.flush()
                os.fsync(raw.fileno())
            digest = "sha256:" + sink.sha.hexdigest()
            self._publish(name, digest)
            return digest, sink.size
        except OSError as err:
            _unlink_quietly(name)
            raise os_error(err, "writing an object") from err
        except zstandard.ZstdError as err:
            _unlink_quietly(name)
            cause = err.__cause__ or err.__context__
            if isinstance(cause, OSError):
                raise os_error(cause, "writing an object") from err
            if "No space left" in str(err):
                raise StoreError("store.disk_full",
                                 "no space left on the store's filesystem while writing an object") from err
            raise StoreError("store.io", f"compressing an object failed: {err}") from err
        except BaseException:
            _unlink_quietly(name)
            raise

    def _publish(self, tmp_name: str, digest: str) -> None:
        final = self.path(digest)
        parent = os.path.dirname(final)
        if os.path.exists(final):
            if self._intact(final, tmp_name, digest):
                _unlink_quietly(tmp_name)
                _touch(final)
                return
            # The stored copy is damaged; the one just written was hashed as it was
            # written: it takes the place (a rebuild heals the object it re-creates).
            try:
                os.replace(tmp_name, final)
            except OSError as err:
                _unlink_quietly(tmp_name)
                raise os_error(err, f"replacing damaged object {digest}", digest) from err
            fsync_dir(parent)
            return
        try:
            os.rename(tmp_name, final)
        except FileNotFoundError:
            os.makedirs(parent, exist_ok=True)
            fsync_dir(os.path.dirname(parent))
            try:
                os.rename(tmp_name, final)
            except OSError:
                if not os.path.exists(final):
                    raise
                _unlink_quietly(tmp_name)
        except OSError:
            # Filesystems without an atomic rename-over (sshfs without posix-rename) refuse
            # when another writer got there first; that copy is identical by construction.
            if not os.path.exists(final):
                raise
            _unlink_quietly(tmp_name)
            return
        fsync_dir(parent)

    def _intact(self, final: str, fresh: str, digest: str) -> bool:
        """Whether the stored ``final`` holds ``digest``'s content: byte-equal to the copy
        just written (the common case: same content, same level), else read back and
        checked against its digest."""
        try:
            if os.path.getsize(final) == os.path.getsize(fresh):
                with open(final, "rb") as a, open(fresh, "rb") as b:
                    while True:
                        x, y = a.read(CHUNK), b.read(CHUNK)
                        if x != y:
                            break
                        if not x:
                            return True
            with self.open(digest) as reader:
                while reader.read(CHUNK):
                    pass
            return True
        except StoreError as err:
            if err.reason in ("store.corrupt_object", "store.missing_object"):
                return False
            raise
        except FileNotFoundError:
            return False

    def put(self, data: bytes | bytearray | memoryview | BinaryIO) -> str:
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data)
            chunks: Iterable[bytes] = (view[i:i + CHUNK] for i in range(0, len(view), CHUNK))
            return self.put_chunks(chunks, size_hint=len(view))[0]
        return self.put_chunks(_read_chunks(data))[0]

    def open(self, digest: str) -> "BlobReader":
        path = self.path(digest)
        try:
            fh = open(path, "rb", buffering=CHUNK)
        except FileNotFoundError:
            raise StoreError("store.missing_object", f"object {digest} is not in the store",
                             obj=digest) from None
        except OSError as err:
            raise os_error(err, f"opening object {digest}", digest) from err
        return BlobReader(fh, digest)

    def delete(self, digest: str) -> bool:
        try:
            os.unlink(self.path(digest))
            return True
        except FileNotFoundError:
            return False

    def iter_objects(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every object present: (digest, stat of its file)."""
        try:
            prefixes = list(os.scandir(self.objects))
        except FileNotFoundError:
            return
        for prefix in prefixes:
            if not prefix.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(prefix.path):
                if len(entry.name) == 64:
                    try:
                        yield "sha256:" + entry.name, entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue


class BlobReader(io.RawIOBase):
    """A read-only stream of a blob's uncompressed content, sha256-checked at the end.

    A mismatch (or a broken zstd frame) raises ``store.corrupt_object`` naming the digest.
    """

    def __init__(self, fh: BinaryIO, digest: str) -> None:
        super().__init__()
        self._fh = fh
        self.digest = digest
        # Across frames: bytes after the first frame are decoded (and so hashed) or fail,
        # never silently ignored.
        import zstandard

        self._zstd_error = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            fh, read_size=CHUNK, closefd=False, read_across_frames=True)
        self._sha = hashlib.sha256()
        self._done = False
        self._error: StoreError | None = None
        self.size = 0

    def readable(self) -> bool:
        return True

    def _corrupt(self, why: str) -> StoreError:
        # Sticky: a reader that read ahead in another thread may meet the damage first,
        # and whoever reads next must still learn of it.
        self._error = StoreError("store.corrupt_object",
                                 f"object {self.digest} is corrupt ({why})", obj=self.digest)
        return self._error

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if self._error is not None:
            raise self._error
        if self._done or size == 0:
            return b""
        try:
            data = self._reader.read(size)
        except self._zstd_error as err:
            raise self._corrupt(f"zstd: {err}") from err
        if data:
            self._sha.update(data)
            self.size += len(data)
            return data
        self._done = True
        if "sha256:" + self._sha.hexdigest() != self.digest:
            raise self._corrupt("content does not match its sha256")
        return b""

    def readinto(self, buf) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._reader.close()
            finally:
                self._fh.close()
        super().close()


def _read_chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
