"""The Log Stream API pieces (kata.executor.logstream) over real gRPC on loopback: the
server `kata logstream` runs, the worker's writer and the client's follower. End to end
with BuildGrid and workers: tests/test_remote_exec.py."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from kata.executor.logstream import Follower, LogBuffer, serve, write_stream
from kata.remote._api.build.bazel.remote.logstream.v1 import remote_logstream_pb2 as ls_pb2
from kata.remote._api.build.bazel.remote.logstream.v1 import (
    remote_logstream_pb2_grpc as ls_grpc,
)
from kata.remote._api.google.bytestream import bytestream_pb2 as bs_pb2
from kata.remote._api.google.bytestream import bytestream_pb2_grpc as bs_grpc


@pytest.fixture
def server():
    srv, port = serve("127.0.0.1:0", threads=8, keep_finished=60)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        srv.stop(0)


def create(channel, parent="inst/abc_1_stdout"):
    return ls_grpc.LogStreamServiceStub(channel).CreateLogStream(
        ls_pb2.CreateLogStreamRequest(parent=parent), timeout=10)


def test_a_follower_sees_each_chunk_while_the_stream_is_written(server):
    stream = create(server)
    assert stream.name.startswith("inst/abc_1_stdout/logStreams/")
    assert stream.write_resource_name.startswith(stream.name + "/")
    got, arrived = bytearray(), threading.Event()

    def deliver(data: bytes) -> None:
        got.extend(data)
        arrived.set()

    follower = Follower(server, stream.name, deliver)
    buffer = LogBuffer()
    buffer.append(b"first\n")
    writer = write_stream(server, stream.write_resource_name, buffer)
    assert arrived.wait(10), "the first chunk never reached the reader"
    assert bytes(got) == b"first\n"  # while the stream is still open
    buffer.append(b"second\n")
    buffer.close()
    writer.join(10)
    follower.finish(10)
    assert bytes(got) == b"first\nsecond\n" and follower.failed is None
    # a reader that comes late reads the finished stream whole, from any offset
    stub = bs_grpc.ByteStreamStub(server)
    late = b"".join(r.data for r in stub.Read(bs_pb2.ReadRequest(
        resource_name=stream.name, read_offset=6), timeout=10))
    assert late == b"second\n"
    status = stub.QueryWriteStatus(bs_pb2.QueryWriteStatusRequest(
        resource_name=stream.write_resource_name), timeout=10)
    assert status.committed_size == 13 and status.complete


def test_the_two_names_are_not_interchangeable(server):
    stream = create(server)
    stub = bs_grpc.ByteStreamStub(server)
    with pytest.raises(grpc.RpcError) as err:  # reading the write name
        list(stub.Read(bs_pb2.ReadRequest(resource_name=stream.write_resource_name),
                       timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # writing to the read name
        stub.Write(iter([bs_pb2.WriteRequest(resource_name=stream.name, data=b"x",
                                             finish_write=True)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # a name nobody created
        list(stub.Read(bs_pb2.ReadRequest(resource_name="nope/logStreams/1"), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_finished_stream_takes_no_more_bytes(server):
    stream = create(server)
    stub = bs_grpc.ByteStreamStub(server)
    stub.Write(iter([bs_pb2.WriteRequest(resource_name=stream.write_resource_name,
                                         data=b"all", finish_write=True)]), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(iter([bs_pb2.WriteRequest(resource_name=stream.write_resource_name,
                                             write_offset=3, data=b"more")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_stream_keeps_at_most_max_bytes():
    srv, port = serve("127.0.0.1:0", threads=4, max_bytes=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stream = create(channel)
        buffer = LogBuffer()
        buffer.append(b"0123456789")
        buffer.close()
        write_stream(channel, stream.write_resource_name, buffer).join(10)
        data = b"".join(r.data for r in bs_grpc.ByteStreamStub(channel).Read(
            bs_pb2.ReadRequest(resource_name=stream.name), timeout=10))
        assert data == b"0123"
    finally:
        channel.close()
        srv.stop(0)


def test_a_follower_of_a_server_that_is_not_there_fails_quietly():
    from support.registry import free_port

    channel = grpc.insecure_channel(f"127.0.0.1:{free_port()}")
    follower = Follower(channel, "x/logStreams/1", lambda data: None)
    follower.finish(10)
    assert follower.failed == grpc.StatusCode.UNAVAILABLE
    channel.close()


def _op(stream: str, worker: str, stage: int = 3):
    from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from kata.remote._api.google.longrunning import operations_pb2

    meta = re_pb2.ExecuteOperationMetadata(stage=stage, stdout_stream_name=stream)
    meta.partial_execution_metadata.worker = worker
    op = operations_pb2.Operation(name="op")
    op.metadata.Pack(meta)
    return op


def _write(channel, stream, data: bytes) -> None:
    buffer = LogBuffer()
    buffer.append(data)
    buffer.close()
    write_stream(channel, stream.write_resource_name, buffer).join(10)


def _record(data: bytes):  # noqa: ANN202
    """(digest, bytes) of a result's stdout blob, as _LiveLog.finish takes it."""
    from kata.executor import files

    return files.digest_of(data), data


def test_the_client_passes_on_what_streamed_then_the_rest_of_the_record(server):
    """kata.executor.client._LiveLog over a real stream: a line sink gets each line once;
    a stream that moves to another worker says so; a record that disagrees wins."""
    from types import SimpleNamespace

    from kata.executor.client import _LiveLog

    runtime = SimpleNamespace(_logs=SimpleNamespace(channel=server, metadata=()),
                              streaming=True)
    lines: list[bytes] = []
    live = _LiveLog(runtime, lambda stream, line: lines.append(line))  # type: ignore[arg-type]
    first, second = create(server), create(server)
    live.watch(_op(first.name, "w1"))
    _write(server, first, b"one\ntw")  # the attempt on w1 dies mid-line
    live.follower.finish(10)  # type: ignore[union-attr]
    live.watch(_op(second.name, "w2"))
    _write(server, second, b"one\n")  # w2 streams part of its output
    live.finish("w2", *_record(b"one\ntwo\n"))  # its record has the rest
    assert lines == [b"kata: ran on worker w1", b"one", b"tw",
                     b"kata: worker w1 lost the step; the scheduler gave it to worker w2, "
                     b"whose output follows", b"one", b"two"]
    lines.clear()
    third = create(server)
    live = _LiveLog(runtime, lambda stream, line: lines.append(line))  # type: ignore[arg-type]
    live.watch(_op(third.name, "w1"))
    _write(server, third, b"not what ran\n")
    live.finish("w1", *_record(b"what ran\n"))
    assert lines == [b"kata: ran on worker w1", b"not what ran",
                     b"kata: the live output differs from the worker's record of it; the "
                     b"record follows", b"what ran"]
    # the scheduler retried the step on the same worker (its first attempt failed there):
    # nobody "lost" it to anyone
    lines.clear()
    fourth, fifth = create(server), create(server)
    live = _LiveLog(runtime, lambda stream, line: lines.append(line))  # type: ignore[arg-type]
    live.watch(_op(fourth.name, "w2"))
    live.watch(_op(fifth.name, "w2"))
    _write(server, fifth, b"again\n")
    live.finish("w2", *_record(b"again\n"))
    assert lines == [b"kata: ran on worker w2",
                     b"kata: the scheduler gave the step to worker w2 again, whose output "
                     b"follows", b"again"]


@pytest.mark.parametrize("listen, says", [
    ("bad", "is not HOST:PORT"),
    ("127.0.0.1:99999", "is not HOST:PORT"),
    ("nohost.invalid:1", "cannot listen on nohost.invalid:1"),
    ("taken", "Address already in use"),
])
def test_a_bad_listen_address_is_exit_2_with_the_reason_and_no_grpc_log(listen, says):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if listen == "taken":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-m", "kata", "logstream", "--listen", listen],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "add_port" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_client_reads_a_long_record_in_chunks_and_checks_what_streamed():
    """A record over ``LOG_IN_MEMORY`` is read from the CAS chunk by chunk (a step may print
    GiBs; tests/test_remote_exec.py measures that end to end): what streamed is checked
    against the record's first bytes across chunk boundaries, and a read that breaks
    (RemoteError; RemoteRuntime._call calls finish again) repeats no line."""
    from types import SimpleNamespace

    from kata.executor.client import _LiveLog
    from kata.remote.cas import RemoteError

    record = b"one\ntwo\nthree\nfour\n"
    broken = [True]

    def read(digest):  # noqa: ANN001, ANN202 - a CAS that breaks once, mid-blob
        for i in range(0, len(record), 3):
            if i >= 9 and broken[0]:
                broken[0] = False
                raise RemoteError("remote.unavailable", "the CAS went away")
            yield record[i:i + 3]

    runtime = SimpleNamespace(cas=SimpleNamespace(read=read), streaming=True)
    for streamed, expect in [
            (b"one\ntw", [b"one", b"two", b"three", b"four"]),
            (b"one\ntwX", [b"one", b"twX", b"kata: the live output differs from the worker's "
                           b"record of it; the record follows", b"one", b"two", b"three",
                           b"four"])]:
        lines: list[bytes] = []
        live = _LiveLog(runtime, lambda stream, line: lines.append(line))  # type: ignore[arg-type]
        live.worker = "w1"
        live.follower = SimpleNamespace(finish=lambda wait: None, stop=lambda: None)
        live._deliver(streamed)
        broken[0] = True
        with pytest.raises(RemoteError):
            live.finish("w1", _record(record)[0], None)
        live.finish("w1", _record(record)[0], None)  # the retry
        assert lines == expect, lines


def test_a_log_buffer_moves_to_a_file_past_its_memory_and_reads_the_same(tmp_path):
    """The worker's LogBuffer keeps ``in_memory`` bytes at most: past that its output is in a
    file in ``spill_dir`` (the lease's directory), read back whole by a stream that began
    before the move, hashed as it came, removed by ``discard``."""
    import hashlib

    buffer = LogBuffer(in_memory=10)
    buffer.spill_dir = str(tmp_path)
    reader = buffer.chunks()
    buffer.append(b"0123456")
    assert next(reader) == b"0123456" and buffer.path is None
    buffer.append(b"789abcdef")
    assert buffer.path is not None and buffer.path.startswith(str(tmp_path))
    buffer.close()
    assert b"".join(reader) == b"789abcdef"
    assert b"".join(buffer.chunks(3)) == b"3456789abcdef"
    assert buffer.digest == (hashlib.sha256(b"0123456789abcdef").hexdigest(), 16)
    path = buffer.path
    buffer.discard()
    assert not Path(path).exists() and list(buffer.chunks()) == []
