"""A remote step's output while it runs: the Log Stream API (``build.bazel.remote.logstream.v1``).

REAPI's way to watch an action's output live: when a job is assigned, the scheduler calls
``LogStreamService.CreateLogStream`` on a LogStream server and gets two names per stream;
it gives the worker the *write* name (BuildGrid: the ``executeoperationmetadata-bin``
trailing metadata of ``UpdateBotSession``, one entry per lease, keyed by action digest)
and the client the *read* name (``ExecuteOperationMetadata.stdout_stream_name``). The
worker appends the step's output with ``ByteStream.Write`` (``finish_write`` at the end);
the client follows it with ``ByteStream.Read``, which stays open until the stream is
finished. The final ``ActionResult.stdout_digest`` stays the record: the stream only makes
it visible sooner.

Three pieces, one per party:

- :class:`LogStreamService` — the server. BuildGrid 0.4 has only the scheduler's client
  side (its ``logstream: {url: …}`` option); its own LogStream server was split out of the
  package and is not published. ``kata logstream --listen HOST:PORT`` serves this one: in
  memory, a stream is dropped ``keep_finished`` seconds after it is finished, or
  ``keep_idle`` seconds after its last write, and holds at most ``max_bytes`` (later bytes
  are dropped from the stream, never from the ActionResult).
- :class:`LogBuffer` + :func:`write_stream` — the worker: the step's output goes into a
  buffer; once the write name is known a thread sends what is there and what follows.
- :func:`follow` — the client: reads a stream from ``offset`` and hands each chunk on.

Errors: none escape. A LogStream server that is missing or fails costs the live view
only; the step's output still arrives, whole, with its result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from kata.remote._api.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from kata.remote._api.build.bazel.remote.logstream.v1 import (
    remote_logstream_pb2_grpc as ls_grpc,
)
from kata.remote._api.google.bytestream import bytestream_pb2 as bs_pb2
from kata.remote._api.google.bytestream import bytestream_pb2_grpc as bs_grpc

LOG = logging.getLogger("kata.logstream")
CHUNK = 64 * 1024  # bytes per ReadResponse / WriteRequest at most


# -- the server ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Stream:
    name: str
    write_name: str
    data: bytearray = field(default_factory=bytearray)
    finished: bool = False
    touched: float = field(default_factory=time.monotonic)
    dropped: int = 0  # bytes past max_bytes


class LogStreamService(ls_grpc.LogStreamServiceServicer, bs_grpc.ByteStreamServicer):
    """LogStreamService + the ByteStream verbs for its streams (see the module docstring).

    keep_finished / keep_idle: seconds; max_bytes: per stream; max_streams: at once (the
    oldest finished, then the oldest idle, go first)."""

    def __init__(self, *, keep_finished: float = 300.0, keep_idle: float = 3600.0,
                 max_bytes: int = 64 << 20, max_streams: int = 10_000) -> None:
        self.keep_finished, self.keep_idle = keep_finished, keep_idle
        self.max_bytes, self.max_streams = max_bytes, max_streams
        self._streams: dict[str, _Stream] = {}  # by read name
        self._writers: dict[str, _Stream] = {}  # by write name
        self._cond = threading.Condition()

    # LogStreamService
    def CreateLogStream(self, request, context):  # noqa: ANN001, ANN201, N802
        if not request.parent:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "parent is required")
        name = f"{request.parent}/logStreams/{secrets.token_hex(8)}"
        stream = _Stream(name=name, write_name=f"{name}/{secrets.token_hex(16)}")
        with self._cond:
            self._sweep()
            self._streams[name] = stream
            self._writers[stream.write_name] = stream
        return ls_pb2.LogStream(name=name, write_resource_name=stream.write_name)

    def _sweep(self) -> None:
        now = time.monotonic()
        for s in list(self._streams.values()):
            if now - s.touched > (self.keep_finished if s.finished else self.keep_idle):
                self._drop(s)
        while len(self._streams) >= self.max_streams:
            oldest = min(self._streams.values(), key=lambda s: (not s.finished, s.touched))
            self._drop(oldest)

    def _drop(self, s: _Stream) -> None:
        self._streams.pop(s.name, None)
        self._writers.pop(s.write_name, None)
        s.finished = True
        self._cond.notify_all()

    # ByteStream
    def Read(self, request, context):  # noqa: ANN001, ANN201, N802
        with self._cond:
            stream = self._streams.get(request.resource_name)
            if stream is None:
                code = (grpc.StatusCode.INVALID_ARGUMENT if request.resource_name in self._writers
                        else grpc.StatusCode.NOT_FOUND)
                context.abort(code, f"no log stream {request.resource_name!r}")
        offset = request.read_offset
        limit = request.read_limit or None
        sent = 0
        while context.is_active():
            with self._cond:
                while len(stream.data) <= offset and not stream.finished:
                    self._cond.wait(1.0)
                    if not context.is_active():
                        return
                chunk = bytes(stream.data[offset:offset + CHUNK])
                finished = stream.finished
            if limit is not None:
                chunk = chunk[:limit - sent]
            if chunk:
                yield bs_pb2.ReadResponse(data=chunk)
                offset += len(chunk)
                sent += len(chunk)
            elif finished or (limit is not None and sent >= limit):
                return
            if limit is not None and sent >= limit:
                return

    def Write(self, request_iterator, context):  # noqa: ANN001, ANN201, N802
        stream = None
        for req in request_iterator:
            with self._cond:
                if stream is None:
                    stream = self._writers.get(req.resource_name)
                    if stream is None:
                        code = (grpc.StatusCode.INVALID_ARGUMENT
                                if req.resource_name in self._streams
                                else grpc.StatusCode.NOT_FOUND)
                        context.abort(code, "not the write name of a log stream")
                if stream.finished:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the stream is finished")
                size = len(stream.data) + stream.dropped
                if req.write_offset != size:
                    context.abort(grpc.StatusCode.OUT_OF_RANGE, f"write_offset "
                                  f"{req.write_offset}, the stream holds {size} bytes")
                room = max(0, self.max_bytes - len(stream.data))
                stream.data.extend(req.data[:room])
                stream.dropped += max(0, len(req.data) - room)
                stream.touched = time.monotonic()
                if req.finish_write:
                    stream.finished = True
                self._cond.notify_all()
        if stream is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no WriteRequest")
        return bs_pb2.WriteResponse(committed_size=len(stream.data) + stream.dropped)

    def QueryWriteStatus(self, request, context):  # noqa: ANN001, ANN201, N802
        with self._cond:
            stream = self._writers.get(request.resource_name)
            if stream is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "not the write name of a log stream")
            return bs_pb2.QueryWriteStatusResponse(
                committed_size=len(stream.data) + stream.dropped, complete=stream.finished)


def serve(listen: str, *, threads: int = 64, **options: float) -> tuple[grpc.Server, int]:
    """Start a LogStream server on ``listen`` (``HOST:PORT``; port 0 picks one); return it
    (``server.stop(grace)`` ends it) and its port. ``threads`` bounds the open calls (each
    follower holds one while its stream runs). RuntimeError when it cannot bind."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads,
                                                    thread_name_prefix="kata-logstream"))
    service = LogStreamService(**options)  # type: ignore[arg-type]
    ls_grpc.add_LogStreamServiceServicer_to_server(service, server)
    bs_grpc.add_ByteStreamServicer_to_server(service, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    server.start()
    return server, port


# -- the worker ------------------------------------------------------------------------------
class LogBuffer:
    """A step's output as it grows: ``append`` (the runtime's sink), ``close`` (the step
    ended), ``data()`` (all of it, when it stayed in memory), ``digest`` and ``path`` (its
    hash and size; the file holding it once it outgrew memory), ``chunks(offset)`` (what
    is there from ``offset`` and then what follows, until closed), ``discard`` (remove
    the file). Up to ``in_memory`` bytes stay in memory; beyond that the output goes to a
    file in ``spill_dir`` (set before the step runs; default the temp directory), so a
    step that prints GiBs costs the worker no more memory than one that prints little."""

    def __init__(self, in_memory: int = 1 << 20) -> None:
        self.in_memory = in_memory
        self.spill_dir: str | None = None
        self._data = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0
        self._hash = hashlib.sha256()
        self._closed = False
        self._cond = threading.Condition()

    def append(self, data: bytes) -> None:
        with self._cond:
            self._hash.update(data)
            if self._file is None and len(self._data) + len(data) > self.in_memory:
                self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open
                    prefix="kata-log-", dir=self.spill_dir, buffering=0)
                self._file.write(self._data)
                self._data = bytearray()
            if self._file is not None:
                self._file.write(data)
            else:
                self._data.extend(data)
            self._size += len(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def data(self) -> bytes:
        """All of it; only for a buffer that stayed in memory (``path`` is None)."""
        with self._cond:
            assert self._file is None, "the log is in a file: use path"
            return bytes(self._data)

    @property
    def digest(self) -> tuple[str, int]:
        """(sha256 hex, size in bytes) of what was appended so far."""
        with self._cond:
            return self._hash.hexdigest(), self._size

    @property
    def path(self) -> str | None:
        """The file holding the output, or None while it fits in memory."""
        return None if self._file is None else self._file.name

    def discard(self) -> None:
        with self._cond:
            if self._file is not None:
                self._file.close()  # removes it
                self._file = None
            self._data = bytearray()

    def _read(self, offset: int) -> bytes:
        if self._file is None:
            return bytes(self._data[offset:offset + CHUNK])
        return os.pread(self._file.fileno(), CHUNK, offset)

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        while True:
            with self._cond:
                while self._size <= offset and not self._closed:
                    self._cond.wait()
                if self._file is None and self._data == b"" and self._size:
                    return  # discarded
                chunk = self._read(offset)
                closed = self._closed and self._size <= offset + len(chunk)
            if chunk:
                yield chunk
                offset += len(chunk)
            if closed:
                return


def write_stream(channel: grpc.Channel, write_name: str, buffer: LogBuffer,
                 metadata: tuple = ()) -> threading.Thread:
    """Start a thread that writes ``buffer`` to the log stream ``write_name`` (one
    ByteStream.Write, ``finish_write`` once the buffer is closed). Failures are logged and
    dropped: the output still goes up with the result."""
    stub = bs_grpc.ByteStreamStub(channel)

    def requests() -> Iterator[bs_pb2.WriteRequest]:
        offset = 0
        for chunk in buffer.chunks():
            yield bs_pb2.WriteRequest(resource_name=write_name if offset == 0 else "",
                                      write_offset=offset, data=chunk)
            offset += len(chunk)
        yield bs_pb2.WriteRequest(resource_name=write_name if offset == 0 else "",
                                  write_offset=offset, finish_write=True)

    def run() -> None:
        try:
            stub.Write(requests(), metadata=metadata)
        except grpc.RpcError as err:
            LOG.warning("log stream %s: %s: %s (the output goes up with the result only)",
                        write_name.rsplit("/", 1)[0], err.code().name,  # type: ignore[attr-defined]
                        err.details())  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, name="kata-logstream-write", daemon=True)
    thread.start()
    return thread


# -- the client ------------------------------------------------------------------------------
class Follower:
    """Follows one log stream in a thread, handing each chunk to ``deliver`` (called from
    that thread; never after :meth:`stop` returns). ``failed`` is set when the stream
    could not be read (the server lacks it, or is gone)."""

    def __init__(self, channel: grpc.Channel, name: str, deliver: Callable[[bytes], None],
                 metadata: tuple = ()) -> None:
        self.name = name
        self.failed: grpc.StatusCode | None = None
        self._deliver = deliver
        self._lock = threading.Lock()
        self._stopped = False
        self._call = bs_grpc.ByteStreamStub(channel).Read(
            bs_pb2.ReadRequest(resource_name=name), metadata=metadata)
        self._thread = threading.Thread(target=self._run, name="kata-logstream-read",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    if self._stopped:
                        return
                    self._deliver(response.data)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                self.failed = err.code()  # type: ignore[attr-defined]

    def finish(self, wait: float) -> None:
        """Let the stream end by itself for up to ``wait`` seconds, then stop."""
        self._thread.join(wait)
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._call.cancel()
