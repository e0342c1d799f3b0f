"""The server's floor for one remote step (bench/remote_bench_exec.py): BuildGrid's own
round trip of an ``Execute``, with a client and a bot that do nothing else.

What no REAPI client and Remote Workers API bot can beat on the same BuildGrid: the
client uploads N tiny ``Action``/``Command`` pairs (distinct, as a chain's steps are;
same platform keys as Kata's, ``do_not_cache``) *before* the clock starts, then sends
``Execute`` (``skip_cache_lookup``) for each, one after another, following the operation
stream to its end; the bot (a separate process, as ``kata worker`` is) holds one bot
session and answers each lease in its next ``UpdateBotSession`` as ``COMPLETED`` with a
canned ``ActionResult`` whose blobs (a workspace ``Tree``, a services ``Tree``, a log)
the client uploaded beforehand. Both open their channel with ``kata.executor.connection
.connect``: Kata's channel options and metadata (the bearer token, when there is one).

The floor's jobs ask for ``OSFamily=kata-floor`` and the bot offers only that, so a
``kata worker`` on the same scheduler never takes one, nor the bot a Kata step: the two
can be measured interleaved on one BuildGrid.

    with ExecFloor(url) as floor:
        seconds = floor.chain(10)   # [seconds per Execute round trip]
        floor.windows               # [(start, end)] epoch seconds of each chain
        floor.calls                 # [(sent, heard)] epoch seconds of each Execute
    python3 bench/remote_exec_floor.py --bot URL   # the bot (what ExecFloor starts)
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kata.executor import action as act  # noqa: E402
from kata.executor import files  # noqa: E402
from kata.executor.connection import connect  # noqa: E402
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402

OS_FAMILY = "kata-floor"  # what only the floor's bot offers (see the module docstring)
POLL = 20.0  # seconds one UpdateBotSession may wait, as kata worker's default
LEASE_PENDING, LEASE_ACTIVE, LEASE_COMPLETED = 1, 2, 4


def _canned() -> tuple[dict[str, bytes], re_pb2.ActionResult]:
    """The blobs of the result every lease gets (hash -> bytes) and the result: a
    workspace tree of one small file, an empty services tree, a one-line log; the shape
    of a chain step's result."""
    out = b"hello\n"
    ws = re_pb2.Directory()
    ws.directories.add(name="out", digest=files.digest_of(files.message_bytes(
        re_pb2.Directory(files=[re_pb2.FileNode(name="0", digest=files.digest_of(out))]))))
    tree = re_pb2.Tree(root=ws, children=[re_pb2.Directory(
        files=[re_pb2.FileNode(name="0", digest=files.digest_of(out))])])
    tree_bytes = files.message_bytes(tree)
    services = files.message_bytes(re_pb2.Tree(root=re_pb2.Directory()))
    log = b"step\n"
    blobs = {files.key(files.digest_of(b)): b for b in (out, tree_bytes, services, log)}
    result = re_pb2.ActionResult(exit_code=0, stdout_digest=files.digest_of(log))
    result.output_directories.add(path=act.WORKSPACE_DIR, tree_digest=files.digest_of(tree_bytes))
    result.output_directories.add(path=act.SERVICES_DIR, tree_digest=files.digest_of(services))
    return blobs, result


def _platform() -> re_pb2.Platform:
    """Kata's keys (action.platform) with the floor's OSFamily."""
    props = {"OSFamily": OS_FAMILY, "ISA": act.ISA, "network": "none",
             "container-image": "docker://floor.invalid/kata/busybox@sha256:" + "0" * 64}
    return re_pb2.Platform(properties=[re_pb2.Platform.Property(name=k, value=v)
                                       for k, v in sorted(props.items())])


def bot(url: str, instance: str = "") -> None:
    """The floor's bot: one session; every lease it is given is reported COMPLETED in
    the very next UpdateBotSession (which also long-polls for the next lease)."""
    import grpc

    from kata.remote._api.google.devtools.remoteworkers.v1test2 import (
        bots_pb2, bots_pb2_grpc, worker_pb2,
    )
    from kata.remote._api.google.rpc import status_pb2

    remote = connect(url, instance, where="floor bot")
    stub, md = bots_pb2_grpc.BotsStub(remote.channel), remote.metadata
    _blobs, canned = _canned()
    device = worker_pb2.Device(handle="floor", properties=[
        worker_pb2.Device.Property(key="OSFamily", value=OS_FAMILY),
        worker_pb2.Device.Property(key="ISA", value=act.ISA)])
    worker = worker_pb2.Worker(devices=[device], configs=[
        worker_pb2.Worker.Config(key="capacity", value="1")])
    name = f"floor-{os.getpid()}"
    session = stub.CreateBotSession(bots_pb2.CreateBotSessionRequest(
        parent=instance, bot_session=bots_pb2.BotSession(bot_id=name, status=1,
                                                         worker=worker)),
        timeout=POLL, metadata=md)
    print("ready", flush=True)
    leases = list(session.leases)
    while True:
        report = bots_pb2.BotSession(name=session.name, bot_id=name, status=1, worker=worker,
                                     version=session.version)
        for lease in leases:
            if lease.state not in (LEASE_PENDING, LEASE_ACTIVE):
                continue
            result = re_pb2.ActionResult()
            result.CopyFrom(canned)
            meta = result.execution_metadata
            meta.worker = name
            for stamp in (meta.worker_start_timestamp, meta.input_fetch_start_timestamp,
                          meta.input_fetch_completed_timestamp,
                          meta.execution_start_timestamp, meta.execution_completed_timestamp,
                          meta.output_upload_start_timestamp,
                          meta.output_upload_completed_timestamp,
                          meta.worker_completed_timestamp):
                stamp.GetCurrentTime()
            done = report.leases.add(id=lease.id, payload=lease.payload,
                                     state=LEASE_COMPLETED, status=status_pb2.Status(code=0))
            done.result.Pack(result)
        try:
            session = stub.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
                name=session.name, bot_session=report), timeout=POLL, metadata=md)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                leases = []
                continue
            raise
        leases = list(session.leases)


class ExecFloor:
    """A floor bot process and a client on ``url`` (see the module docstring)."""

    def __init__(self, url: str, instance: str = "") -> None:
        self.url, self.instance = url, instance
        self.windows: list[tuple[float, float]] = []
        self.calls: list[tuple[float, float]] = []  # each Execute: (sent, done heard), epoch
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "ExecFloor":
        from kata.remote._api.build.bazel.remote.execution.v2 import (
            remote_execution_pb2_grpc as re_grpc,
        )

        self._proc = subprocess.Popen([sys.executable, __file__, "--bot", self.url],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = self._proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready":
            self.__exit__()
            raise RuntimeError(f"the floor's bot did not start: {line!r}")
        self._remote = connect(self.url, self.instance, where="floor client")
        self._execution = re_grpc.ExecutionStub(self._remote.channel)
        blobs, _result = _canned()
        files.upload(self._remote.cas, blobs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if getattr(self, "_remote", None) is not None:
            self._remote.close()

    def _actions(self, n: int) -> list[re_pb2.Digest]:
        """N distinct actions on an empty input root, uploaded (before the clock)."""
        salt = secrets.token_hex(4)
        platform = _platform()
        empty = files.message_bytes(re_pb2.Directory())
        blobs = {files.key(files.digest_of(empty)): empty}
        digests = []
        for i in range(n):
            command = files.message_bytes(re_pb2.Command(
                arguments=["/bin/sh", "-c", f"floor {salt} {i}"],
                output_paths=[act.WORKSPACE_DIR, act.SERVICES_DIR, act.SPECIAL_FILE],
                output_directories=[act.WORKSPACE_DIR, act.SERVICES_DIR],
                output_files=[act.SPECIAL_FILE], working_directory=act.WORKSPACE_DIR,
                platform=platform))
            action = files.message_bytes(re_pb2.Action(
                command_digest=files.digest_of(command), input_root_digest=files.digest_of(empty),
                do_not_cache=True, platform=platform))
            blobs[files.key(files.digest_of(command))] = command
            blobs[files.key(files.digest_of(action))] = action
            digests.append(files.digest_of(action))
        files.upload(self._remote.cas, blobs)
        return digests

    def chain(self, n: int) -> list[float]:
        """Execute N fresh actions one after another: seconds each, Execute sent until the
        stream says done (its response unpacked and checked)."""
        digests = self._actions(n)
        out = []
        began = time.time()
        for digest in digests:
            sent, t0 = time.time(), time.perf_counter()
            for op in self._execution.Execute(re_pb2.ExecuteRequest(
                    instance_name=self.instance, action_digest=digest,
                    skip_cache_lookup=True), metadata=self._remote.metadata, timeout=60):
                if op.done:
                    break
            response = re_pb2.ExecuteResponse()
            op.response.Unpack(response)
            if op.error.code or response.status.code or response.result.exit_code:
                raise RuntimeError(f"the floor's action failed: {op.error} {response.status}")
            out.append(time.perf_counter() - t0)
            self.calls.append((sent, sent + out[-1]))
        self.windows.append((began, time.time()))
        return out


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--bot":
        bot(sys.argv[2])
    else:
        sys.exit(__doc__)
