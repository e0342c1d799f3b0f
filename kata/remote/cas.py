"""A Remote Execution API client for the blob side: Capabilities, ContentAddressableStorage
and ByteStream (REAPI v2, ``build.bazel.remote.execution.v2``; ``google.bytestream``).

    with connect(config) as remote:               # RemoteConfig -> Remote (one gRPC channel)
        remote.cas.find_missing([digest, ...])    # -> the digests the server lacks
        remote.cas.upload({digest: bytes})        # batched under max_batch_total_size_bytes
        remote.cas.write(digest, chunks)          # ByteStream, for a blob too big to batch
        remote.cas.read_many([digest, ...])       # -> {hash: bytes}, batched, verified
        remote.cas.read(digest)                   # ByteStream chunks, verified at the end

Blobs are named as REAPI says: ``Digest(hash=<sha256 hex of the content>, size_bytes)``. A
Kata blob digest is ``sha256:<hex>`` of the same (uncompressed) content, so a Kata blob and
its REAPI blob share the hash. Every read is checked against its digest; a server answering
with other bytes is an error, never a hit.

Errors: every failure of the remote (unreachable, deadline, refused, a bad answer) is a
:class:`RemoteError`; callers degrade to the local store (``kata.remote.cache``).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from kata.remote._api.google.bytestream import bytestream_pb2 as bs_pb2
from kata.remote._api.google.bytestream import bytestream_pb2_grpc as bs_grpc
from kata.remote.config import RemoteConfig

Digest = re_pb2.Digest
DEFAULT_BATCH = 4 << 20          # REAPI's recommended default when the server names none
_BATCH_OVERHEAD = 64 << 10       # room for the request's own fields in one batch
_PER_BLOB = 100                  # bytes of request framing per blob in a batch
_FIND_CHUNK = 10_000             # digests per FindMissingBlobs call
#: blobs per BatchUpdateBlobs or BatchReadBlobs call at most, besides the server's byte
#: limit: BuildGrid 0.4.4 spends ~25-40% less CPU taking in 50,000 small blobs 500 a call
#: than ~1,000 a call (4 MiB requests), sequentially or 4 calls at once, and ~10-20% less
#: giving them back (docs/remote.md, "Where the time goes"); 500 is its own
#: MAX_REQUEST_COUNT, the batch its own client sends
MAX_BATCH_BLOBS = 500
#: ByteStream.Write message payload (128 KiB measured: cheaper for BuildGrid 0.4.4 into an
#: empty server, dearer after a tree's batches, docs/remote.md)
_STREAM_CHUNK = 1 << 20
_BYTES_PER_SECOND = 20 << 20     # an upload or download gets timeout + size / this
#: a ByteStream transfer's whole deadline: timeout + size / this; within it, the call is
#: cut when it moves no byte for ``timeout`` (``_Progress``): a slow link that keeps
#: moving carries a big blob, a stalled one costs ``timeout``
_SLOWEST_LINK = 256 << 10
MAX_MESSAGE = 64 << 20
_BUSY_TRIES = 8                  # RESOURCE_EXHAUSTED (a server at its concurrent-call limit,
_BUSY_WAIT = 0.02                # as BuildGrid answers past its thread pool): back off, retry
T = TypeVar("T")


class RemoteError(Exception):
    """The remote failed (``reason``: remote.unavailable | remote.deadline | remote.refused |
    remote.bad_answer | remote.unsupported) — the caller keeps going on the local store."""

    def __init__(self, reason: str, message: str, *, code: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code  # the gRPC status code's name, when a call failed with one
        # what ``message`` ends with, in parentheses, to say what the failure most often
        # means (a TLS mismatch, an unknown instance); "" none. ``bare`` is the rest
        self.hint = hint

    @property
    def bare(self) -> str:
        """``message`` without its hint (for ``kata doctor``, whose fix line says it)."""
        return self.message.removesuffix(f" ({self.hint})") if self.hint else self.message


def wrap(err: grpc.RpcError, what: str) -> RemoteError:
    """A gRPC failure as a RemoteError naming the call."""
    code = err.code() if hasattr(err, "code") else None
    detail = err.details() if hasattr(err, "details") else str(err)
    reason = {grpc.StatusCode.UNAVAILABLE: "remote.unavailable",
              grpc.StatusCode.DEADLINE_EXCEEDED: "remote.deadline"}.get(code, "remote.refused")
    name = code.name if code is not None else "error"
    hint = ""
    if "handshake failed" in (detail or "").lower():
        # gRPC's own text ends in OpenSSL's error stack; say what it most often means
        hint = ("the TLS handshake failed: if the server speaks plaintext, use grpc:// "
                "instead of grpcs://; otherwise check its certificate against tls.ca")
    elif code == grpc.StatusCode.UNAVAILABLE and "socket closed" in (detail or "").lower():
        # a down server refuses; one that takes a plaintext connection and drops it at once
        # is most often a TLS server
        hint = ("the server closed the connection: if it speaks TLS, use grpcs:// instead "
                "of grpc://")
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        hint = ("the server refused the credentials: set remote.token_file to a token it "
                "accepts (BuildGrid's jwt: signed with its secret, not expired)")
    elif code == grpc.StatusCode.INVALID_ARGUMENT and "instance" in (detail or "").lower():
        hint = ("the server has no such instance: name one it serves with "
                "--remote-instance or remote.instance")
    message = f"{what}: {name}: {detail}" + (f" ({hint})" if hint else "")
    return RemoteError(reason, message, code=name, hint=hint)


def evicted(err: RemoteError) -> bool:
    """Whether ``err`` says the remote no longer holds a blob that an entry names
    (NOT_FOUND from BatchReadBlobs, ByteStream.Read or GetTree: an LRU evicted it, a disk
    CAS lost it). That one entry is then a miss; the remote itself is fine and stays in
    use (docs/remote.md "When the remote fails")."""
    return err.code == "NOT_FOUND"


def busy(err: grpc.RpcError) -> bool:
    """The server is at its limit of concurrent calls (worth a retry, not a failure)."""
    return hasattr(err, "code") and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def retrying(call: Callable[[], T], what: str) -> T:
    """``call()``, retried with exponential backoff (20 ms .. 2.5 s) while the server
    says RESOURCE_EXHAUSTED; any other gRPC failure is a RemoteError at once."""
    for attempt in range(_BUSY_TRIES):
        try:
            return call()
        except grpc.RpcError as err:
            if not busy(err) or attempt == _BUSY_TRIES - 1:
                raise wrap(err, what) from None
            time.sleep(_BUSY_WAIT * (2 ** attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def digest_of(data: bytes) -> Digest:
    """The REAPI digest of ``data`` (sha256)."""
    return Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def from_kata(digest: str, size: int) -> Digest:
    """``sha256:<hex>`` (a Kata blob digest) and its size -> a REAPI Digest."""
    algo, _, hexd = digest.partition(":")
    assert algo == "sha256" and len(hexd) == 64, digest
    return Digest(hash=hexd, size_bytes=size)


def to_kata(digest: Digest) -> str:
    return "sha256:" + digest.hash


def message_digest(message: object) -> tuple[Digest, bytes]:
    """A protobuf message's canonical bytes (fields in number order, REAPI's rule) and
    their digest."""
    data = message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return digest_of(data), data


def _key(d: Digest) -> tuple[str, int]:
    return d.hash, d.size_bytes


def read_token(config: RemoteConfig) -> str:
    """The bearer token from ``config.token_file`` ("" without one). KataError
    remote.token_unreadable (exit 2) when the file cannot be read or is empty."""
    if config.token_file is None:
        return ""
    try:
        token = config.token_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise KataError("remote.token_unreadable", f"remote token file {config.token_file}: "
                        f"{getattr(err, 'strerror', None) or err}",
                        obj=str(config.token_file)) from None
    if not token:
        raise KataError("remote.token_unreadable", f"remote token file {config.token_file} "
                        "is empty", obj=str(config.token_file))
    return token


def open_channel(config: RemoteConfig) -> grpc.Channel:
    """A gRPC channel to ``config.target``: TLS for grpcs (the system's roots unless
    ``ca``; a client certificate with ``cert``/``key``). KataError remote.tls_unreadable
    (exit 2) when a PEM file cannot be read."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE),
               ("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.enable_retries", 0),
               # a channel of its own connections: one opened to replace a connection
               # gone silent (kata.executor.client) must not be handed that connection
               ("grpc.use_local_subchannel_pool", 1)]
    if not config.tls:
        return grpc.insecure_channel(config.target, options=options)

    def pem(path: object) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()  # type: ignore[attr-defined]
        except OSError as err:
            raise KataError("remote.tls_unreadable", f"remote TLS file {path}: "
                            f"{err.strerror or err}", obj=str(path)) from None

    creds = grpc.ssl_channel_credentials(root_certificates=pem(config.ca),
                                         private_key=pem(config.key),
                                         certificate_chain=pem(config.cert))
    return grpc.secure_channel(config.target, creds, options=options)


def tree_directories(root: Digest, lookup: Callable[[str], "re_pb2.Directory | None"],
                     ) -> tuple[dict[str, re_pb2.Directory], str]:
    """Every ``Directory`` of the tree under ``root``, as (hash -> message, ""), each
    found by ``lookup(hash)`` (None: not there), or ({}, the hash of the first one
    ``lookup`` lacks). The empty directory needs no lookup: its blob is empty, and REAPI
    servers need not send it."""
    out: dict[str, re_pb2.Directory] = {}
    todo = [root]
    while todo:
        digest = todo.pop()
        if digest.hash in out:
            continue
        d = lookup(digest.hash) if digest.size_bytes else re_pb2.Directory()
        if d is None:
            return {}, digest.hash
        out[digest.hash] = d
        todo.extend(c.digest for c in d.directories)
    return out, ""


class Cas:
    """ContentAddressableStorage + ByteStream + Capabilities for one instance."""

    def __init__(self, channel: grpc.Channel, *, instance: str, metadata: tuple = (),
                 timeout: float) -> None:
        self.instance = instance
        self.timeout = timeout
        self._md = metadata
        self._cas = re_grpc.ContentAddressableStorageStub(channel)
        self._caps = re_grpc.CapabilitiesStub(channel)
        self._bs = bs_grpc.ByteStreamStub(channel)
        self.max_batch = DEFAULT_BATCH
        self.max_batch_blobs = MAX_BATCH_BLOBS

    def _deadline(self, size: int = 0) -> float:
        return self.timeout + size / _BYTES_PER_SECOND

    def _stream_deadline(self, size: int) -> float:
        return self.timeout + size / _SLOWEST_LINK

    def capabilities(self, *, timeout: float | None = None) -> re_pb2.ServerCapabilities:
        """The server's capabilities; sets ``max_batch`` from ``max_batch_total_size_bytes``.
        ``timeout``: seconds (default: the per-call timeout). RemoteError remote.unsupported
        when the server does not hash with SHA-256."""
        caps = retrying(lambda: self._caps.GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=self.instance),
            timeout=self._deadline() if timeout is None else timeout, metadata=self._md),
            "GetCapabilities")
        functions = set(caps.cache_capabilities.digest_functions)
        if functions and re_pb2.DigestFunction.SHA256 not in functions:
            raise RemoteError("remote.unsupported", "the remote does not use SHA-256 digests")
        limit = caps.cache_capabilities.max_batch_total_size_bytes
        self.max_batch = min(limit, MAX_MESSAGE) if limit > 0 else DEFAULT_BATCH
        return caps

    @property
    def batch_limit(self) -> int:
        """The largest blob sent or read in a batch; bigger ones go over ByteStream."""
        return max(self.max_batch - _BATCH_OVERHEAD, 1)

    # -- what is there -------------------------------------------------------------

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        """Of ``digests`` (duplicates allowed), those the server does not have."""
        unique = {_key(d): d for d in digests if d.size_bytes > 0}
        items = list(unique.values())
        missing: list[Digest] = []
        for i in range(0, len(items), _FIND_CHUNK):
            req = re_pb2.FindMissingBlobsRequest(instance_name=self.instance,
                                                 blob_digests=items[i:i + _FIND_CHUNK])
            resp = retrying(lambda: self._cas.FindMissingBlobs(
                req, timeout=self._deadline(), metadata=self._md), "FindMissingBlobs")
            missing.extend(resp.missing_blob_digests)
        return missing

    # -- writing -------------------------------------------------------------------

    def upload(self, blobs: Mapping[tuple[str, int], tuple[Digest, bytes]]) -> None:
        """Store ``blobs`` ((hash, size) -> (digest, content)): the small ones in batches
        of at most ``max_batch`` bytes, the rest over ByteStream."""
        req = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance)
        size = 0
        for digest, data in blobs.values():
            if digest.size_bytes == 0:
                continue  # the empty blob is always there (REAPI)
            if digest.size_bytes > self.batch_limit:
                self.write(digest, lambda data=data: iter((data,)))
                continue
            if req.requests and (size + len(data) + _PER_BLOB > self.batch_limit
                                 or len(req.requests) >= self.max_batch_blobs):
                self._batch_update(req, size)
                req, size = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance), 0
            # filled in place: a Request built apart is copied into the batch again
            # (2.6x the CPU per blob with upb)
            one = req.requests.add()
            one.digest.hash = digest.hash
            one.digest.size_bytes = digest.size_bytes
            one.data = data
            size += len(data) + _PER_BLOB
        if req.requests:
            self._batch_update(req, size)

    def _batch_update(self, req: re_pb2.BatchUpdateBlobsRequest, size: int) -> None:
        resp = retrying(lambda: self._cas.BatchUpdateBlobs(
            req, timeout=self._deadline(size), metadata=self._md), "BatchUpdateBlobs")
        for r in resp.responses:
            if r.status.code != 0:
                raise RemoteError("remote.refused", f"BatchUpdateBlobs {r.digest.hash}: "
                                  f"code {r.status.code}: {r.status.message}")

    def write(self, digest: Digest, chunks: Callable[[], Iterator[bytes]]) -> None:
        """Stream one blob over ByteStream.Write; ``chunks()`` gives its content from the
        start (called again when a busy server makes the write start over)."""
        resource = (f"{self.instance}/" if self.instance else "") + \
            f"uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

        def requests() -> Iterator[bs_pb2.WriteRequest]:
            step = _STREAM_CHUNK
            offset = 0
            pending = b""  # under one message's worth, carried to the next chunk
            for chunk in chunks():
                if pending:
                    chunk = pending + chunk
                end = len(chunk) - len(chunk) % step  # no piece copied twice (a remainder
                for start in range(0, end, step):    # sliced off again per piece was)
                    yield bs_pb2.WriteRequest(resource_name="" if offset else resource,
                                              write_offset=offset, data=chunk[start:start + step])
                    offset += step
                pending = chunk[end:]
            yield bs_pb2.WriteRequest(resource_name="" if offset else resource,
                                      write_offset=offset, data=pending, finish_write=True)

        def call() -> bs_pb2.WriteResponse:
            progress = _Progress(self.timeout)
            future = self._bs.Write.future(progress.through(requests()),
                                           timeout=self._stream_deadline(digest.size_bytes),
                                           metadata=self._md)
            return progress.watch(future, lambda: future.result())

        resp = retrying(call, "ByteStream.Write")
        if resp.committed_size not in (digest.size_bytes, -1):
            raise RemoteError("remote.bad_answer", f"ByteStream.Write {digest.hash}: committed "
                              f"{resp.committed_size} of {digest.size_bytes} bytes")

    # -- reading -------------------------------------------------------------------

    def read_many(self, digests: Iterable[Digest]) -> dict[str, bytes]:
        """The contents of ``digests`` (hash -> bytes), each checked against its digest:
        batched, and over ByteStream for the big ones. RemoteError remote.bad_answer when a
        blob is missing or does not match."""
        out: dict[str, bytes] = {}
        batch: list[Digest] = []
        size = 0
        wanted = {_key(d): d for d in digests}
        for d in wanted.values():
            if d.size_bytes == 0:
                out[d.hash] = b""
                continue
            if d.size_bytes > self.batch_limit:
                out[d.hash] = b"".join(self.read(d))
                continue
            if batch and (size + d.size_bytes + _PER_BLOB > self.batch_limit
                          or len(batch) >= self.max_batch_blobs):
                out.update(self._batch_read(batch, size))
                batch, size = [], 0
            batch.append(d)
            size += d.size_bytes + _PER_BLOB
        if batch:
            out.update(self._batch_read(batch, size))
        sizes = {d.hash: d.size_bytes for d in wanted.values()}
        for hexd, data in out.items():
            # an empty answer for a blob that is not (a disk CAS truncated by a power loss)
            # is refused too, as ByteStream reads refuse a short one
            if len(data) != sizes.get(hexd) or (data and hashlib.sha256(data).hexdigest() != hexd):
                raise RemoteError("remote.bad_answer", f"blob {hexd} does not match its digest")
        return out

    def _batch_read(self, digests: list[Digest], size: int) -> dict[str, bytes]:
        req = re_pb2.BatchReadBlobsRequest(instance_name=self.instance, digests=digests)
        resp = retrying(lambda: self._cas.BatchReadBlobs(
            req, timeout=self._deadline(size), metadata=self._md), "BatchReadBlobs")
        out = {}
        for r in resp.responses:
            if r.status.code != 0:
                name = next((c.name for c in grpc.StatusCode if c.value[0] == r.status.code),
                            f"code {r.status.code}")
                why = " (the remote no longer holds it: evicted, or lost since its entry was " \
                      "written)" if r.status.code == grpc.StatusCode.NOT_FOUND.value[0] else ""
                raise RemoteError("remote.bad_answer", f"BatchReadBlobs {r.digest.hash}: "
                                  f"{name}: {r.status.message}".rstrip(": ") + why,
                                  code=name if why else "")
            out[r.digest.hash] = r.data
        if len(out) != len(digests):
            raise RemoteError("remote.bad_answer", "BatchReadBlobs answered fewer blobs")
        return out

    def get_tree(self, root: Digest) -> dict[str, re_pb2.Directory]:
        """Every ``Directory`` of the tree under the ``Directory`` ``root`` (hash ->
        message) in one streamed GetTree call, each checked against the digest its parent
        names (RemoteError remote.bad_answer when one is missing or does not match;
        remote.unsupported from a server without GetTree)."""
        req = re_pb2.GetTreeRequest(instance_name=self.instance, root_digest=root)

        def call() -> list[re_pb2.Directory]:
            return [d for resp in self._cas.GetTree(req, timeout=self._deadline(),
                                                    metadata=self._md)
                    for d in resp.directories]

        try:
            got = retrying(call, "GetTree")
        except RemoteError as err:
            if "UNIMPLEMENTED" in err.message:
                raise RemoteError("remote.unsupported", err.message) from None
            raise
        by_hash = {hashlib.sha256(d.SerializeToString(deterministic=True)).hexdigest(): d
                   for d in got}
        out, lacking = tree_directories(root, by_hash.get)
        if lacking:
            raise RemoteError("remote.bad_answer", f"GetTree lacks directory {lacking}")
        return out

    def read(self, digest: Digest) -> Iterator[bytes]:
        """One blob over ByteStream.Read, as chunks; checked against its digest when the
        last chunk has come (RemoteError remote.bad_answer)."""
        resource = (f"{self.instance}/" if self.instance else "") + \
            f"blobs/{digest.hash}/{digest.size_bytes}"
        h = hashlib.sha256()
        got = 0
        for attempt in range(_BUSY_TRIES):
            progress = _Progress(self.timeout)
            call = self._bs.Read(bs_pb2.ReadRequest(resource_name=resource),
                                 timeout=self._stream_deadline(digest.size_bytes),
                                 metadata=self._md)
            progress.start(call)
            try:
                for resp in call:
                    progress.moved()
                    h.update(resp.data)
                    got += len(resp.data)
                    yield resp.data
                break
            except grpc.RpcError as err:
                if progress.stalled:
                    raise progress.error("ByteStream.Read") from None
                if got or not busy(err) or attempt == _BUSY_TRIES - 1:
                    raise wrap(err, "ByteStream.Read") from None
                time.sleep(_BUSY_WAIT * (2 ** attempt))
            finally:
                progress.stop()
        if got != digest.size_bytes or h.hexdigest() != digest.hash:
            raise RemoteError("remote.bad_answer", f"blob {digest.hash} does not match its digest")


class _Progress:
    """Cuts a streaming call that moves nothing for ``idle`` seconds (a stalled link, a
    hung server: the call's whole deadline is left long for a slow link that moves)."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.last = time.monotonic()
        self.stalled = False
        self._done = threading.Event()

    def moved(self) -> None:
        self.last = time.monotonic()

    def through(self, messages: Iterator[T]) -> Iterator[T]:
        """``messages``, marking progress as gRPC takes each (it takes them as the link's
        flow control lets it)."""
        for m in messages:
            self.moved()
            yield m

    def start(self, call) -> None:  # noqa: ANN001 - a grpc.Call / Future
        def watch() -> None:
            while not self._done.wait(min(0.1, self.idle)):
                if time.monotonic() - self.last > self.idle:
                    self.stalled = True
                    call.cancel()
                    return
        threading.Thread(target=watch, daemon=True).start()

    def stop(self) -> None:
        self._done.set()

    def watch(self, call, result: Callable[[], T]) -> T:  # noqa: ANN001
        """``result()`` of ``call``, cut when it stalls (RemoteError remote.deadline)."""
        self.start(call)
        try:
            return result()
        except grpc.RpcError:
            if self.stalled:
                raise self.error("ByteStream.Write") from None
            raise
        except grpc.FutureCancelledError:
            raise self.error("ByteStream.Write") from None
        finally:
            self.stop()

    def error(self, what: str) -> RemoteError:
        return RemoteError("remote.deadline", f"{what}: DEADLINE_EXCEEDED: no byte moved for "
                           f"{self.idle:g}s", code="DEADLINE_EXCEEDED")


@dataclass
class Remote:
    """One connection: the channel, the CAS side and the action cache (``ac``)."""

    config: RemoteConfig
    channel: grpc.Channel
    cas: Cas
    ac: re_grpc.ActionCacheStub
    metadata: tuple

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(config: RemoteConfig) -> Remote:
    """A connection to ``config`` (lazy: nothing is sent until the first call). KataError
    (exit 2) for an unreadable token or TLS file."""
    token = read_token(config)
    metadata: tuple = (("authorization", f"Bearer {token}"),) if token else ()
    channel = open_channel(config)
    cas = Cas(channel, instance=config.instance, metadata=metadata, timeout=config.timeout)
    return Remote(config=config, channel=channel, cas=cas,
                  ac=re_grpc.ActionCacheStub(channel), metadata=metadata)
