"""The server's floor for moving one tree through BuildGrid (bench/remote_bench.py, part 2).

What the fastest possible client of the same protocol would cost: every request Kata's
upload of the tree sends (FindMissingBlobs over each file's digest, BatchUpdateBlobs of
every file, the packed archive over ByteStream, the ``Directory`` and ``Tree`` blobs) is
built and serialised *before* the clock starts, then sent as raw bytes on one thread, one
call after another, into a fresh in-memory BuildGrid; then host B's side, one ByteStream
read of the archive (bytes dropped: no store). The client does almost nothing while the
clock runs, so what remains is the server's time: no client of BuildGrid that keeps the
same guarantees (every file a CAS blob, asked about first, the archive for B) can be
faster than this on the same machine, whatever it does on its own side.

    floor = server_floor(workdir, store, tree, stream_chunk=..., max_batch_blobs=...)
    floor.upload_wall, floor.download_wall, floor.phases   # seconds; phases: name -> (wall, server CPU)
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grpc  # noqa: E402

from kata.remote import trees as remote_trees  # noqa: E402
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from kata.remote._api.google.bytestream import bytestream_pb2 as bs_pb2  # noqa: E402
from kata.remote.cas import MAX_MESSAGE, Cas, Digest  # noqa: E402
from store import Store  # noqa: E402
from store import tree as kata_tree  # noqa: E402
from support.buildgrid import BuildGridConfig, buildgrid, memory_cas  # noqa: E402

_CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Floor:
    """Seconds: the upload's and the download's wall; per phase (wall, server CPU)."""

    upload_wall: float = 0.0
    download_wall: float = 0.0
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def _requests(store: Store, tree: str, *, batch_limit: int, max_batch_blobs: int,
              find_chunk: int, stream_chunk: int) -> dict:
    """Every request of the upload, serialised: name -> [request bytes]; and the
    ``Directory`` and ``Tree`` blobs ("messages", as ``Cas.upload`` takes them: ~1% of
    the bytes, sent by Kata's own code since the ``Tree`` may need ByteStream)."""
    dirs: dict[tuple[bytes, ...], remote_trees._Dir] = {(): remote_trees._Dir()}
    listing = []
    files: dict[tuple[str, int], bytes] = {}
    with store.open_blob(tree) as blob:
        for kind, parts, arg, rd in kata_tree.entries(blob):
            parent = dirs[parts[:-1]]
            name = parts[-1].decode()
            listing.append((kind, b"/".join(parts), arg))
            if kind == "d":
                dirs[parts] = remote_trees._Dir()
                parent.dirs.append(name)
            elif kind == "l":
                parent.links.append(re_pb2.SymlinkNode(name=name, target=arg.decode()))
            else:
                data = b"".join(rd.chunks(arg, parts))
                h = hashlib.sha256(data).hexdigest()
                parent.files.append(re_pb2.FileNode(name=name, is_executable=kind == "x",
                                                    digest=Digest(hash=h, size_bytes=len(data))))
                if data:
                    files[(h, len(data))] = data
    keys = list(files)
    find = [re_pb2.FindMissingBlobsRequest(blob_digests=[
        Digest(hash=h, size_bytes=n) for h, n in keys[i:i + find_chunk]]).SerializeToString()
        for i in range(0, len(keys), find_chunk)]
    batches: list[bytes] = []
    req, size = re_pb2.BatchUpdateBlobsRequest(), 0
    for (h, n), data in files.items():
        if req.requests and (size + n + 100 > batch_limit or len(req.requests) >= max_batch_blobs):
            batches.append(req.SerializeToString())
            req, size = re_pb2.BatchUpdateBlobsRequest(), 0
        one = req.requests.add()
        one.digest.hash, one.digest.size_bytes, one.data = h, n, data
        size += n + 100
    if req.requests:
        batches.append(req.SerializeToString())
    del files
    archive = remote_trees.archive_digest(tree, listing)
    with store.open_blob(tree) as blob:
        whole = blob.read()
    assert len(whole) == archive.size_bytes
    resource = f"uploads/{uuid.uuid4()}/blobs/{archive.hash}/{archive.size_bytes}"
    stream = [bs_pb2.WriteRequest(resource_name=resource if off == 0 else "", write_offset=off,
                                  data=whole[off:off + stream_chunk],
                                  finish_write=off + stream_chunk >= len(whole)).SerializeToString()
              for off in range(0, len(whole), stream_chunk)]
    del whole
    _, _, _, small = remote_trees._messages(dirs)
    read = bs_pb2.ReadRequest(resource_name=f"blobs/{archive.hash}/{archive.size_bytes}")
    return {"find": find, "batches": batches, "stream": stream,
            "messages": small, "read": [read.SerializeToString()]}


def _overlapped(reqs: dict, find, update, write, cas: Cas) -> None:  # noqa: ANN001
    """The upload as Kata pipelines it: the archive streamed beside the batches, each
    batch asked about and sent on one of ``trees._UPLOADERS`` threads."""
    with ThreadPoolExecutor(max_workers=remote_trees._UPLOADERS + 1) as pool:
        archive = pool.submit(write, iter(reqs["stream"]), timeout=120)
        per = max(len(reqs["find"]) // max(len(reqs["batches"]), 1), 1)
        find_of = [reqs["find"][i:i + per] for i in range(0, len(reqs["find"]), per)]

        def one(i: int) -> None:
            for r in find_of[i] if i < len(find_of) else ():
                find(r, timeout=120)
            update(reqs["batches"][i], timeout=120)

        list(pool.map(one, range(len(reqs["batches"]))))
        archive.result()
    cas.upload(reqs["messages"])


def server_floor(workdir: Path, store: Store, tree: str, *, stream_chunk: int,
                 max_batch_blobs: int, find_chunk: int, overlapped: bool = False) -> Floor:
    """Send ``tree``'s upload (built and serialised first) and read its archive back,
    through a fresh in-memory BuildGrid in ``workdir``; time each phase (``overlapped``:
    the upload as one phase, pipelined as Kata sends it, see ``_overlapped``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = Floor()
    with buildgrid(workdir, BuildGridConfig(storages=memory_cas("2G"))) as server:
        assert server.proc is not None
        pid = server.proc.pid
        channel = grpc.insecure_channel(server.url.removeprefix("grpc://"), options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE)])
        try:
            # the batch limit the server announces, as Kata's upload reads it
            cas = Cas(channel, instance="", timeout=120)
            cas.capabilities()
            reqs = _requests(store, tree, batch_limit=cas.batch_limit,
                             max_batch_blobs=max_batch_blobs, find_chunk=find_chunk,
                             stream_chunk=stream_chunk)
            find = channel.unary_unary(_CAS + "FindMissingBlobs")
            update = channel.unary_unary(_CAS + "BatchUpdateBlobs")
            write = channel.stream_unary("/google.bytestream.ByteStream/Write")
            read = channel.unary_stream("/google.bytestream.ByteStream/Read")

            def phase(name: str, fn) -> float:  # noqa: ANN001
                s0, t0 = cpu_of(pid), time.perf_counter()
                fn()
                wall = time.perf_counter() - t0
                out.phases[name] = (wall, cpu_of(pid) - s0)
                return wall

            out.calls = {k: len(v) for k, v in reqs.items()}
            if overlapped:
                out.upload_wall = phase("upload, overlapped", lambda: _overlapped(
                    reqs, find, update, write, cas))
            else:
                out.upload_wall = sum((
                    phase("FindMissingBlobs", lambda: [find(r, timeout=120)
                                                       for r in reqs["find"]]),
                    phase("BatchUpdateBlobs", lambda: [update(r, timeout=120)
                                                       for r in reqs["batches"]]),
                    phase("ByteStream.Write (archive)", lambda: write(iter(reqs["stream"]),
                                                                      timeout=120)),
                    phase("Directory + Tree blobs", lambda: cas.upload(reqs["messages"])),
                ))
            out.download_wall = phase("ByteStream.Read (archive)", lambda: [
                None for _ in read(reqs["read"][0], timeout=120)])
        finally:
            channel.close()
    return out
