"""``RemoteRuntime``: a ``kata.runtimes.base.Runtime`` that runs steps on REAPI workers.

``kata run --remote-executor grpc://HOST:PORT`` hands the realiser this runtime instead of
the containerd one. For each step it:

1. packs the workspace the realiser prepared (inputs + dependency artifacts, the merged
   overlay) into ``Directory`` trees, adds ``kata-spec.json`` (``action.py``) and uploads
   what the CAS lacks (FindMissingBlobs, then batches or ByteStream);
2. calls ``Execution.Execute`` (``skip_cache_lookup``; the action is ``do_not_cache``)
   and follows the operation; when the stream breaks (the scheduler restarting) it
   follows it again with ``WaitExecution`` until ``reconnect_for`` seconds have passed
   (an executor that never answered in this run is given up after ``first_contact``);
   a stream silent for ``STREAM_IDLE`` seconds (``FIRST_ANSWER`` before its first
   message) is cut and followed again, on a new connection when not even the first
   answer came (a half-open connection); on ``cancel`` it cancels the operation
   (``Operations.CancelOperation``);
3. writes ``kata: ran on worker NAME`` and then the step's output into the sink: while it
   runs when the scheduler names a log stream (``ExecuteOperationMetadata.
   stdout_stream_name``, read with ByteStream.Read from ``remote.logstream``, default the
   executor; ``logstream.py``), and then whatever the ``stdout`` blob of the result holds
   beyond what streamed (all of it without a stream); each service's log goes into
   ``service_sink``; for a step that exited 0 the output tree is laid back into the
   workspace (only what changed; bytes it sent as inputs are taken from its own copy,
   not read back: a worker does not send back what it read moments before), so the
   realiser collects artifacts, logs and history exactly as for a local step.

A step whose spec has any mount besides its workspace (the secrets tmpfs, also on a
service) runs on ``local`` instead, with one ``kata: ran locally`` line: secrets are never
put in a CAS (SECURITY.md). When the scheduler gives the step to another worker (the
first one died), a line says so and the new attempt's output follows.

Errors: ``KataError`` ``remote.unavailable`` / ``remote.deadline`` (the executor could not
be reached for ``reconnect_for`` seconds), ``remote.refused`` / ``remote.bad_answer`` (from
the CAS), ``remote.failed`` (the operation ended with an error status), ``remote.bad_url``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)
from kata.remote._api.google.longrunning import operations_pb2, operations_pb2_grpc
from kata.remote.cas import RemoteError
from kata.remote.config import RemoteConfig, parse_url
from kata.runtimes.base import (
    CANCEL_EXIT, LOCAL_ONLY_LABEL, ExitStatus, OutputSink, Runtime, ServiceSink, StepSpec,
    give_cache_paths, user_ids,
)

from . import action as act
from . import files
from .connection import connect
from .logstream import Follower

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
_RETRY_REASONS = ("remote.unavailable", "remote.deadline")
# a workspace REAPI cannot describe (files.pack_dir): the step runs locally
_CANNOT_SEND = ("remote.unsupported_name", "remote.unsupported_file")
# a log stream server that answers these serves no log streams: stop asking in this run
_NO_STREAMS = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT)
STREAM_TAIL_WAIT = 2.0  # seconds a finished step's stream may take to deliver its end
#: seconds an Execute/WaitExecution stream may deliver nothing before it is presumed dead
#: (a half-open connection: the scheduler's host lost power, a NAT or load balancer
#: dropped its state; no RST ever comes, so gRPC believes it alive): it is cancelled and
#: followed again. BuildGrid repeats the operation every `operation-stream-keepalive-
#: timeout` (docs/remote.md: 5 s), so a live stream is never this quiet there
STREAM_IDLE = 30.0
#: seconds a follow (WaitExecution) may take to give its first message, which BuildGrid
#: sends at once: past it, the connection is replaced by a new one
FIRST_ANSWER = 15.0
#: the same for Execute, which queues the job first (in PostgreSQL): longer, since one cut
#: before it names the operation sends the action again (a second job; both are do-not-
#: cache, so BuildGrid does not merge them)
FIRST_EXECUTE_ANSWER = 60.0
QUEUED_NOTICE = 20.0  # seconds queued before a step's output says no worker has taken it
#: seconds the run's first call to the scheduler (GetCapabilities, answered in a few ms)
#: may take, or ``remote.connect_timeout`` when that is longer: a scheduler that accepts
#: connections and never answers (hung, a proxy in front of a dead one) ends the run's
#: remote steps after this, once, instead of each step waiting out its calls' deadlines
FIRST_CONTACT_ANSWER = 5.0
LOG_IN_MEMORY = 1 << 20  # a result's log up to this size is read with its trees, in one call


def runs_remotely(spec: StepSpec) -> bool:
    """True unless the step (or a service) has a mount besides its workspace (those are
    secrets, which never leave this host) or the realiser labelled it local-only (its
    workspace holds the artifacts of a step that has secrets)."""
    if spec.labels.get(LOCAL_ONLY_LABEL) or any(s.mounts for s in spec.services):
        return False
    return len(spec.mounts) == 1 and spec.mounts[0].kind == "bind" \
        and spec.mounts[0].target == spec.workdir


class RemoteRuntime:
    """Runs steps through an REAPI Execution service (see the module docstring)."""

    # the restored ``cache.paths`` of a step under a ``user:`` are given to that user by
    # whoever runs it: the worker on its copy (``StepSpec.cache_paths``), this runtime on
    # the local workspace for a step it runs here. The realiser leaves them alone: on the
    # client's overlay each re-owned file was copied up (its data too) and then hashed
    # afresh to be sent (a new inode and ctime), for a workspace the worker rebuilds anyway
    gives_cache_paths = True

    def __init__(self, url: "str | RemoteConfig", local: Runtime, *, instance: str = "",
                 reconnect_for: float = 300.0, first_contact: float = 10.0) -> None:
        self.url = url if isinstance(url, str) else url.url
        self.instance = instance if isinstance(url, str) else url.instance
        self.local = local
        self.reconnect_for = reconnect_for
        self.first_contact = first_contact
        self._reached = False  # has the executor answered once in this run?
        # the first contact (GetCapabilities) of this run: its deadline, whether it was
        # made, and the error that gave the executor up (None while it is in use), said
        # in full by one step and named by the others (under _contact_lock)
        self.first_answer = max(FIRST_CONTACT_ANSWER, getattr(url, "connect_timeout", 0.0))
        self._contact_lock = threading.Lock()
        self._contacted = False
        self._down: KataError | None = None
        self._down_why = ""
        self._where = url
        self._lock = threading.Lock()
        self._retired: list = []  # connections replaced (closed with the runtime)
        self.generation = 0  # how many times the connection was replaced
        self._own_logs = False
        self._open(connect(url, instance, where="--remote-executor"))
        if not isinstance(url, str) and url.logstream:  # with the section's TLS and token
            target, tls = parse_url(url.logstream, where="remote.logstream")
            self._logs = connect(dataclasses.replace(url, url=url.logstream, target=target,
                                                     tls=tls, logstream=None),
                                 where="remote.logstream")
            self._own_logs = True
        self.streaming = True  # False once the log stream server said it serves none
        # what this run already knows, so each step sends only what is new: file digests
        # (a step's workspace is mostly the files the previous steps saw) and the blobs
        # the CAS holds (sent, or read back from a result, in this run)
        self._memo = files.DigestMemo()
        self._present: set[str] = set()

    def _open(self, remote) -> None:  # noqa: ANN001 - a kata.remote.cas.Remote
        self._remote = remote
        self.cas = remote.cas
        self._md = remote.metadata
        self._execution = re_grpc.ExecutionStub(remote.channel)
        self._operations = operations_pb2_grpc.OperationsStub(remote.channel)
        if not self._own_logs:
            self._logs = remote  # where log streams are read

    def _reconnect(self, generation: int) -> None:
        """Replace the connection to the executor with a new one, unless another step
        already replaced the one of ``generation``. The old one is left to the calls still
        on it (each has its deadline or its idle watch) and closed with the runtime."""
        with self._lock:
            if generation != self.generation:
                return
            self._retired.append(self._remote)
            self._open(connect(self._where, self.instance, where="--remote-executor"))
            self.generation += 1

    def resolve_image(self, ref: str) -> str:
        return self.local.resolve_image(ref)

    def close(self) -> None:
        for remote in (*self._retired, self._remote):
            remote.close()
        if self._own_logs:
            self._logs.close()

    def run(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
            service_sink: ServiceSink | None = None) -> int:
        # what this step writes into its workspace and sinks once its result is in (the
        # sync, the log) runs on a thread of its own when the run can be cancelled; on
        # cancel it is closed, so the realiser discards the workspace at once, racing
        # nothing (a read from the CAS that still blocks the thread writes nothing after)
        gate = files.Gate()
        try:
            return self._run(spec, sink, cancel, service_sink, gate)
        except _Cancelled:
            return CANCEL_EXIT
        finally:
            gate.close()

    def _run(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
             service_sink: ServiceSink | None, gate: files.Gate) -> int:
        if not runs_remotely(spec):
            _say(sink, "kata: ran locally: the step has secrets (or the artifacts of a step "
                 "that has), which never go to a remote executor\n")
            return self._run_here(spec, sink, cancel, service_sink)
        if cancel.is_set():
            return CANCEL_EXIT
        workspace = spec.mounts[0].source
        try:
            packed = files.pack_dir(workspace, memo=self._memo)
        except KataError as err:
            if err.reason not in _CANNOT_SEND:
                raise
            # what REAPI cannot carry (a name that is not UTF-8, a FIFO) runs here, as a
            # step with secrets does: the result is the same, only where it ran differs
            _say(sink, f"kata: ran locally: the workspace holds {err.message}; it cannot "
                 "go to a remote executor\n")
            return self._run_here(spec, sink, cancel, service_sink)
        self._call(self._first_contact, "reach the scheduler", cancel, abandon=True,
                   retry=False)
        root = files.join_root(packed, {act.WORKSPACE_DIR: packed.root},
                               {act.SPEC_FILE: act.spec_document(spec)})
        remote = act.build_action(spec, root)
        blobs = {**packed.directories, **remote.blobs}
        trusted = bool(self._present)  # some blobs may go unsent, trusted to be there
        self._call(lambda: files.upload(self.cas, blobs, packed.files, self._present),
                   "upload the step's inputs", cancel, abandon=True)
        live = _LiveLog(self, sink, gate)
        try:
            try:
                response = self._execute(remote.digest, cancel, live.watch)
            except KataError as err:
                if not (trusted and getattr(err, "inputs_lost", False)):
                    raise
                # the CAS may have dropped (evicted, restarted) a blob this run sent
                # earlier and did not send again: ask about everything, then once more
                self._present.clear()
                self._call(lambda: files.upload(self.cas, blobs, packed.files, self._present),
                           "upload the step's inputs", cancel, abandon=True)
                response = self._execute(remote.digest, cancel, live.watch)
            if response is None:
                return CANCEL_EXIT
            result = response.result
            outputs = {d.path: d.tree_digest for d in result.output_directories}
            special = [f.digest for f in result.output_files if f.path == act.SPECIAL_FILE]
            error = [f.digest for f in result.output_files if f.path == act.ERROR_FILE]
            stdout = result.stdout_digest
            small = stdout.size_bytes <= LOG_IN_MEMORY  # else streamed: a log may be GiBs
            trees = self._call(lambda: self.cas.read_many([*outputs.values(), *special,
                                                             *error,
                                                             *([stdout] if small else [])]),
                               "fetch the step's output", cancel, abandon=True)  # one call: trees and the log
            self._call(lambda: live.finish(result.execution_metadata.worker or "?",
                                           stdout, trees.get(files.key(stdout)) if small
                                           else None),
                       "fetch the step's output", cancel, abandon=True)  # through the gate
        finally:
            live.stop()
        if result.stderr_raw or result.stderr_digest.size_bytes:
            err = result.stderr_raw or self._call(
                lambda: self.cas.read_many([result.stderr_digest]), "fetch the step's output",
                cancel, abandon=True)[files.key(result.stderr_digest)]
            gate.run(sink, "stderr", err) if getattr(sink, "raw", False) \
                else gate.run(_lines, sink, err)
        if service_sink is not None and act.SERVICES_DIR in outputs:
            logs = self._call(lambda: self._service_logs(
                trees[files.key(outputs[act.SERVICES_DIR])]), "fetch the step's output",
                cancel, abandon=True)
            for name, text in logs:
                gate.run(_service_lines, service_sink, name, text)
        if error:  # the step met on the worker what the local runtime raises
            raise act.read_error(trees[files.key(error[0])])
        if result.exit_code == 0 and act.WORKSPACE_DIR not in outputs:
            raise KataError("remote.failed", "the worker sent no workspace back",
                            exit_code=1)
        if act.WORKSPACE_DIR in outputs:  # a failed step's too: its test report is read
            tree = re_pb2.Tree()
            tree.ParseFromString(trees[files.key(outputs[act.WORKSPACE_DIR])])
            top, children = files.tree_index(tree)
            # what the output holds of the inputs' bytes comes from here, not the CAS: a
            # worker does not send back the inputs it read moments before (worker.py)
            own = files.own_copies(packed, blobs, top, children, self.cas.batch_limit)
            try:
                self._call(lambda: files.sync_dir(self.cas, packed, top, children, workspace,
                                                  cache=own, gate=gate),
                           "fetch the step's output", cancel, abandon=True)
            except KataError:
                if result.exit_code == 0:
                    raise
                return self._status(result)  # it failed either way; its report says what it lacks
            for digest in special:  # what it left that no tree holds: as it would be here
                gate.run(files.make_fifos, workspace,
                         trees[files.key(digest)].decode().split("\0"))
            # the worker put these in the CAS: a later step that sees them need not
            self._present.update(f.digest.hash for d in (top, *children.values())
                                 for f in d.files)
        return self._status(result)

    @staticmethod
    def _status(result: re_pb2.ActionResult) -> int:
        """The step's exit status, naming the memory limit the worker applied (its own
        host default where the step set none: the message of an out-of-memory kill) and
        the worker (the host its realisation names)."""
        return ExitStatus(result.exit_code,
                          memory=act.applied_memory(result.execution_metadata),
                          host=result.execution_metadata.worker or None)

    def _run_here(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
                  service_sink: ServiceSink | None) -> int:
        """Run ``spec`` on the local runtime, its restored cache given to its user first
        (``gives_cache_paths``), as the realiser does for a local run."""
        if spec.cache_paths and (owner := user_ids(spec.user)) is not None:
            give_cache_paths(Path(spec.mounts[0].source), spec.cache_paths, owner)
        if service_sink is not None:
            return self.local.run(spec, sink, cancel, service_sink=service_sink)
        return self.local.run(spec, sink, cancel)

    def _service_logs(self, data: bytes) -> list[tuple[str, bytes]]:
        """(service name, its log) of the ``kata-services`` tree ``data``, read from the CAS."""
        tree = re_pb2.Tree()
        tree.ParseFromString(data)
        logs = self.cas.read_many(f.digest for f in tree.root.files)
        return [(f.name.removesuffix(".log"), logs[files.key(f.digest)])
                for f in tree.root.files]

    def _first_contact(self) -> None:
        """Once per run: GetCapabilities within ``first_answer`` seconds, retried while the
        scheduler refuses connections (it may be starting) for ``first_contact`` seconds.
        A scheduler that took the connection and did not answer (hung), or that never
        answered at all, is given up for the run: this step and every later one fail at
        once with the same ``remote.unavailable`` (steps are not run here instead: the
        run asked for remote machines)."""
        with self._contact_lock:
            if self._down is not None:  # said in full once, by the step that found it
                raise KataError(self._down.reason, f"remote execution at {self.url} was "
                                f"given up earlier in this run ({self._down_why})",
                                exit_code=1)
            if self._contacted:
                return
            deadline = time.monotonic() + self.first_contact
            delay = 0.2
            while True:
                try:
                    self.cas.capabilities(timeout=self.first_answer)
                    break
                except RemoteError as err:
                    if err.reason == "remote.unavailable" and time.monotonic() + delay < deadline:
                        time.sleep(delay)  # refused: not started yet, or restarting
                        delay = min(delay * 2, 2.0)
                        continue
                    if err.reason == "remote.unsupported":  # answers: not SHA-256
                        break  # each call says what it refuses
                    from kata.doctor import remote_fix

                    fix = remote_fix(
                        err.code or "", err.message, server="scheduler",
                        timeout=self.first_answer,
                        start=f"start the scheduler at {self.url} (BuildGrid with "
                        "!execution, docs/remote.md) or correct --remote-executor / "
                        "remote.executor", hung="this run's remote steps fail (they do not "
                        "run here instead); raise remote.connect_timeout for a scheduler "
                        "far away")
                    self._down = KataError(err.reason, f"remote execution at {self.url} "
                                           f"given up for this run: {err.bare}; {fix}",
                                           exit_code=1)
                    self._down_why = err.bare.splitlines()[0][:200]
                    raise self._down from err
            self._contacted = True
            self._reached = True

    def _call(self, fn: Callable, what: str, cancel: threading.Event | None = None, *,  # noqa: ANN202
              abandon: bool = False, retry: bool = True):
        """``fn()``, retried with back-off while the executor is unavailable or past a
        deadline. The back-off ends when ``cancel`` is set (_Cancelled); with ``abandon``
        (``fn`` writes nothing but memory and the CAS, or only through the step's gate)
        so does a call in flight, which is left to its own deadline in a thread of its
        own. ``retry=False``: ``fn`` raises what it raises (a KataError)."""
        if not retry:
            return _unless(cancel, fn) if abandon and cancel is not None else fn()
        # an executor that never answered is not waited for long: it is a wrong address or
        # a server that is down, not one restarting under a run that already used it
        wait = self.reconnect_for if self._reached else self.first_contact
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            generation = self.generation
            try:
                out = _unless(cancel, fn) if abandon and cancel is not None else fn()
                self._reached = True
                return out
            except RemoteError as err:
                if err.reason == "remote.deadline":  # the connection may be dead, not slow
                    self._reconnect(generation)
                if err.reason not in _RETRY_REASONS or time.monotonic() > deadline:
                    fix = ""
                    if not self._reached:  # never answered: what `kata doctor` would say
                        from kata.doctor import remote_fix

                        fix = "; " + remote_fix(
                            err.code or "", err.message, server="scheduler", timeout=wait,
                            start=f"start the scheduler at {self.url} (BuildGrid with "
                            "!execution, docs/remote.md) or correct --remote-executor / "
                            "remote.executor", hung="its steps fail")
                    # the fix says what the error's own hint would (said once)
                    said = err.bare if fix else err.message
                    raise KataError(err.reason, f"could not {what} at {self.url}: "
                                    f"{said}{fix}", exit_code=1) from err
                if cancel is not None and cancel.wait(delay):
                    raise _Cancelled() from None
                if cancel is None:
                    time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _execute(self, digest: re_pb2.Digest, cancel: threading.Event,
                 watch: Callable[[operations_pb2.Operation], None] = lambda op: None,
                 ) -> re_pb2.ExecuteResponse | None:
        """Follow the operation to its end: the response, or None when cancelled.
        ``watch`` sees every update before it is judged."""
        name = ""
        deadline = time.monotonic() + self.reconnect_for
        delay = 0.2
        while True:
            generation = self.generation
            if name:
                call = self._execution.WaitExecution(re_pb2.WaitExecutionRequest(name=name),
                                                     metadata=self._md)
            else:
                call = self._execution.Execute(re_pb2.ExecuteRequest(
                    instance_name=self.instance, action_digest=digest,
                    skip_cache_lookup=True), metadata=self._md)
            stop = threading.Event()
            idle = _Idle(FIRST_ANSWER if name else FIRST_EXECUTE_ANSWER)
            watcher = threading.Thread(target=_cancel_when, args=(cancel, stop, call, idle),
                                       daemon=True)
            watcher.start()
            try:
                for op in call:
                    idle.heard()
                    name = op.name or name
                    watch(op)
                    deadline = time.monotonic() + self.reconnect_for
                    delay = 0.2
                    if op.done:
                        return _response(op)
            except grpc.RpcError as err:
                if cancel.is_set():
                    self._cancel(name)
                    return None
                code = err.code()  # type: ignore[attr-defined]
                if idle.silent:  # cut by the idle watch, not by the server
                    if not idle.messages:  # not even the first answer: a dead connection
                        self._reconnect(generation)
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                if code not in _RETRYABLE or time.monotonic() > deadline:
                    what = (f"no answer for {self.reconnect_for:.0f}s" if idle.silent
                            else f"{code.name}: {err.details()}")  # type: ignore[attr-defined]
                    fix = ""
                    if code == grpc.StatusCode.UNIMPLEMENTED:  # a cache-only server
                        fix = ("; it has no Execution service (a cache-only server, such as "
                               "the cache-only BuildGrid of docs/remote.md): point "
                               "--remote-executor / remote.executor at the scheduler, a "
                               "BuildGrid with !execution (`kata doctor` checks it)")
                    raise KataError("remote.unavailable", f"remote execution at {self.url} "
                                    f"failed: {what}{fix}", exit_code=1) from err
            finally:
                stop.set()
            if cancel.is_set():
                self._cancel(name)
                return None
            time.sleep(delay)  # the stream ended without a result: follow it again
            delay = min(delay * 2, 2.0)

    def _cancel(self, name: str) -> None:
        if not name:
            return
        try:
            self._operations.CancelOperation(operations_pb2.CancelOperationRequest(name=name),
                                             timeout=10, metadata=self._md)
        except grpc.RpcError:
            pass  # the scheduler drops the lease when it can; nothing of ours to release


class _LiveLog:
    """One remote step's output on its way to the sink: a log stream followed while the
    step runs (restarted when the scheduler gives the step to another worker), then the
    rest of the result's ``stdout`` blob (see the module docstring)."""

    def __init__(self, runtime: RemoteRuntime, sink: OutputSink,
                 gate: files.Gate | None = None) -> None:
        self.runtime, self._sink = runtime, sink
        self.gate = gate or files.Gate()  # closed: the step was given up, the sink is not fed
        self.raw = bool(getattr(sink, "raw", False))
        self.follower: Follower | None = None
        self.worker = ""
        self.got = 0  # how many bytes the current stream delivered, and their hash:
        self.got_hash = hashlib.sha256()  # never the bytes (a step may print GiBs)
        self.said = False  # has finish() begun to hand the record to the sink?
        self.partial = b""  # an unfinished line (for a sink of lines)
        self.running = getattr(sink, "running", None)  # called once a worker has the step
        self.queued_since: float | None = None  # when the scheduler last queued it
        self.queued_told = False  # has this wait in the queue been told (once per wait)?

    def watch(self, op: operations_pb2.Operation) -> None:
        meta = re_pb2.ExecuteOperationMetadata()
        if not op.metadata.Unpack(meta):
            return
        if meta.stage == re_pb2.ExecutionStage.EXECUTING and self.running is not None:
            self.running()  # a worker has it: no longer queued (the web view's timeline)
            self.running = None
        self._queued(meta.stage == re_pb2.ExecutionStage.QUEUED)
        if not self.runtime.streaming or not meta.stdout_stream_name:
            return
        if self.follower is not None:
            if self.follower.name == meta.stdout_stream_name:
                return
            self.follower.stop()
            self._flush()
        worker = meta.partial_execution_metadata.worker or "?"
        if self.follower is None:
            self._say(f"kata: ran on worker {worker}\n")
        else:
            self._say(_moved(self.worker, worker))
        self.worker = worker
        self.got, self.got_hash = 0, hashlib.sha256()
        logs = self.runtime._logs
        self.follower = Follower(logs.channel, meta.stdout_stream_name, self._deliver,
                                 logs.metadata)

    def _queued(self, queued: bool) -> None:
        """Say once when the step has waited ``QUEUED_NOTICE`` s for a worker (BuildGrid
        keeps it queued for ever when none runs; its stream repeats the stage every few
        seconds, so this is seen)."""
        now = time.monotonic()
        if not queued:
            self.queued_since, self.queued_told = None, False
        elif self.queued_since is None:
            self.queued_since = now
        elif not self.queued_told and now - self.queued_since >= QUEUED_NOTICE:
            instance = self.runtime.instance
            self._say(f"kata: queued for {now - self.queued_since:.0f}s: no worker has taken "
                      f"the step yet (is a `kata worker` running for {self.runtime.url}"
                      f"{' instance ' + instance if instance else ''}, with a free slot?)\n")
            self.queued_told = True

    def sink(self, stream: str, data: bytes) -> None:
        self.gate.run(self._sink, stream, data)

    def _deliver(self, data: bytes) -> None:  # from the follower's thread
        self.got += len(data)
        self.got_hash.update(data)
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if self.raw:
            self.sink("stdout", data)
            return
        parts = (self.partial + data).split(b"\n")
        self.partial = parts.pop()
        for line in parts:
            self.sink("stdout", line)

    def _flush(self) -> None:
        if self.partial:
            self.sink("stdout", self.partial)
            self.partial = b""

    def _say(self, text: str) -> None:
        self._flush()
        if self.raw:
            self.sink("stdout", text.encode())
        else:
            _lines(self.sink, text.encode())

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            if self.follower.failed in _NO_STREAMS:
                self.runtime.streaming = False

    def finish(self, worker: str, digest: re_pb2.Digest, data: bytes | None) -> None:
        """The step ended on ``worker`` with output ``digest`` (its bytes ``data``, or None:
        read from the CAS chunk by chunk, never whole): say what did not stream.
        RemoteError from the CAS; called again after one, it goes on where it stopped."""
        if not self.said:
            self.said = True
            if self.follower is not None and self.worker == worker:
                self.follower.finish(STREAM_TAIL_WAIT)
            elif self.follower is not None:  # moved once more, unseen: say so, as in watch()
                self.stop()
                self._say(_moved(self.worker, worker))
                self.got = 0
            else:
                self._say(f"kata: ran on worker {worker}\n")
            self.skip = self.got  # what streamed: checked against the record, not repeated
            self.sent = 0  # how much of the record the sink has
        while not self._hand_on(digest, data):
            self._say("kata: the live output differs from the worker's record of it; "
                      "the record follows\n")
            self.skip = 0
        self._flush()

    def _hand_on(self, digest: re_pb2.Digest, data: bytes | None) -> bool:
        """Give the sink the record beyond what it has; False (nothing given) when the
        record does not begin with what streamed."""
        chunks = iter((data,)) if data is not None else self.runtime.cas.read(digest)
        streamed = hashlib.sha256()
        offset = 0
        for chunk in chunks:
            end = offset + len(chunk)
            if offset < self.skip:
                streamed.update(chunk[:self.skip - offset])
                if end >= self.skip and streamed.digest() != self.got_hash.digest():
                    return False
            start = max(self.skip, self.sent)
            if end > start:
                self._emit(chunk[max(start - offset, 0):])
                self.sent = end
            offset = end
        return offset >= self.skip


def _moved(before: str, now: str) -> str:
    """The line saying the scheduler started the step again, on ``now`` (after ``before``)."""
    if before == now:  # a retry on the same worker (its attempt failed there)
        return f"kata: the scheduler gave the step to worker {now} again, whose output follows\n"
    return (f"kata: worker {before} lost the step; the scheduler gave it to worker {now}, "
            "whose output follows\n")


class _Cancelled(Exception):
    """The run cancelled the step while it waited on the executor."""


def _unless(cancel: threading.Event, fn: Callable):  # noqa: ANN202
    """``fn()`` in a thread of its own, given up when ``cancel`` is set (_Cancelled): the
    call in flight is left to its own deadline (or to the runtime's close)."""
    if cancel.is_set():
        raise _Cancelled()
    box: dict = {}
    done = threading.Event()

    def go() -> None:
        try:
            box["out"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["err"] = err
        finally:
            done.set()

    threading.Thread(target=go, daemon=True, name="kata-remote-call").start()
    while not done.wait(0.1):
        if cancel.is_set():
            raise _Cancelled()
    if "err" in box:
        raise box["err"]
    return box["out"]


class _Idle:
    """What a follow call (Execute, WaitExecution) heard: how many messages, when last."""

    def __init__(self, first: float) -> None:
        self.first = first  # seconds the first message may take
        self.messages = 0
        self.last = time.monotonic()
        self.silent = False  # set when the watch cut the call for its silence

    def heard(self) -> None:
        self.messages += 1
        self.last = time.monotonic()

    def overdue(self) -> bool:
        limit = STREAM_IDLE if self.messages else self.first
        return time.monotonic() - self.last > limit


def _cancel_when(cancel: threading.Event, stop: threading.Event, call,  # noqa: ANN001
                 idle: _Idle) -> None:
    """Cancel ``call`` when the run is cancelled, or when it has been silent too long
    (``STREAM_IDLE``; ``FIRST_ANSWER`` before its first message)."""
    while not stop.is_set():
        if cancel.wait(0.1):
            call.cancel()
            return
        if idle.overdue():
            idle.silent = True
            call.cancel()
            return


# what a worker (or the scheduler) answers when an input blob is not in the CAS: the
# worker's "CAS went away" (UNAVAILABLE), NOT_FOUND, REAPI's FAILED_PRECONDITION
_INPUTS_LOST = (5, 9, 14)


def _failed(message: str, code: int) -> KataError:
    err = KataError("remote.failed", message, exit_code=1)
    err.inputs_lost = code in _INPUTS_LOST  # type: ignore[attr-defined]
    return err


def _response(op: operations_pb2.Operation) -> re_pb2.ExecuteResponse:
    if op.HasField("error") and op.error.code != 0:
        raise _failed(f"remote execution failed: {op.error.message} (code {op.error.code})",
                      op.error.code)
    response = re_pb2.ExecuteResponse()
    op.response.Unpack(response)
    if response.status.code != 0:
        raise _failed(f"remote execution failed: "
                      f"{response.status.message or 'status ' + str(response.status.code)}",
                      response.status.code)
    return response


def _say(sink: OutputSink, text: str) -> None:
    if getattr(sink, "raw", False):
        sink("stdout", text.encode())
    else:
        _lines(sink, text.encode())


def _service_lines(service_sink: ServiceSink, name: str, text: bytes) -> None:
    for line in text.split(b"\n")[:-1] if text.endswith(b"\n") else text.split(b"\n"):
        service_sink(name, "stdout", line)


def _lines(sink: OutputSink, data: bytes) -> None:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for line in parts:
        sink("stdout", line)
