"""kata.remote.wire: the hand-encoded requests are byte for byte what protobuf encodes."""

from __future__ import annotations

import hashlib
import os

import pytest

from kata.remote import wire
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.google.bytestream import bytestream_pb2 as bs_pb2


def _blob(n: int) -> tuple[str, int, bytes]:
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), n, data


@pytest.mark.parametrize("instance", ["", "main", "ünï/x" * 40])
@pytest.mark.parametrize("sizes", [[], [1], [127, 128, 16_383, 16_384, 300_000, 2_097_152]])
def test_batch_update_request_is_protobufs_own_encoding(instance, sizes):
    blobs = [_blob(n) for n in sizes]
    msg = re_pb2.BatchUpdateBlobsRequest(instance_name=instance)
    for hexd, n, data in blobs:
        one = msg.requests.add()
        one.digest.hash, one.digest.size_bytes, one.data = hexd, n, data
    assert wire.batch_update_request(instance, blobs) == msg.SerializeToString(deterministic=True)
    assert re_pb2.BatchUpdateBlobsRequest.FromString(wire.batch_update_request(instance, blobs)) == msg


@pytest.mark.parametrize("resource", ["", "uploads/u/blobs/" + "a" * 64 + "/5", "x" * 300])
@pytest.mark.parametrize("offset", [0, 1, 127, 128, 1 << 20, (1 << 40) + 3])
@pytest.mark.parametrize("finish", [False, True])
@pytest.mark.parametrize("size", [0, 1, 200, 1 << 20])
def test_write_request_is_protobufs_own_encoding(resource, offset, finish, size):
    data = os.urandom(size)
    msg = bs_pb2.WriteRequest(resource_name=resource, write_offset=offset, finish_write=finish,
                              data=data)
    assert wire.write_request(resource, offset, data, finish) == msg.SerializeToString(deterministic=True)
