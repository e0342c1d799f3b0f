"""A few containerd shims for all of a runtime's containers (runc v2 shim grouping).

containerd 1.6 starts a ``containerd-shim-runc-v2`` daemon per task unless the spec
carries the annotation ``io.containerd.runc.v2.group``: ``shim start`` then derives the
shim's socket from the group id, finds a shim already listening there and hands its
address back instead of starting a daemon (runtime/v2/runc/manager/manager_linux.go,
``Start``). What that saves per container is the shim daemon's start and exit (a Go
process: ~9 ms of CPU measured per trivial step, docs/architecture.md); ``shim start``
and ``shim delete`` still run per task (containerd closes its per-task connection on
Tasks.Delete, and that runs ``shim delete``).

The race that made an earlier attempt fail: after every Tasks.Delete containerd asks the
shim to shut down, and the shim exits once it serves no container. A task created at that
moment gets the dying shim's address from ``shim start`` (its socket still answers) and
fails. Two rules close it:

- **An anchor.** While a group is in use it holds one container of kata's own whose task
  is created and never started (its init waits in the OCI runtime's ``created`` state on a
  read-only, empty root with one empty executable file): the shim never serves zero
  containers, so it never exits under a starting step.
- **A group id per anchor.** ``ShimGroup`` counts the steps between ``acquire`` and
  ``release`` (after their task is deleted); only when none is in flight does ``close``
  delete the anchor, and the next ``acquire`` starts a new anchor under a new group id,
  so no step is ever handed the socket of a shim that is shutting down.

A shim that has served nothing for IDLE_SECONDS is ended too (a long-lived runtime such
as `kata worker`'s keeps no idle shim; within a run, steps follow each other closer).

One shim would serialise parallel starts (the shim's ``Create`` holds its lock across
the OCI runtime's ``create``), so a runtime keeps up to one shim per CPU and gives each
container to the least used one.

The anchor carries the owner label like every container of kata's: when kata is killed,
the next connect's sweep kills and deletes it with the rest, and the shim exits with its
last container.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path

from google.protobuf import any_pb2

from ..base import StepSpec
from .client import Client, ContainerdError, containers_pb2, grpc, mount_pb2, tasks_pb2
from .sandbox import remove_cgroup
from .seccompbpf import bpf_annotations
from .spec import SPEC_TYPE_URL, build_spec, cgroup_path, spec_bytes

log = logging.getLogger("kata.runtime")
GROUP_ANNOTATION = "io.containerd.runc.v2.group"
IDLE_SECONDS = 2.0  # a shim that served nothing this long is ended (its anchor deleted)
ANCHOR_EXE = "kata-anchor"  # never executed: the anchor's task is never started
# the anchor's mount points (its root is read-only: the OCI runtime cannot make them)
_ANCHOR_DIRS = ("proc", "dev", "sys", "run")


class _Slot:
    """One shim of the group: its id, its anchor container, the containers using it."""

    __slots__ = ("group", "anchor", "users", "idle_since")

    def __init__(self) -> None:
        self.group: str | None = None  # the group id; None: no anchor, no shim
        self.anchor: str | None = None  # the anchor's container id
        self.users = 0  # containers between acquire and release
        self.idle_since = 0.0  # time.monotonic() when users last fell to 0


class ShimGroup:
    """The shims of one runtime: ``acquire()`` a group id for a container's spec,
    ``release(id)`` once its task is deleted; ``close()`` ends the idle ones.

    ``width`` shims (default: one per CPU): the runc v2 shim creates its containers one at
    a time (``Create`` holds the service's lock across the OCI runtime's ``create``), so
    one shim for everything would serialise parallel starts; a container goes to the
    least used shim. Thread-safe. ``acquire`` raises ContainerdError / KataError when an
    anchor cannot be made (the step then fails as it would have on its own Tasks.Create).
    """

    def __init__(self, client: Client, *, anchor_root: Path,
                 runtime_options: any_pb2.Any | None, precompiled_seccomp: bool,
                 runtime_name: str, width: int | None = None,
                 rlimits: list | None = None) -> None:
        self.c = client
        self.rlimits = rlimits  # the anchor's (spec.task_rlimits; None: this process's)
        self.anchor_root = anchor_root
        self.runtime_options = runtime_options
        self.precompiled_seccomp = precompiled_seccomp
        self.runtime_name = runtime_name
        self._lock = threading.Lock()
        self._slots = [_Slot() for _ in range(max(1, width or os.cpu_count() or 1))]
        self._timer: threading.Timer | None = None  # ends shims idle for IDLE_SECONDS
        self._deleting = threading.Lock()  # held while anchors are deleted: close() waits
        self._stray: list[str] = []  # anchors whose delete failed: close() tries again
        self.anchors_made = 0  # how many anchors this group made (tests, benches)

    def acquire(self) -> str:
        """The group id to put in a container's spec annotation: the least used shim's,
        starting its anchor (and with it the shim) if it has none."""
        with self._lock:
            slot = min(self._slots, key=lambda s: (s.users, s.group is None))
            if slot.group is None:
                self._start_anchor(slot)
            slot.users += 1
            assert slot.group is not None
            return slot.group

    def release(self, group: str) -> None:
        """A container of ``group`` has no task any more (or never got one)."""
        with self._lock:
            slot = next(s for s in self._slots if s.group == group)
            assert slot.users > 0
            slot.users -= 1
            if slot.users == 0:
                slot.idle_since = time.monotonic()
                self._schedule(IDLE_SECONDS)

    def _schedule(self, delay: float) -> None:
        """Look for idle shims in ``delay`` seconds (one timer at a time). Called locked."""
        if self._timer is None:
            self._timer = threading.Timer(delay, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        """End the shims idle for IDLE_SECONDS (a long-lived runtime, e.g. `kata worker`,
        keeps no shim and no anchor while it runs nothing), and try again the anchors
        whose delete failed; look again later for the rest. Runs on the timer's thread."""
        with self._deleting:
            with self._lock:
                if self._timer is threading.current_thread():
                    # not another timer that a release started while this one waited
                    # for a close() to end: forgotten, close() could not cancel it
                    self._timer = None
                now = time.monotonic()
                idle = [s for s in self._slots if s.anchor is not None and not s.users]
                expired = [s for s in idle if now - s.idle_since >= IDLE_SECONDS]
                anchors = self._take(expired) + (self._stray if expired else [])
                if expired:
                    self._stray = []
                waiting = [s.idle_since for s in idle if s not in expired]
                if waiting:
                    self._schedule(max(0.05, IDLE_SECONDS - (now - min(waiting))))
            try:
                self._delete_anchors(anchors)
            except Exception as err:  # noqa: BLE001 - kept for close() to try again
                log.warning("ending an idle shim failed: %s", err)

    def close(self) -> None:
        """Delete the anchor of every shim no container is in flight on (the shim then
        exits); a later ``acquire`` starts a new one under a new id. The first error
        propagates (ContainerdError) after the rest were tried; what is left carries the
        owner label and is swept by the next connect."""
        with self._deleting:  # after an expiry in flight: nothing is half deleted
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                anchors = self._take([s for s in self._slots if s.anchor is not None
                                      and not s.users]) + self._stray
                self._stray = []
            self._delete_anchors(anchors)

    @staticmethod
    def _take(slots: list[_Slot]) -> list[str]:
        """Forget the anchors of ``slots`` (called locked): a later ``acquire`` starts a
        new group, so the old shim may take its time to exit."""
        anchors = []
        for slot in slots:
            assert slot.anchor is not None
            anchors.append(slot.anchor)
            slot.anchor = slot.group = None
        return anchors

    def _delete_anchors(self, anchors: list[str]) -> None:
        """Delete ``anchors`` side by side (each waits ~50-150 ms for containerd's `shim
        delete`); the first error is raised after all were tried. One that could not be
        deleted (containerd slow or away) is kept for the next ``close`` to try again,
        not forgotten: a long-lived runtime would otherwise hold it, and its shim, for
        its whole life (the sweep spares a live owner's containers)."""
        errors: list[BaseException] = []

        def delete(cid: str) -> None:
            try:
                self._delete_anchor(cid)
            except Exception as err:  # noqa: BLE001 - kept and raised below, thread or not
                errors.append(err)
                with self._lock:
                    self._stray.append(cid)

        threads = [threading.Thread(target=delete, args=(cid,)) for cid in anchors[1:]]
        for t in threads:
            t.start()
        if anchors:
            delete(anchors[0])
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    # -- the anchor ---------------------------------------------------------------------
    def _start_anchor(self, slot: _Slot) -> None:
        c = self.c
        root = self._anchor_tree()
        group = f"kata-{secrets.token_hex(8)}"
        cid = f"kata-anchor-{secrets.token_hex(8)}"
        spec = build_spec(StepSpec(image="", argv=(f"/{ANCHOR_EXE}",), user="65534:65534"),
                          container_id=cid, image_env=(), rlimits=self.rlimits)
        spec["root"]["readonly"] = True
        spec["annotations"] = {GROUP_ANNOTATION: group}
        if self.precompiled_seccomp:
            compiled = bpf_annotations(spec["linux"].get("seccomp"))
            if compiled:
                spec["annotations"].update(compiled)
                del spec["linux"]["seccomp"]
        container = containers_pb2.Container(
            id=cid, labels=c.owner_labels(),
            runtime=containers_pb2.Container.Runtime(name=self.runtime_name,
                                                     options=self.runtime_options),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=spec_bytes(spec)))
        c.call(c.containers.Create, containers_pb2.CreateContainerRequest(container=container),
               "create the shim group's anchor")
        try:
            c.call(c.tasks.Create, tasks_pb2.CreateTaskRequest(
                container_id=cid, rootfs=[mount_pb2.Mount(
                    type="bind", source=str(root), options=["rbind", "ro"])]),
                "create the shim group's anchor task")
        except BaseException:
            try:  # its cgroup first: a create killed under way leaves it (sandbox.py)
                remove_cgroup(cgroup_path(cid))
                c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid),
                       f"delete container {cid}")
            except (ContainerdError, OSError):
                pass  # owner-labelled: the next connect's sweep takes it
            raise
        slot.group, slot.anchor = group, cid
        self.anchors_made += 1

    def _delete_anchor(self, cid: str) -> None:
        """Delete the anchor's task (created, never started: the OCI runtime's delete ends
        its waiting init; no kill needed) and container."""
        c = self.c
        try:
            c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid),
                   f"delete task {cid}")
        except ContainerdError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise
        remove_cgroup(cgroup_path(cid))  # what the OCI runtime's delete did not know
        try:
            c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid),
                   f"delete container {cid}")
        except ContainerdError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:  # gone: a retry after a failed try
                raise

    def _anchor_tree(self) -> Path:
        """The anchor's root: mount points and one empty executable file, made once per
        host (shared by every kata process: it is only ever mounted read-only)."""
        root = self.anchor_root
        exe = root / ANCHOR_EXE
        if not exe.exists():
            root.mkdir(parents=True, mode=0o755, exist_ok=True)
            for d in _ANCHOR_DIRS:
                (root / d).mkdir(mode=0o755, exist_ok=True)
            tmp = root / f".{ANCHOR_EXE}.{os.getpid()}.{secrets.token_hex(4)}"
            tmp.write_bytes(b"")
            tmp.chmod(0o755)
            os.replace(tmp, exe)
        return root
