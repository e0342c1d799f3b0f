"""Run one step as a containerd task, exactly the sequence measured in the notes.

container (OCI spec, naming its snapshot: containerd's gc counts it as referenced, so
no lease is needed) → snapshot (Prepare from the image's top chain ID) → FIFOs opened
for reading → Tasks.Create (rootfs = the snapshot's mounts) → Wait (started first) →
Start → exit → Tasks.Delete (waits for the output copy) → Snapshots.Remove →
Containers.Delete.
Each step is released in reverse order on every path; a task that cannot be
deleted keeps its container (deleting it would orphan the task).
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import any_pb2

from kata.errors import KataError
from kata.oci_runtime import OciRuntime
from kata.resources import effective

from ..base import CANCEL_EXIT, DISK_EXIT, OOM_EXIT, TIMEOUT_EXIT, OutputSink, StepSpec, Stream
from ..diskguard import Ticket
from .cleanup import Cleanup
from .client import SNAPSHOTTER, Client, ContainerdError, containers_pb2, grpc, snapshots_pb2, tasks_pb2
from .images import RunImage
from .network import CniNetwork, NetnsPool
from .sandbox import oom_killed, pids_exhausted, remove_cgroup
from .seccompbpf import bpf_annotations
from .shimgroup import GROUP_ANNOTATION, ShimGroup
from .spec import SPEC_TYPE_URL, build_spec, cgroup_path, shared_hosts_file, spec_bytes

log = logging.getLogger("kata.runtime")
RUNTIME_NAME = "io.containerd.runc.v2"
OPTIONS_TYPE_URL = "containerd.runc.v1.Options"  # the gogo name the shim's typeurl resolves
READ_SIZE = 1 << 16
MAX_LINE = 1 << 20
OUTPUT_END_WAIT = 0.1  # seconds to wait for output to end before deleting the task for it  # a longer line is delivered in pieces of about this size


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNet:
    """What the containers of one pod share: a network namespace and an /etc/hosts."""

    netns: str | None  # a path to join; None: the host's network (mode "host")
    hosts_file: str
    resolv: bool = True  # bind the host's resolv.conf (not for a loopback-only pod)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    fifo_root: Path  # FIFOs live under fifo_root/<owner>/<container id>/
    stop_grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    network: CniNetwork | None = None  # network "default"; None: a bare netns like "none"
    netns_pool: NetnsPool | None = None  # a step's own "default" namespace comes from here
    runtime_options: any_pb2.Any | None = None  # the shim's (runtime_options()); None: runc
    # hand the runtime the seccomp profile compiled, in place of its rules (crun only:
    # seccompbpf.py)
    precompiled_seccomp: bool = False
    # the runtime's one shim for all its containers (shimgroup.py); None: a shim each
    shim_group: ShimGroup | None = None
    # set on a second Ctrl-C: cancelled containers get SIGKILL without their stop_grace
    hurry: threading.Event | None = None
    # where the /etc/hosts of steps without services is kept (spec.shared_hosts_file)
    etc_dir: Path | None = None
    # the containers' OCI rlimits (spec.task_rlimits: under the shim's ceiling); None:
    # spec.host_rlimits, this process's
    rlimits: list | None = None
    # the step's claim on the runtime's disk guard (diskguard.py): each container adds its
    # writable layer; tripped, the step is killed (DISK_EXIT). None: no reserve kept
    disk: Ticket | None = None

    def hosts_file(self, step: StepSpec) -> str | None:
        """The /etc/hosts a step outside a pod binds: its own hostname and localhost, or
        (network ``host``, or no ``etc_dir``) None."""
        if step.network == "host" or self.etc_dir is None:
            return None
        return shared_hosts_file(self.etc_dir, step.hostname)

    def grace(self, exited: threading.Event, seconds: float) -> bool:
        """``exited.wait(seconds)``, cut short once ``hurry`` is set; whether it exited."""
        deadline = time.monotonic() + seconds
        while not exited.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or (self.hurry is not None and self.hurry.is_set()):
                return False
            exited.wait(min(0.05, left))
        return True


def runtime_options(oci: OciRuntime) -> any_pb2.Any:
    """The runc v2 shim's options for a container: run it with ``oci.binary`` (crun or
    runc; ``containerd.runc.v1.Options.binary_name``)."""
    from ._api.runtime.v2.runc.options import oci_pb2

    return any_pb2.Any(type_url=OPTIONS_TYPE_URL,
                       value=oci_pb2.Options(binary_name=oci.binary).SerializeToString())


def compiled_seccomp(spec: dict, options: TaskOptions) -> None:
    """Hand the runtime ``spec``'s seccomp profile compiled (``options.precompiled_seccomp``,
    crun only: seccompbpf.py), in place of its rules; changes ``spec`` in place."""
    if not options.precompiled_seccomp:
        return
    compiled = bpf_annotations(spec["linux"].get("seccomp"))
    if compiled:  # crun loads these bytes and ignores the rules: they need not
        # travel too (9 KB less spec through containerd, the shim and crun: ~2 ms)
        spec["annotations"] = {**spec.get("annotations", {}), **compiled}
        del spec["linux"]["seccomp"]


_RUNC_START = "unable to start container process: "
_CRUN_CREATE = "OCI runtime create failed: "
_CRUN_EXEC = ("executable file ", "open executable", "exec ")  # crun's exec failures


def start_failure(message: str) -> str | None:
    """What kept a container's process from starting (its command is missing or not
    executable), from a failed Tasks.Create message; None for any other failure.

    runc: ``... unable to start container process: exec: "x": stat x: no such file ...``;
    crun: ``... OCI runtime create failed: executable file `x` not found in $PATH: ...``.
    """
    head, found, detail = message.rpartition(_RUNC_START)
    if not found:
        head, found, detail = message.rpartition(_CRUN_CREATE)
        if not found or not detail.startswith(_CRUN_EXEC):
            return None
    return detail.removesuffix(" (unknown)").removesuffix(": unknown")


class _Reader(threading.Thread):
    """Reads a container's output FIFOs (stdout and stderr: one thread for both, a thread
    start less per step) and hands complete lines to the sink as they arrive, per stream.
    Ends when every FIFO has reached its end."""

    def __init__(self, fds: list[tuple[int, Stream]], sink: OutputSink, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.fds, self.sink = fds, sink
        self.raw = bool(getattr(sink, "raw", False))  # chunks as read, not lines
        self.error: BaseException | None = None

    def _deliver(self, stream: Stream, line: bytes) -> None:
        if self.error is not None:
            return  # keep draining so the step never blocks on a full pipe
        try:
            self.sink(stream, line)
        except BaseException as err:  # noqa: BLE001 - re-raised by the step
            self.error = err

    def run(self) -> None:
        streams = dict(self.fds)
        pending = {fd: b"" for fd in streams}
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        while streams:
            for fd, _events in poller.poll():
                if fd in streams and not self._read(fd, streams[fd], pending):
                    poller.unregister(fd)
                    del streams[fd]
        for fd, stream in self.fds:
            if pending[fd]:
                self._deliver(stream, pending[fd])

    def _read(self, fd: int, stream: Stream, pending: dict[int, bytes]) -> bool:
        """One read of ``fd``; False at its end (or on an error, kept for the step)."""
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:  # woken without data
            return True
        except OSError as err:
            self.error = self.error or err
            return False
        if not chunk:
            return False
        if self.raw:
            self._deliver(stream, chunk)
            return True
        if b"\n" not in chunk:
            pending[fd] += chunk
            if len(pending[fd]) >= MAX_LINE:  # no newline in sight: hand it over in pieces
                self._deliver(stream, pending[fd])
                pending[fd] = b""
            return True
        lines = (pending[fd] + chunk).split(b"\n")
        pending[fd] = lines.pop()
        for line in lines:
            self._deliver(stream, line)
        return True


def watch(exited: Callable[[float], bool], cancel: threading.Event,
          timeout: float | None, disk: Ticket | None = None) -> int | None:
    """Wait for a step's exit: ``exited(seconds)`` waits up to that long and says whether
    it came (called for 50 ms at most, so a cancel is seen within that). None when it
    exited; CANCEL_EXIT, DISK_EXIT (``disk`` tripped) or TIMEOUT_EXIT (``timeout``
    seconds from now) when that came first, and the caller stops the step."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    while True:
        if disk is not None and disk.tripped is not None:
            return DISK_EXIT
        if cancel.is_set():
            return CANCEL_EXIT
        if deadline is not None and time.monotonic() >= deadline:
            return TIMEOUT_EXIT
        wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
        if exited(wait):
            return None


def limit_verdict(cid: str, status: int, pids_limit: int | None,
                  what: str) -> tuple[int, bytes]:
    """``(status, note)`` after container ``cid`` exited with ``status`` (its cgroup still
    there): OOM_EXIT when the kernel's OOM killer ended it; with a note for stderr when its
    forks failed at the pids limit (``pids_limit`` processes and threads); else as given."""
    if status != 0 and oom_killed(cgroup_path(cid)):
        return OOM_EXIT, b""
    if status != 0 and pids_exhausted(cgroup_path(cid)):
        return status, f"kata: the {what} reached its process limit ({pids_limit} " \
                       "processes and threads): forks failed".encode()
    return status, b""


def output_ended(readers: list[_Reader], sink: OutputSink, note: bytes) -> None:
    """After a step's exit, every reader done: raise a reader's error, then say kata's
    ``note`` (a limit it hit) on stderr, after all of the step's own output."""
    for reader in readers:
        if reader.error is not None:
            raise reader.error
    if note:
        raw = bool(getattr(sink, "raw", False))
        sink("stderr", note + (b"\n" if raw else b""))


def released(cleanup: Cleanup, status: int, defer: Callable[[Cleanup], None] | None) -> int:
    """``status`` once the step's release is handed to ``defer`` (the runtime finishes it
    in the background) or, without one, done now; the release's first error is raised."""
    if defer is not None:
        defer(cleanup)
        return status
    first = cleanup.close()
    if first is not None:
        raise first
    return status


class StepRun:
    """One run of one step; ``execute`` returns its exit status."""

    def __init__(self, client: Client, options: TaskOptions, step: StepSpec, image: RunImage,
                 sink: OutputSink, cancel: threading.Event, *, pod: PodNet | None = None,
                 prefix: str = "kata") -> None:
        self.c = client
        self.options = options
        self.step = step
        self.image = image
        self.sink = sink
        self.cancel = cancel
        self.pod = pod  # the network namespace and /etc/hosts of a pod; None: the step's own
        self.id = f"{prefix}-{secrets.token_hex(10)}"
        self.exited = threading.Event()
        self.wait_future: grpc.Future | None = None
        self.readers: list[_Reader] = []
        self.task_gone = True  # no task, or it was deleted: the container may go
        self.spec: dict | None = None
        self.what = "step"
        self.note = b""  # said on stderr after the step's own output (a limit it hit)
        self.pooled: str | None = None  # the network namespace lent by the pool

    # -- the sequence -------------------------------------------------------------
    def execute(self, defer: Callable[[Cleanup], None] | None = None) -> int:
        """Run the step; return its exit status once its output is complete.

        With ``defer``, when every output stream has reached its end right after the
        exit, the release work (deleting the task, snapshot, container, FIFOs:
        ~20 ms of containerd calls) is handed to ``defer`` instead of being waited
        for; the runtime finishes it in the background and drains it before it
        reports leftovers, sweeps or closes.
        """
        cleanup = Cleanup()
        try:
            self.launch(cleanup)
            status = self._supervise()
            if defer is None or not self._output_ended(OUTPUT_END_WAIT):
                self._teardown_task()  # output is complete once the task is deleted
            output_ended(self.readers, self.sink, self.note)
        except BaseException as err:
            cleanup.close(err)
            raise
        return released(cleanup, status, None if self.task_gone else defer)

    def _output_ended(self, timeout: float) -> bool:
        """Whether every output FIFO reached its end (the shim copied everything)."""
        deadline = time.monotonic() + timeout
        for reader in self.readers:
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                return False
        return True

    def launch(self, cleanup: Cleanup) -> None:
        """Create and start the task; every release is pushed on ``cleanup``."""
        c, cid = self.c, self.id
        step = self.step
        workdir = step.workdir if step.workdir and step.workdir != "/" else (self.image.workdir or "/")
        step = step if workdir == step.workdir else _with_workdir(step, workdir)
        build_spec(step, container_id=cid, image_env=self.image.env,
                   rlimits=self.options.rlimits)  # bad input fails early
        netns, hosts, resolv = None, self.options.hosts_file(step), True
        network = self.options.network
        if self.pod is not None:
            netns, hosts, resolv = self.pod.netns, self.pod.hosts_file, self.pod.resolv
        elif step.network == "default" and self.options.netns_pool is not None:
            pool = self.options.netns_pool
            name, netns = pool.acquire(c.owner)
            self.pooled = name
            # the task's deletion hands it back at once (_teardown_task); this runs after
            # it (LIFO) for every other path: reused only if no process is left in it
            cleanup.push("release network", self._release_netns)
        elif step.network == "default" and network is not None:
            cleanup.push("tear down network", lambda: network.teardown(cid))
            netns = network.setup(cid, c.owner)
        spec = build_spec(step, container_id=cid, image_env=self.image.env, netns=netns,
                          hosts_file=hosts, resolv=resolv, rlimits=self.options.rlimits)
        compiled_seccomp(spec, self.options)
        group = self.options.shim_group
        if group is not None:
            # pushed before the container: released (LIFO) after its task is deleted
            gid = group.acquire()
            spec["annotations"] = {**spec.get("annotations", {}), GROUP_ANNOTATION: gid}
            cleanup.push("leave the shim group", lambda: group.release(gid))
        self.spec = spec
        # No lease: the container is created first and names its snapshot, and containerd's
        # gc counts a container's snapshot as referenced, so the snapshot is protected from
        # the moment Prepare makes it (a lease cost two more calls per step).
        container = containers_pb2.Container(
            id=cid, labels={**step.labels, **c.owner_labels()}, image=step.image,
            runtime=containers_pb2.Container.Runtime(name=RUNTIME_NAME,
                                                     options=self.options.runtime_options),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=spec_bytes(spec)),
            snapshotter=SNAPSHOTTER, snapshot_key=cid)
        c.call(c.containers.Create, containers_pb2.CreateContainerRequest(container=container),
               "create container")
        cleanup.push("delete container", self._delete_container)
        mounts = c.make_snapshot(c.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=cid, parent=self.image.chain_id,
            labels=c.owner_labels()), "prepare snapshot").mounts
        cleanup.push("remove snapshot", self._remove_snapshot)
        if self.options.disk is not None:  # its root filesystem's writable layer
            self.options.disk.add(_upper_of(mounts))
        stdout, stderr, fds = self._fifos(cleanup)
        self.task_gone = False
        cleanup.push("delete task", self._teardown_task)
        try:
            c.call(c.tasks.Create, tasks_pb2.CreateTaskRequest(
                container_id=cid, rootfs=list(mounts), stdout=stdout, stderr=stderr),
                "create task")
        except ContainerdError as err:
            self.task_gone = True  # the shim cleans up a task it failed to create
            detail = start_failure(err.message)
            if detail is None:
                raise
            raise KataError("runtime.start_failed", f"the {self.what} could not start: {detail}",
                            obj=cid, exit_code=1) from None
        except BaseException:
            self.task_gone = True
            raise
        reader = _Reader(list(zip(fds, ("stdout", "stderr"))), self.sink, f"{cid}-output")
        reader.start()
        self.readers.append(reader)
        self.wait_future = c.tasks.Wait.future(
            tasks_pb2.WaitRequest(container_id=cid), metadata=c.metadata())
        self.wait_future.add_done_callback(lambda _f: self.exited.set())
        c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=cid), "start task")

    def _fifos(self, cleanup: Cleanup) -> tuple[str, str, list[int]]:
        """The step's stdout and stderr FIFOs, ``<fifo_root>/<owner>/<id>.out|.err``, open
        for reading. No directory of their own: creating and removing one per step cost
        a third of a millisecond of CPU on an ext4 root (bench/step_cpu_bench.py)."""
        d = self.options.fifo_root / self.c.owner
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
        fds: list[int] = []
        paths: list[str] = []

        def release() -> None:
            for fd in fds:
                os.close(fd)
            for p in paths:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

        cleanup.push("remove fifos", release)
        for suffix in ("out", "err"):
            p = f"{d}/{self.id}.{suffix}"
            os.mkfifo(p, 0o600)
            paths.append(p)
            # read ends first, non-blocking: the shim's write-side open must not block
            fds.append(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        return paths[0], paths[1], fds

    # -- waiting, timeout, cancellation ---------------------------------------------
    def _supervise(self) -> int:
        killed_for = None if self.exited.is_set() else \
            watch(self.exited.wait, self.cancel, self.step.timeout, self.options.disk)
        if killed_for is not None:
            if killed_for == DISK_EXIT:  # no grace: it is filling the disk
                self._kill(signal.SIGKILL)
            else:
                self._kill(signal.SIGTERM)
            if not self.options.grace(self.exited, self.options.stop_grace):
                self._kill(signal.SIGKILL)
            if not self.exited.wait(60):
                raise KataError("runtime.kill_failed",
                                f"step container {self.id} did not die after SIGKILL",
                                obj=self.id, exit_code=1)
        status = self._exit_status()
        if killed_for is not None:
            return killed_for
        # the cgroup lives until the task is deleted: did a limit end it?
        status, self.note = limit_verdict(self.id, status, effective(self.step.resources).pids,
                                          self.what)
        return status

    def _exit_status(self) -> int:
        assert self.wait_future is not None
        try:
            return int(self.wait_future.result().exit_status)
        except grpc.RpcError as err:
            from .client import wrap

            raise wrap(err, f"wait for {self.id}") from None

    def _kill(self, sig: int) -> None:
        try:
            self.c.call(self.c.tasks.Kill, tasks_pb2.KillRequest(
                container_id=self.id, signal=sig, all=True), f"kill {self.id}")
        except ContainerdError as err:
            if err.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise

    # -- release ------------------------------------------------------------------------
    def _teardown_task(self) -> None:
        if self.task_gone:
            return
        c = self.c
        if self.wait_future is not None and not self.exited.is_set():
            self._kill(signal.SIGKILL)  # kata is failing or going away: the step goes too
            self.exited.wait(30)
        try:
            c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self.id),
                   f"delete task {self.id}")
        except ContainerdError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                if self.wait_future is None:  # created but never started: kill and retry
                    self._kill(signal.SIGKILL)
                    c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=self.id),
                           f"delete task {self.id}")
                else:
                    raise
        self.task_gone = True
        self._release_netns()  # at once: a step starting now may take it (NetnsPool)
        if self.wait_future is not None:
            self.wait_future.cancel()
        for reader in self.readers:
            reader.join(30)

    def _release_netns(self) -> None:
        """Give the pooled network namespace back, once (reusable if the task is gone)."""
        name, self.pooled = self.pooled, None
        if name is not None and self.options.netns_pool is not None:
            self.options.netns_pool.release(name, reusable=self.task_gone)

    def _delete_container(self) -> None:
        if not self.task_gone:
            raise KataError("runtime.cleanup_failed",
                            f"task {self.id} could not be deleted: its container is kept "
                            "for the next sweep", obj=self.id, exit_code=1)
        # a cgroup the OCI runtime's delete did not know (its create was killed under
        # it): removed before the container, whose record is the only one that names it
        remove_cgroup(cgroup_path(self.id))
        self.c.call(self.c.containers.Delete,
                    containers_pb2.DeleteContainerRequest(id=self.id), f"delete container {self.id}")

    def _remove_snapshot(self) -> None:
        if not self.task_gone:
            return  # the task still has it mounted; the sweep removes it later
        self.c.call(self.c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=self.id), f"remove snapshot {self.id}")


def _upper_of(mounts) -> str:  # noqa: ANN001 - containerd Mount messages
    """The writable directory of a snapshot's mounts: the overlay's ``upperdir``, or the
    source of a bind mount (a snapshot with no parent)."""
    for m in mounts:
        for opt in m.options:
            if opt.startswith("upperdir="):
                return opt.removeprefix("upperdir=")
    return mounts[0].source if mounts else ""


def _with_workdir(step: StepSpec, workdir: str) -> StepSpec:
    from dataclasses import replace

    return replace(step, workdir=workdir)
