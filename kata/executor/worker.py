"""``kata worker``: a bot of the Remote Workers API (``google.devtools.remoteworkers.v1test2``)
that runs the actions ``kata run --remote-executor`` sends, with kata's containerd runtime.

The lease lifecycle (bots.proto; BuildGrid's Bots service):

- ``CreateBotSession(parent=instance, bot_session={bot_id, status OK, worker})``: the
  worker's primary device says ``OSFamily=linux`` and ``ISA=x86-64`` (what the scheduler
  matches), its config ``capacity=N`` (``--slots``). BuildGrid answers with the session
  name and may already assign leases.
- ``UpdateBotSession``, long-polled: the worker sends every lease it holds, ``ACTIVE``
  while it runs (a keep-alive) or ``COMPLETED`` with a ``google.rpc.Status`` and the
  ``ActionResult`` packed in ``result``; the reply holds the leases the scheduler wants it
  to run (new ones ``ACTIVE``; one it drops or ``CANCELLED`` is stopped). A poll is cut
  short (the call cancelled) as soon as a lease completes, so a result is reported at
  once, not at the end of the poll. A worker whose slots are all busy is answered at once
  (nothing to wait for), so it then only sends a heartbeat every ``poll / 2`` seconds,
  or its result as soon as it has one.
- A scheduler that restarts answers UNAVAILABLE for a while: the worker keeps running its
  leases and retries with back-off; when the scheduler no longer knows the session (it
  expired, ``bot-session-keepalive-timeout``) the worker stops what it ran for it and
  opens a new session. A worker that dies stops answering; the scheduler re-queues its
  leases after the keep-alive timeout (and gives them to another bot). A worker that is
  stopped (SIGTERM) hands its leases back at once instead (``Worker._hand_back``).

Live output (``logstream.py``): when the scheduler creates log streams for its jobs
(BuildGrid's ``logstream:`` option), the reply of ``UpdateBotSession`` carries, in its
``executeoperationmetadata-bin`` trailing metadata, each lease's stdout *write* name
(keyed by action digest). The worker then writes the step's output to that stream while
it runs (ByteStream.Write to ``--logstream``, default the executor), and finishes the
stream before it reports the lease.

Running a lease: fetch the ``Action`` (the payload, or its digest), the ``Command`` and the
input root from the CAS, write the input root under ``work_root``, run the step (its
``kata-spec.json``, see ``action.py``) with ``runtime``, then upload the workspace as a
``Tree``, each service's log under ``kata-services/`` and the step's output as the
``stdout`` blob; ``execution_metadata.worker`` names this worker. The small input files it
read from the CAS, or sent there, in the last ``VOUCHED_FOR`` seconds are neither asked
about nor sent again (a step's workspace mostly comes back unchanged); the client takes
the output's copies of its own inputs from its own files (``files.own_copies``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import any_pb2

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from kata.remote._api.google.devtools.remoteworkers.v1test2 import worker_pb2
from kata.remote._api.google.rpc import status_pb2
from kata.remote.cas import RemoteError
from kata.remote.config import RemoteConfig, parse_url
from kata.runtimes.base import WORKSPACE_MODE, Runtime, give_cache_paths, user_ids
from procs import pid_tag
from procs.leftovers import force_rmtree, sweep_dead_dirs

from . import action as act
from . import admit, files
from .connection import connect
from .logstream import LogBuffer, write_stream

LOG = logging.getLogger("kata.worker")
LEASE_PREFIX = "lease-"  # a lease's input root: lease-<worker pid.start ticks>-<random>
# seconds after this worker read a blob from the CAS or sent it there during which a
# result may name it without asking the CAS again (see ``Worker._upload``)
VOUCHED_FOR = 30.0
WORK_PREFIX = "kata-worker-"  # a worker's work root without --state-dir, in the temp dir

# google.rpc.Code values (google/rpc/code.proto)
OK, CANCELLED, INVALID_ARGUMENT, FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 0, 1, 3, 9, 13, 14
LEASE_PENDING, LEASE_ACTIVE, LEASE_COMPLETED, LEASE_CANCELLED = 1, 2, 4, 5
BOT_OK, BOT_TERMINATING = 1, 4  # bots.proto BotStatus
HAND_BACK_SECONDS = 10.0  # the last UpdateBotSession, handing the leases back, waits this long
STOP_SECONDS = 30.0  # then the stopped steps' threads get this long to remove their containers
_SESSION_GONE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
# BuildGrid's answer to a bot whose session a newer one under the same bot id replaced (a
# worker restarted, or another one given the same --name: both would replace the other's
# session for ever, re-queueing each other's steps)
_NAME_TAKEN = "Mismatch between client supplied bot_id/bot_name"
# answers to the first CreateBotSession that retrying cannot change: no Bots service there
# (a cache-only server), an instance it does not have, credentials it refuses
_REFUSED = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _handshake_failed(err: grpc.RpcError) -> bool:
    """gRPC's UNAVAILABLE for a TLS handshake that failed: the server answered, in
    plaintext or with a certificate the CA does not sign; retrying cannot change that."""
    return (err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            and "handshake failed" in (err.details() or "").lower())  # type: ignore[attr-defined]


# what a runtime raises about the step itself (its services, its user, its command, its
# image: one this worker can neither find nor pull), which a local run records as the
# step's failure. An image error used to fail the lease, and the client, which reads a
# failed lease as inputs the CAS lost, sent the step once more before failing it with the
# worker's message. Anything else fails the lease, but for its containerd going away
# (_RUNTIME_AWAY), which hands the lease back
_STEP_REASONS = frozenset({"runtime.bad_user", "runtime.start_failed", "runtime.bad_step",
                           "config.bad_value"})
_NOT_THE_STEPS = frozenset({"image.pull_stopped"})  # a cancelled pull: the lease's end
# what the step's own workspace may hold that no REAPI tree can (files.pack_dir)
_UNSENDABLE = frozenset({"remote.unsupported_name", "remote.unsupported_file"})


# what a runtime raises when this worker's containerd went away (killed, crashed): the
# lease is handed back UNAVAILABLE, which BuildGrid re-queues, and the daemon restarted
_RUNTIME_AWAY = frozenset({"runtime.unavailable", "runtime.unreachable"})
RECOVER_SECONDS = 30.0  # how long the worker waits for its restarted containerd to answer


def steps_own(reason: str) -> bool:
    """True when a runtime error with ``reason`` is the step's own failure."""
    if reason in _NOT_THE_STEPS:
        return False
    return reason.startswith(("service.", "image.")) or reason in _STEP_REASONS


@dataclass(slots=True)
class _Job:
    lease: bots_pb2.Lease
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    status: status_pb2.Status | None = None  # set when done
    result: re_pb2.ActionResult | None = None
    action_hash: str = ""  # the action digest's hash (names its log stream)
    log: LogBuffer = field(default_factory=LogBuffer)  # the step's output as it grows
    writer: threading.Thread | None = None  # writes ``log`` to the job's log stream
    sent: files.Packed | None = None  # the workspace sent back, kept once reported


class Worker:
    """One bot: ``serve(stop)`` runs until ``stop`` is set (see the module docstring).

    name: the bot id (unique among the scheduler's bots); slots: leases run at once;
    poll: seconds one UpdateBotSession may wait for work (keep it under the scheduler's
    keep-alive timeout); work_root: where input roots are written (one directory per
    lease, removed after); blob_cache: bytes of blobs kept in memory (``files.BlobCache``;
    0: none kept, every input is read from the CAS); policy: the host config's
    ``worker:`` section (``admit.WorkerPolicy``: ``network: host`` refused by default).
    """

    def __init__(self, url: "str | RemoteConfig", runtime: Runtime, *, name: str,
                 instance: str = "", slots: int = 1, work_root: Path, poll: float = 20.0,
                 logstream: str | None = None, containerd: str | None = None,
                 blob_cache: int = 64 << 20,
                 restart_containerd: Callable[[], object] | None = None,
                 policy: admit.WorkerPolicy = admit.WorkerPolicy()) -> None:
        if slots < 1:
            raise KataError("worker.bad_slots", f"--slots must be at least 1, not {slots}")
        if not isinstance(url, str):  # the host config's remote: TLS files, token, instance
            instance = url.instance
        self.url, self.runtime, self.name = url if isinstance(url, str) else url.url, \
            runtime, name
        self.instance, self.slots, self.poll = instance, slots, poll
        self.work_root = Path(work_root)
        self.containerd = containerd  # its socket, for the hint when an image is missing
        # starts this worker's own containerd again after it died (None: not its own)
        self.restart_containerd = restart_containerd
        self._recovering = threading.Lock()
        self.policy = policy  # what its host config lets an action do (admit.py)
        self._remote = connect(url, instance, where="--executor")
        self.cas = self._remote.cas
        self._md = self._remote.metadata
        self._bots = bots_pb2_grpc.BotsStub(self._remote.channel)
        # where the step's output streams to (logstream.py); the executor's own by default
        self._logs = None
        if logstream and isinstance(url, str):
            self._logs = connect(logstream, instance, where="--logstream")
        elif logstream:  # with the section's TLS files and token, as the client does
            target, tls = parse_url(logstream, where="--logstream")
            self._logs = connect(dataclasses.replace(url, url=logstream, target=target,
                                                     tls=tls, logstream=None),
                                 where="--logstream")
        # action hash -> the write names of its stdout and stderr log streams
        self._write_names: dict[str, tuple[str, str]] = {}
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()  # a lease completed: report it now
        # blobs read or sent: a chain's next input root is mostly the last step's output
        self._blobs = files.BlobCache(limit=blob_cache, largest=min(1 << 20, blob_cache))
        self._wake: threading.Event | None = None  # the UpdateBotSession in flight's
        # blob hash -> when (monotonic) this worker last read it from the CAS or sent it
        self._vouched: dict[str, float] = {}

    # -- the session loop ----------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        self.work_root.mkdir(parents=True, exist_ok=True)
        sweep_dead_workdirs(self.work_root, LEASE_PREFIX)  # a killed worker's input roots
        session: bots_pb2.BotSession | None = None
        opened = False  # has the scheduler ever taken this worker? (then: retry anything)
        waited = False  # has it said what to check while it waits for a first answer?
        delay = 0.2
        try:
            while not stop.is_set():
                try:
                    if session is None:
                        session = self._create(stop)
                        if session is None:
                            break  # stopped while it waited
                        opened = True
                        LOG.info("bot session %s open", session.name)
                    else:
                        if self._busy():  # no room for work and nothing to report:
                            until = time.monotonic() + self.poll / 2  # a heartbeat, or a
                            while not self._changed.wait(  # result, or a stop (a second)
                                    min(1.0, max(0.0, until - time.monotonic()))) \
                                    and not stop.is_set() and time.monotonic() < until:
                                pass
                            if stop.is_set():
                                break
                        reply = self._update(session, stop)
                        if reply is None:
                            continue  # cut short: report what changed
                        session = reply
                    self._take(session.leases)
                    self._stream_logs()
                    delay = 0.2
                except grpc.RpcError as err:
                    code = err.code()  # type: ignore[attr-defined]
                    if session is not None and _NAME_TAKEN in (err.details() or ""):  # type: ignore[attr-defined]
                        raise KataError("worker.name_taken", f"another worker opened a "
                                        f"session at {self.url} under this one's name "
                                        f"{self.name!r}, which replaced this one's: give "
                                        "each worker its own --name (this one stops; the "
                                        "scheduler re-queued its steps)", exit_code=2) from None
                    if session is not None and code in _SESSION_GONE:
                        LOG.warning("the scheduler dropped session %s (%s): opening a new one",
                                    session.name, err.details())  # type: ignore[attr-defined]
                        self._drop_all()
                        session = None
                        continue
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED and session is not None:
                        continue  # a long poll that found no work
                    # (a CreateBotSession past its deadline: a scheduler that took the
                    # connection and never answered, said below as any other failure)
                    if not opened and (code in _REFUSED or _handshake_failed(err)):
                        raise KataError("worker.refused", self._refusal(code, err.details()),  # type: ignore[attr-defined]
                                        exit_code=2) from None
                    if not opened and not waited:  # once: a wrong port looks like this
                        waited = True
                        LOG.warning("scheduler at %s: %s: %s; waiting for it (if it never "
                                    "answers, check --executor's host and port: `kata doctor "
                                    "--worker-executor %s` says what to fix); retrying in "
                                    "%.1fs", self.url, code.name, err.details(),  # type: ignore[attr-defined]
                                    self.url, delay)
                    else:
                        LOG.warning("scheduler at %s: %s: %s; retrying in %.1fs", self.url,
                                    code.name, err.details(), delay)  # type: ignore[attr-defined]
                    stop.wait(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            if stop.is_set():
                with self._lock:
                    running = len(self._jobs)
                LOG.info("stopping: %d lease(s) held%s", running,
                         ", handing them back to the scheduler" if running and session
                         else "")
            if session is not None and stop.is_set():
                self._hand_back(session)
            else:
                self._drop_all()
            self._remote.close()
            if self._logs is not None:
                self._logs.close()

    def _create(self, stop: threading.Event) -> bots_pb2.BotSession | None:
        """CreateBotSession (it waits up to ``poll`` for work); None when ``stop`` was set
        meanwhile (noticed within half a second: a scheduler that never answers does not
        hold a stopping worker for its poll). grpc.RpcError as the call raises it."""
        future = self._bots.CreateBotSession.future(bots_pb2.CreateBotSessionRequest(
            parent=self.instance, bot_session=self._session()), timeout=self.poll,
            metadata=self._md)
        while not future.done():
            if stop.wait(0.5) and future.cancel():
                return None
        return future.result()

    def _refusal(self, code: grpc.StatusCode, detail: str | None) -> str:
        """The one line a worker the scheduler can never take exits with: what the answer
        means and the one setting to change (docs/remote.md, "Workers")."""
        said = f"the scheduler at {self.url} refuses this worker ({code.name}: {detail})"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return (f"{said}: it has no Bots service (a cache-only server, such as the "
                    "cache-only BuildGrid of docs/remote.md): point --executor at the "
                    "scheduler, a BuildGrid with !execution")
        if code == grpc.StatusCode.INVALID_ARGUMENT and "instance" in (detail or "").lower():
            return (f"{said}: it does not know the instance {self.instance!r}: give "
                    "--instance (or the host config's remote.instance) a name it serves, "
                    "as its configuration's instances: list it")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return (f"{said}: it refused the credentials: set remote.token_file in this "
                    "host's config to a token it accepts (BuildGrid's jwt: one signed with "
                    "its secret, not expired; docs/remote.md)")
        if code == grpc.StatusCode.UNAVAILABLE:  # a TLS handshake that failed
            return (f"the TLS handshake with the scheduler at {self.url} failed ({detail}): "
                    "if it speaks plaintext, use grpc:// instead of grpcs://; otherwise "
                    "give remote.tls.ca the CA that signed its certificate")
        return f"{said}: check --executor, --instance ({self.instance!r}) and the token"

    def _busy(self) -> bool:
        """Every slot runs a lease and none has a result to report (the scheduler answers
        such a bot at once instead of long-polling: do not spin)."""
        with self._lock:
            return len(self._jobs) >= self.slots and all(
                j.status is None for j in self._jobs.values())

    def _session(self, name: str = "", version: str = "") -> bots_pb2.BotSession:
        device = worker_pb2.Device(handle=self.name, properties=[
            worker_pb2.Device.Property(key="OSFamily", value=act.OS_FAMILY),
            worker_pb2.Device.Property(key="ISA", value=act.ISA)])
        worker = worker_pb2.Worker(devices=[device], configs=[
            worker_pb2.Worker.Config(key="capacity", value=str(self.slots))])
        session = bots_pb2.BotSession(name=name, bot_id=self.name, status=BOT_OK,
                                      worker=worker, version=version)
        with self._lock:
            for job in self._jobs.values():
                lease = bots_pb2.Lease(id=job.lease.id, payload=job.lease.payload)
                if job.status is not None:
                    lease.state = LEASE_COMPLETED
                    lease.status.CopyFrom(job.status)
                    if job.result is not None:
                        lease.result.Pack(job.result)
                else:
                    lease.state = LEASE_ACTIVE
                session.leases.append(lease)
        return session

    def _update(self, session: bots_pb2.BotSession,
                stop: threading.Event) -> bots_pb2.BotSession | None:
        """One UpdateBotSession; None when it was cut short because a lease completed (or
        ``stop`` was set: noticed within a second)."""
        wake = threading.Event()  # this call's own: a late callback of a cancelled one
        with self._lock:          # must not cut the next one short
            self._wake = wake     # set by the answer, or by a lease that completes
        self._changed.clear()
        request = bots_pb2.UpdateBotSessionRequest(
            name=session.name, bot_session=self._session(session.name, session.version))
        reported = {lease.id for lease in request.bot_session.leases
                    if lease.state == LEASE_COMPLETED}
        future = self._bots.UpdateBotSession.future(request, timeout=self.poll,
                                                    metadata=self._md)
        future.add_done_callback(lambda _f: wake.set())
        while True:
            wake.wait(1.0)
            wake.clear()
            if future.done():
                break
            if (stop.is_set() or self._unreported(reported)) and future.cancel():
                return None
        try:
            reply = future.result()
        except grpc.FutureCancelledError:
            return None
        self._acknowledged(request.bot_session.leases, reply.leases)
        self._write_names = _write_names(future.trailing_metadata() or ())
        return reply

    def _stream_logs(self) -> None:
        """Start writing each running job's output to its log stream, once its name is
        known (the job may have started before)."""
        channel = (self._logs or self._remote).channel
        with self._lock:
            for job in self._jobs.values():
                stdout, stderr = self._write_names.get(job.action_hash, ("", ""))
                if stdout and job.writer is None and job.status is None:
                    job.writer = write_stream(channel, stdout, job.log, self._md)
                    if stderr:  # merged into stdout: finished empty, so readers end
                        empty = LogBuffer()
                        empty.close()
                        write_stream(channel, stderr, empty, self._md)

    def _unreported(self, reported: set[str]) -> bool:
        with self._lock:
            return any(j.status is not None and lease_id not in reported
                       for lease_id, j in self._jobs.items())

    def _acknowledged(self, sent, got) -> None:  # noqa: ANN001
        """Forget completed leases the scheduler took (absent from its reply)."""
        kept = {lease.id for lease in got}
        with self._lock:
            for lease in sent:
                if lease.state == LEASE_COMPLETED and lease.id not in kept:
                    self._jobs.pop(lease.id, None)

    def _take(self, leases) -> None:  # noqa: ANN001
        wanted = {}
        for lease in leases:
            wanted[lease.id] = lease
        with self._lock:
            for lease_id, job in list(self._jobs.items()):
                lease = wanted.get(lease_id)
                if job.status is None and (lease is None or lease.state == LEASE_CANCELLED):
                    LOG.info("lease %s was withdrawn: stopping it", lease_id)
                    job.cancel.set()
                    self._jobs.pop(lease_id)
            for lease_id, lease in wanted.items():
                if lease_id in self._jobs or lease.state not in (LEASE_PENDING, LEASE_ACTIVE):
                    continue
                LOG.info("lease %s: starting", lease_id)
                job = _Job(lease=lease, action_hash=_action_hash(lease.payload))
                job.thread = threading.Thread(target=self._run, args=(job,),
                                              name=f"kata-lease-{lease_id[-8:]}", daemon=True)
                self._jobs[lease_id] = job
                job.thread.start()

    def _drop_all(self) -> list[_Job]:
        """Stop every running lease (its thread removes its container and input root);
        forget them all. Returns the jobs it held."""
        with self._lock:
            jobs = list(self._jobs.values())
            for job in jobs:
                job.cancel.set()
            self._jobs.clear()
        return jobs

    def _hand_back(self, session: bots_pb2.BotSession) -> None:
        """On stop (SIGTERM, SIGINT): stop the running steps and hand their leases back at
        once, so the scheduler gives them to another worker now rather than after its
        bot-session keep-alive. One last UpdateBotSession with the bot ``BOT_TERMINATING``
        (BuildGrid then assigns it nothing new) reports each unfinished lease
        ``COMPLETED`` with status UNAVAILABLE, which BuildGrid re-queues (its retryable
        codes; a bot may not set ``CANCELLED``, bots.proto), and each finished but
        unreported one with its result. A scheduler that does not answer within
        HAND_BACK_SECONDS re-queues them after the keep-alive, as for a dead worker.
        Then waits up to STOP_SECONDS for the stopped steps' cleanup."""
        jobs = self._drop_all()
        reply = bots_pb2.BotSession(name=session.name, bot_id=self.name,
                                    status=BOT_TERMINATING, worker=self._session().worker,
                                    version=session.version)
        stopped = []
        for job in jobs:
            lease = bots_pb2.Lease(id=job.lease.id, payload=job.lease.payload,
                                   state=LEASE_COMPLETED)
            if job.status is not None:  # done before the stop: its result stands
                lease.status.CopyFrom(job.status)
                if job.result is not None:
                    lease.result.Pack(job.result)
            else:
                lease.status.CopyFrom(status_pb2.Status(
                    code=UNAVAILABLE, message=f"worker {self.name} stopped before the step "
                    "ended: the scheduler gives it to another worker"))
                stopped.append(job.lease.id)
            reply.leases.append(lease)
        try:
            self._bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
                name=session.name, bot_session=reply), timeout=HAND_BACK_SECONDS,
                metadata=self._md)
        except grpc.RpcError as err:
            LOG.warning("could not hand back %d lease(s) (%s: %s): the scheduler re-queues "
                        "them after its keep-alive timeout", len(jobs),
                        err.code().name, err.details())  # type: ignore[attr-defined]
        else:
            if jobs:
                LOG.info("stopping: handed back %d lease(s) (%d stopped mid-step: %s)",
                         len(jobs), len(stopped), ", ".join(stopped) or "none")
            else:  # the session ends now, not at the scheduler's keep-alive
                LOG.info("stopping: told the scheduler (bot session %s ends)", session.name)
        deadline = time.monotonic() + STOP_SECONDS
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
        late = [job.lease.id for job in jobs if job.thread is not None and job.thread.is_alive()]
        if late:
            LOG.warning("stopping: %d step(s) still removing their containers after %.0fs "
                        "(%s): the next worker on this containerd sweeps what they leave",
                        len(late), STOP_SECONDS, ", ".join(late))

    # -- one lease -------------------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        meta = re_pb2.ExecutedActionMetadata(worker=self.name)  # REAPI's timeline of it
        meta.worker_start_timestamp.GetCurrentTime()
        work = None  # the lease's input root: removed after the result is reported
        try:
            work = Path(tempfile.mkdtemp(prefix=f"{LEASE_PREFIX}{pid_tag()}-",
                                         dir=self.work_root))
            job.log.spill_dir = str(work)  # a long log goes there, swept with the lease
            result = self._execute(job, meta, work)
            status = status_pb2.Status(code=OK)
        except KataError as err:
            LOG.warning("lease %s failed: %s", job.lease.id, err.message)
            code = INVALID_ARGUMENT if err.reason in ("remote.bad_action", "worker.policy") \
                else FAILED_PRECONDITION
            if err.reason in _RUNTIME_AWAY:  # this worker's fault, not the step's
                self._recover_runtime()
                code = UNAVAILABLE  # BuildGrid runs it again (here, or on another worker)
            result, status = None, status_pb2.Status(code=code, message=self._explain(err))
        except RemoteError as err:
            result = None
            if err.code == "NOT_FOUND" or err.reason == "remote.bad_answer":
                # an input the CAS lacks, or whose bytes are not its digest's (a lie
                # about its size): REAPI's missing input, which no other worker can mend
                # (the client sends its inputs again once; BuildGrid does not retry it)
                LOG.warning("lease %s failed: CAS: %s", job.lease.id, err.message)
                status = status_pb2.Status(code=FAILED_PRECONDITION,
                                           message=f"CAS: {err.message}")
            else:  # the CAS went away: let the scheduler try again
                status = status_pb2.Status(code=UNAVAILABLE, message=f"CAS: {err.message}")
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                LOG.exception("lease %s crashed", job.lease.id)
                result, status = None, status_pb2.Status(code=INTERNAL, message=repr(err))
            else:  # this worker's disk, not the step: BuildGrid may run it elsewhere
                message = (f"worker {self.name}: its disk is full ({err.strerror}) under "
                           f"{self.work_root}: free space there, or give the worker a "
                           "larger --state-dir")
                LOG.warning("lease %s failed: %s", job.lease.id, message)
                result, status = None, status_pb2.Status(code=UNAVAILABLE, message=message)
        except Exception as err:  # noqa: BLE001 - reported to the scheduler, never lost
            LOG.exception("lease %s crashed", job.lease.id)
            result, status = None, status_pb2.Status(code=INTERNAL, message=repr(err))
        finally:
            job.log.close()
        if not job.cancel.is_set():  # else withdrawn: nobody waits for it
            with self._lock:
                job.result, job.status = result, status
            LOG.info("lease %s: done (%s)", job.lease.id,
                     "ok" if status.code == OK else status.message)
            self._changed.set()
            with self._lock:
                wake = self._wake
            if wake is not None:
                wake.set()  # cut the long poll short: report it now
        if job.sent is not None:  # after the report: off the step's path
            self._keep(job.sent)
        job.log.discard()
        if work is not None:
            force_rmtree(str(work))  # any depth the step nested its workspace to

    def _recover_runtime(self) -> None:
        """After this worker's containerd stopped answering: start it again (its own
        daemon, same socket) and wait until it answers, so the lease handed back meets a
        working runtime when the scheduler gives it here again. One thread at a time;
        never raises (a containerd that stays away fails the next leases the same way)."""
        ping = getattr(getattr(self.runtime, "client", None), "ping", None)
        with self._recovering:
            deadline = time.monotonic() + RECOVER_SECONDS
            restarted = False
            while True:
                try:
                    if ping is not None:
                        ping(timeout=2)
                    if restarted:
                        # what the killed daemon left half-made (a snapshot directory its
                        # metadata never committed) goes when a prepare meets it
                        # (Client.make_snapshot): containerd 1.6 has no Cleanup for it
                        LOG.warning("containerd answers again")
                    return
                except KataError as err:
                    if time.monotonic() > deadline:
                        LOG.warning("containerd is still not answering: %s", err.message)
                        return
                    if not restarted and self.restart_containerd is not None:
                        LOG.warning("containerd is not answering: starting it again")
                        try:
                            self.restart_containerd()
                        except KataError as err2:
                            LOG.warning("could not start containerd: %s", err2.message)
                            return
                        restarted = True
                time.sleep(0.2)

    def _action(self, payload: any_pb2.Any) -> re_pb2.Action:
        action = re_pb2.Action()
        if payload.Is(re_pb2.Action.DESCRIPTOR):
            _parse(action, payload.value, "the Action")
            return action
        digest = re_pb2.Digest()
        if not payload.Unpack(digest):
            raise KataError("remote.bad_action", f"a lease payload of type "
                            f"{payload.type_url} is neither an Action nor its digest")
        admit.check_digest(digest, "the Action")
        _parse(action, self._blobs.read_many(self.cas, [digest])[files.key(digest)],
               "the Action")
        return action

    def _explain(self, err: KataError) -> str:
        """What the client prints for a lease that failed before its step ran: an image
        this worker could neither find nor pull names the worker and how to import it."""
        if err.reason == "worker.policy":  # with several workers: whose config to change
            return f"worker {self.name}: {err.message}"
        if err.reason == "worker.no_space":  # this worker's disk, as a full one says
            return (f"worker {self.name}: its disk is full ({err.message}) under "
                    f"{self.work_root}: free space there, or give the worker a larger "
                    "--state-dir")
        if not err.reason.startswith("image."):
            return err.message
        if err.reason == "image.refused":  # a confined pull (admit.WorkerPolicy)
            return (f"worker {self.name}: {err.message}; a worker's pulls are confined as an "
                    "untrusted run's are: declare the registry under `registries:` in the "
                    "worker's host config, or set `worker.allow_private_registries: true` "
                    "there (SECURITY.md)")
        where = f"kata --containerd {self.containerd}" if self.containerd else "kata"
        return (f"worker {self.name}: {err.message}; a worker pulls each step's image by "
                "digest from its registry, so an imported image (kata.local/...) must be "
                f"imported on the worker too: `{where} image import FILE`")

    def _execute(self, job: _Job, meta: re_pb2.ExecutedActionMetadata,
                 work: Path) -> re_pb2.ActionResult:
        meta.input_fetch_start_timestamp.GetCurrentTime()
        action = self._action(job.lease.payload)
        # anyone who reaches the scheduler can send an action: nothing of it is written
        # or run before it is checked (admit.py)
        admit.check_digest(action.command_digest, "the Command")
        admit.check_digest(action.input_root_digest, "the input root")
        cas = _Vouching(self.cas, self._vouch)  # the input blobs it reads, noted
        blobs = self._blobs.read_many(cas, [action.command_digest, action.input_root_digest])
        command = re_pb2.Command()
        _parse(command, blobs[files.key(action.command_digest)], "the Command")
        props = admit.check_action(action, command)
        directories = files.directories(cas, action.input_root_digest, known=blobs,
                                        cache=self._blobs)
        inputs = work / "root"
        workspace = inputs / act.WORKSPACE_DIR
        admit.check_input_root(action.input_root_digest, directories,
                               dest_len=len(os.fsencode(inputs)) + 1,
                               free_bytes=shutil.disk_usage(work).free)
        root = directories[files.key(action.input_root_digest)]
        spec_node = next(f for f in root.files if f.name == act.SPEC_FILE)
        if spec_node.digest.size_bytes > 1 << 20:
            raise KataError("remote.bad_action", f"refused: {act.SPEC_FILE} is "
                            f"{spec_node.digest.size_bytes:,} bytes (a kata action's is a "
                            "few KiB)", exit_code=1)
        spec_bytes = self._blobs.read_many(cas, [spec_node.digest])[files.key(spec_node.digest)]
        spec = act.read_spec(command, spec_bytes, str(workspace),
                             {"kata.worker": self.name, "kata.lease": job.lease.id})
        admit.check_spec(spec, props, self.policy)
        inputs.mkdir()
        # read-only, as a local step sees its inputs and dependencies (the lower layers
        # of its overlay); the workspace root is writable, as locally
        files.materialise(cas, root, directories, inputs, readonly=True, cache=self._blobs)
        input_files = {files.key(f.digest) for d in directories.values() for f in d.files
                       if f.digest.size_bytes <= self.cas.batch_limit}
        meta.input_fetch_completed_timestamp.GetCurrentTime()
        # a directory the worker itself just made (check_input_root): never a link
        # whose chmod, chown or bind mount would reach the worker's own files
        assert stat.S_ISDIR(os.lstat(workspace).st_mode), workspace
        workspace.chmod(WORKSPACE_MODE)
        if (owner := user_ids(spec.user)) is not None:  # its root is theirs, as locally
            os.chown(workspace, *owner)
            # and its restored cache: materialised read-only as root's, as inputs are
            give_cache_paths(workspace, spec.cache_paths, owner)
        log_lock = threading.Lock()
        # each service's log as the step's own: past 1 MiB in a file in the lease's root
        service_logs: dict[str, LogBuffer] = {}

        def service_log(name: str) -> LogBuffer:
            with log_lock:
                if name not in service_logs:
                    service_logs[name] = LogBuffer()
                    service_logs[name].spill_dir = str(work)
                return service_logs[name]

        for service in spec.services:
            service_log(service.name)

        # the step's own stderr joins its stdout in the container (MERGE_STDERR): what
        # comes on "stderr" is the runtime's notes (a limit the step hit, a service that
        # exited), which a local run labels stderr after the step's output. They go back
        # as the result's stderr, which the client hands on so, after the stdout
        notes = LogBuffer()
        notes.spill_dir = str(work)

        def sink(stream: str, data: bytes) -> None:
            (notes if stream == "stderr" else job.log).append(data)

        sink.raw = True  # type: ignore[attr-defined]

        def service_sink(name: str, stream: str, line: bytes) -> None:
            service_log(name).append(line + b"\n")

        meta.execution_start_timestamp.GetCurrentTime()
        refused: KataError | None = None
        try:
            if spec.services:
                exit_status = self.runtime.run(spec, sink, job.cancel,
                                               service_sink=service_sink)
            else:
                exit_status = self.runtime.run(spec, sink, job.cancel)
        except KataError as err:
            if not steps_own(err.reason):  # this worker's fault (its containerd)
                raise
            # what the step met here (a service not ready, a bad user, an image it cannot
            # pull) is its result, as locally: sent back with its output and service
            # logs, the reason kept, an image's message naming this worker
            refused, exit_status = KataError(err.reason, self._explain(err), obj=err.obj,
                                             exit_code=err.exit_code), 1
        meta.execution_completed_timestamp.GetCurrentTime()
        act.add_applied_limits(meta, spec)  # its defaults are this worker's, not the client's
        job.log.close()  # the stream is finished before the result is reported
        with self._lock:
            writer = job.writer
        if writer is not None:
            writer.join(5.0)
        try:
            try:
                return self._upload(job, workspace, job.log, service_logs, exit_status, meta,
                                    input_files, notes=notes, refused=refused)
            except KataError as err:
                if err.reason not in _UNSENDABLE or refused is not None:
                    raise
                unsendable = err
            # the step left what REAPI cannot carry (a name that is not UTF-8): its own
            # failure, sent back once with its log and an empty workspace. As a failed
            # lease the client took it for inputs the CAS lost and sent the step again
            unsent = work / "unsent"
            unsent.mkdir()
            return self._upload(job, unsent, job.log, service_logs, 1, meta, input_files,
                                notes=notes, refused=unsendable)
        finally:
            for buffer in (*service_logs.values(), notes):
                buffer.discard()

    def _upload(self, job: _Job, workspace: Path, log: LogBuffer,
                service_logs: dict[str, LogBuffer], exit_status: int,
                meta: re_pb2.ExecutedActionMetadata,
                input_files: set[str] = frozenset(),
                notes: LogBuffer | None = None,
                refused: KataError | None = None) -> re_pb2.ActionResult:
        meta.output_upload_start_timestamp.GetCurrentTime()
        special: list[str] = []  # FIFOs, sockets: no tree holds them; the client re-makes them
        packed = files.pack_dir(workspace, special=special)
        tree = files.message_bytes(files.tree_message(packed))
        services = re_pb2.Directory()
        blobs: dict[str, bytes] = {}
        sent_files = dict(packed.files)
        logs: set[str] = set()  # the logs' hashes: always sent (see below)

        def add_log(buffer: LogBuffer) -> re_pb2.Digest:
            buffer.close()
            digest, size = buffer.digest
            logs.add(digest)
            if buffer.path is None:
                blobs[digest] = buffer.data()
            else:  # streamed from its file (a log of GiBs is never held in memory)
                sent_files[digest] = buffer.path
            return re_pb2.Digest(hash=digest, size_bytes=size)

        for name in sorted(service_logs):
            services.files.add(name=f"{name}.log", digest=add_log(service_logs[name]))
        services_tree = files.message_bytes(re_pb2.Tree(root=services))
        stdout = add_log(log)
        stderr = add_log(notes) if notes is not None and notes.digest[1] else None
        blobs.update({files.key(files.digest_of(tree)): tree,
                      files.key(files.digest_of(services_tree)): services_tree})
        listed = "\0".join(special).encode()
        if special:  # sent with the rest: one call
            blobs[files.key(files.digest_of(listed))] = listed
        error = act.error_document(refused) if refused is not None else b""
        if error:
            blobs[files.key(files.digest_of(error))] = error
        # neither asked about nor sent: the small input files this worker read from the
        # CAS, or sent, in the last VOUCHED_FOR seconds (most of a workspace comes back
        # unchanged). Should the CAS lose one in between, the client, which sent it as
        # an input, has it: it takes the output's copies of its inputs from its own
        # (files.own_copies), and a later step that lacks it fails on its worker and is
        # sent again (client.py, inputs_lost). All else: FindMissingBlobs decides
        # (or, for a few KiB in all, sending it; files.upload)
        # (the result's own blobs are always sent: a log may hold an input's very bytes,
        # and the client reads it from the CAS)
        vouched = self._recent(input_files) - blobs.keys() - logs
        files.upload(self.cas, blobs, sent_files, set(vouched))
        self._vouch((blobs.keys() | sent_files.keys()) - vouched)
        job.sent = packed
        meta.output_upload_completed_timestamp.GetCurrentTime()
        result = re_pb2.ActionResult(exit_code=exit_status, stdout_digest=stdout)
        if stderr is not None:
            result.stderr_digest.CopyFrom(stderr)
        result.output_directories.add(path=act.WORKSPACE_DIR, tree_digest=files.digest_of(tree))
        result.output_directories.add(path=act.SERVICES_DIR,
                                      tree_digest=files.digest_of(services_tree))
        if special:
            result.output_files.add(path=act.SPECIAL_FILE, digest=files.digest_of(listed))
        if error:
            result.output_files.add(path=act.ERROR_FILE, digest=files.digest_of(error))
        meta.worker_completed_timestamp.GetCurrentTime()
        result.execution_metadata.CopyFrom(meta)
        return result

    def _vouch(self, hashes) -> None:  # noqa: ANN001 - hashes just read from or sent to the CAS
        now = time.monotonic()
        with self._lock:
            for h in hashes:
                self._vouched[h] = now
            if len(self._vouched) > 200_000:  # forget what is too old to matter
                self._vouched = {h: t for h, t in self._vouched.items()
                                 if t > now - VOUCHED_FOR}

    def _recent(self, hashes: set[str]) -> set[str]:
        """Those of ``hashes`` read from or sent to the CAS in the last VOUCHED_FOR s."""
        since = time.monotonic() - VOUCHED_FOR
        with self._lock:
            return {h for h in hashes if self._vouched.get(h, since - 1) >= since}

    def _keep(self, packed: files.Packed) -> None:
        """Keep the workspace just sent in the blob cache: the next step of a chain gets
        it (or most of it) back as its input root. A file is kept only when its bytes
        still hash to the digest it was sent under."""
        for h, data in packed.directories.items():
            self._blobs.put(h, data)
        for h, path in packed.files.items():
            try:
                if self._blobs.get(h) is not None or os.path.getsize(path) > self._blobs.largest:
                    continue
                data = Path(path).read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == h:
                self._blobs.put(h, data)


class _Vouching:
    """A ``Cas`` whose ``read_many`` notes each blob it answered (``note(hashes)``): what a
    lease read from the CAS just now."""

    def __init__(self, cas, note) -> None:  # noqa: ANN001
        self._cas, self._note = cas, note

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._cas, name)

    def read_many(self, digests) -> dict[str, bytes]:  # noqa: ANN001
        out = self._cas.read_many(digests)
        self._note(out.keys())
        return out


def sweep_dead_workdirs(parent: Path, prefix: str) -> None:
    """Remove the directories ``<prefix><pid>.<start ticks>-*`` under ``parent`` whose
    process is gone (``procs.leftovers.sweep_dead_dirs``): what a killed worker left (a
    lease's input root holds the step's whole workspace; a worker's own work root, without
    ``--state-dir``). Two workers on one state dir leave each other alone."""
    for path in sweep_dead_dirs(str(parent), prefix):
        LOG.info("removing %s, left by a worker that is gone", path)


def default_name() -> str:
    """``HOST-PID``: unique among the bots of one scheduler while the process lives."""
    return f"{os.uname().nodename}-{os.getpid()}"



def _parse(message, data: bytes, what: str) -> None:  # noqa: ANN001 - a protobuf message
    """``message.ParseFromString(data)``; KataError remote.bad_action when it is not one."""
    from google.protobuf.message import DecodeError

    try:
        message.ParseFromString(data)
    except DecodeError as err:
        raise KataError("remote.bad_action", f"refused: {what} is not a protobuf message of "
                        f"its type ({err})", exit_code=1) from None


def _action_hash(payload: any_pb2.Any) -> str:
    """The hash of the action a lease payload names (its digest, or the Action itself)."""
    if payload.Is(re_pb2.Action.DESCRIPTOR):
        return files.digest_of(payload.value).hash
    digest = re_pb2.Digest()
    return digest.hash if payload.Unpack(digest) else ""


def _write_names(metadata) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    """action hash -> the stdout and stderr write names, from BuildGrid's
    ``executeoperationmetadata-bin`` trailing metadata (one ``ExecuteOperationMetadata``
    per lease of the session)."""
    names = {}
    for key, value in metadata:
        if key == "executeoperationmetadata-bin":
            meta = re_pb2.ExecuteOperationMetadata()
            try:
                meta.ParseFromString(value)
            except Exception:  # noqa: BLE001 - not ours to judge; no stream then
                continue
            if meta.stdout_stream_name:
                names[meta.action_digest.hash] = (meta.stdout_stream_name,
                                                  meta.stderr_stream_name)
    return names
