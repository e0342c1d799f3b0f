"""``ContainerdRuntime``: kata's Runtime on containerd (see kata.runtimes.base)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from kata.errors import KataError
from kata.oci_runtime import OciRuntime, choose, direct_blocker
from kata.sockets import socket_peer_pid
from procs import owner_alive

from ..base import (
    CANCEL_EXIT, DISK_EXIT, ExitStatus, OutputSink, PullCallback, PullProgress, ServiceSink,
    StepSpec,
)
from ..diskguard import DiskGuard
from . import orphans
from .cleanup import Cleanup, signals_deferred
from .client import (
    OWNER_LABEL, SNAPSHOTTER, Client, ContainerdError, containers_pb2, grpc, leases_pb2,
    snapshots_pb2, tasks_pb2,
)
from .config import RuntimeConfig, load_runtime_config
from .direct import DirectStep, DirectSteps
from .daemon import SYSTEM_SOCKET, daemon_paths, ensure_daemon, socket_answers
from .images import ImageRecord, ImageStore, RunImage
from .network import CniNetwork, NetnsPool
from .pulls import PullStop, SharedPull
from .reference import is_digest, parse_reference
from .sandbox import remove_cgroup
from .seccompbpf import takes_compiled_filter
from .shimgroup import ShimGroup
from .spec import cgroup_path, task_rlimits
from .task import RUNTIME_NAME, StepRun, TaskOptions, runtime_options

if TYPE_CHECKING:  # httpx is heavy: imported on the first pull, not on every run
    from .registry import RegistryClient

FIFO_ROOT = "/run/kata/fifo"
STEPS_ROOT = "/var/lib/kata/steps"  # direct steps (direct.py) of a containerd not kata's own
RELEASE_THREADS = 4  # deferred releases at once (each ~20 ms of waiting on containerd)
PULL_CLEANUP_SECONDS = 3.0  # drain() waits this long for a stopped pull to abort and unlease
# (a pull stuck before the registry answered has no ingest yet: its lease, labelled with this
# process, is swept by the next run)


class ContainerdRuntime:
    """Runs steps and manages images on one containerd, in namespace ``kata``.

    Thread-safe: one shared channel; ``run`` may be called from many threads.
    """

    # the process's runtimes not closed yet: leftovers() drains them all (below)
    _live: weakref.WeakSet[ContainerdRuntime] = weakref.WeakSet()

    def __init__(self, client: Client, *, config: RuntimeConfig, fifo_root: Path,
                 offline: bool, stop_grace: float, oci: OciRuntime,
                 mount_roots: tuple[str, ...] = (), steps_root: Path | None = None) -> None:
        self.client = client
        self.config = config
        self.offline = offline
        self.stop_grace = stop_grace
        self.fifo_root = fifo_root
        self.mount_roots = mount_roots  # where containerd mounts things (leak checks)
        self.images = ImageStore(client)
        self.network = CniNetwork(state_dir=fifo_root.parent / "cni")
        self.netns_pool = NetnsPool(self.network)
        self.oci = oci  # crun or runc, for every container of ours
        self._runtime_options = runtime_options(oci)
        self._precompiled_seccomp = oci.name == "crun" and takes_compiled_filter(oci.binary)
        # crun runs a task under containerd's shim, which has the daemon's rlimits
        self.task_rlimits = task_rlimits(socket_peer_pid(client.address.removeprefix("unix://")))
        # one shim for every container of this runtime (shimgroup.py); host config
        # containerd.shared_shim: false gives each container its own
        self.shim_group = ShimGroup(
            client, anchor_root=fifo_root.parent / "anchor",
            runtime_options=self._runtime_options,
            precompiled_seccomp=self._precompiled_seccomp,
            runtime_name=RUNTIME_NAME, rlimits=self.task_rlimits) if config.shared_shim else None
        # steps without services: kata's own `crun run` (direct.py) unless the host config
        # says `containerd.step_runner: task` or the host cannot (oci_runtime.direct_blocker)
        self.direct = DirectSteps(client, oci, steps_root or Path(STEPS_ROOT))
        self.direct_unusable = direct_blocker(oci) if config.step_runner == "direct" else "step_runner: task"
        self._registry: RegistryClient | None = None
        self._hurry = threading.Event()  # hurry(): cancelled steps are killed at once
        # an untrusted run's pulls: public addresses only (registry.ConfinedBackend)
        self.confined_pulls = False
        self._lock = threading.Lock()
        self._releasing: set[Future] = set()  # deferred releases of finished steps
        self._releaser: ThreadPoolExecutor | None = None  # runs them
        self._tags: dict[str, set[str]] = {}  # digest -> tags this run resolved to it
        self._pulls: dict[str, SharedPull] = {}  # digest -> the pull steps wait on
        self._pulling: set[SharedPull] = set()  # every pull not ended yet (stopped ones too)
        self.progress: PullCallback | None = None  # told how far each pull is
        # kills a step filling the disk below the host's reserve (diskguard.py)
        self.disk = None if config.disk_reserve.off else DiskGuard(config.disk_reserve)
        ContainerdRuntime._live.add(self)

    # -- connecting ---------------------------------------------------------------------
    @classmethod
    def connect_running(cls, address: str | None = None) -> ContainerdRuntime | None:
        """A runtime on a containerd that is already answering (``address``, else the
        config's, else the system socket, else kata's own), or None; never starts one.
        For checks that are worth doing only when a runtime is there (``kata validate``)."""
        config = load_runtime_config()
        address = address or config.address
        if address:
            path = address.removeprefix("unix://")
            return cls.connect(address=address, sweep=False) if socket_answers(path) else None
        if ((config.state_dir is None and socket_answers(SYSTEM_SOCKET))
                or socket_answers(daemon_paths(config.state_dir).socket)):
            return cls.connect(sweep=False)
        return None

    @classmethod
    def connect(cls, address: str | None = None, state_dir: str | None = None, *,
                offline: bool | None = None, config: RuntimeConfig | None = None,
                stop_grace: float | None = None, sweep: bool = True) -> ContainerdRuntime:
        """Connect to containerd: ``address``, else the config's, else the system socket
        if it answers, else kata's own embedded containerd (started if needed)."""
        config = config if config is not None else load_runtime_config()
        oci = choose(config.oci_runtime)
        address = address or config.address
        state_dir = state_dir or config.state_dir
        mount_roots: tuple[str, ...] = ()
        steps_root = Path(STEPS_ROOT)
        if address:
            fifo_root = Path(FIFO_ROOT)
            steps_root = _steps_root_of(address)
            if state_dir:  # an address of kata's own daemon under state_dir
                paths = daemon_paths(state_dir)
                fifo_root = paths.state.parent / "fifo"
                mount_roots = (str(paths.root), str(paths.state))
                steps_root = paths.root.parent / "steps"
        elif state_dir is None and socket_answers(SYSTEM_SOCKET):
            address, fifo_root = SYSTEM_SOCKET, Path(FIFO_ROOT)
            mount_roots = ("/var/lib/containerd", "/run/containerd")
        else:
            paths = daemon_paths(state_dir)
            address = ensure_daemon(paths)
            fifo_root = paths.state.parent / "fifo"
            mount_roots = (str(paths.root), str(paths.state))
            steps_root = paths.root.parent / "steps"
        client = Client(address)
        client.snapshot_dirs = tuple(f"{r}/io.containerd.snapshotter.v1.{SNAPSHOTTER}/snapshots"
                                     for r in mount_roots[:1])
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        rt = cls(client, config=config, fifo_root=fifo_root,
                 offline=config.offline if offline is None else offline,
                 stop_grace=config.stop_grace if stop_grace is None else stop_grace,
                 oci=oci, mount_roots=mount_roots, steps_root=steps_root)
        if sweep:
            rt.sweep()
        return rt

    def close(self) -> None:
        ContainerdRuntime._live.discard(self)
        self.drain()
        if self._releaser is not None:
            self._releaser.shutdown()
            self._releaser = None
        if self._registry is not None:
            self._registry.close()
        self.client.close()

    def __enter__(self) -> ContainerdRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def registry(self) -> RegistryClient:
        with self._lock:
            if self._registry is None:
                from .registry import RegistryClient

                self._registry = RegistryClient(self.config, confined=self.confined_pulls)
            return self._registry

    # -- the Runtime protocol -------------------------------------------------------------
    def resolve_image(self, ref: str) -> str:
        """Tag or digest → manifest digest: kata's image store first, then the registry."""
        if is_digest(ref):
            return ref
        parsed = parse_reference(ref)
        if parsed.digest:
            return parsed.digest
        local = self.images.get_image(parsed.stored_name)
        if local is not None:
            return local.digest
        if self.offline:
            raise KataError("image.not_found",
                            f"image {parsed.stored_name} is not in kata's image store (offline: "
                            "`kata image import` or `kata image pull` it first)", obj=ref,
                            exit_code=1)
        digest, _body, _mt = self.registry.fetch_manifest(parsed)
        return digest

    def stored_digest(self, ref: str) -> str | None:
        """The digest kata's image store (containerd's names) holds for tag ``ref``, or None;
        asks no registry."""
        local = self.images.get_image(parse_reference(ref).stored_name)
        return None if local is None else local.digest

    def check_pinned(self, ref: str) -> str:
        """That a digest-pinned ``ref`` (``name@sha256:…``) can run: stored in kata's image
        store, else its manifest fetchable by that digest (nothing is pulled). Returns the
        digest. KataError ``image.*`` (image.not_found offline or unknown,
        image.registry_unreachable, image.refused, …) when it cannot."""
        parsed = parse_reference(ref)
        digest = parsed.digest
        assert digest is not None, ref
        if self.images.known(digest) or self.images.has_blob(digest):
            return digest
        if self.offline:
            raise KataError("image.not_found", f"image {ref} is not in kata's image store "
                            "(offline)", obj=ref, exit_code=1)
        self.registry.fetch_manifest(parsed, digest)
        return digest

    def name_tags(self, resolved: dict[str, str]) -> None:
        """Remember that each tag in ``resolved`` (tag -> digest) stands for its digest in
        this run: an image pulled by digest for a step is then also stored under its tags
        (so `kata image ls` and an offline run find it by tag)."""
        with self._lock:
            for ref, digest in resolved.items():
                parsed = parse_reference(ref)
                if parsed.digest is None:
                    self._tags.setdefault(digest, set()).add(parsed.stored_name)

    def run(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
            service_sink: ServiceSink | None = None) -> int:
        if cancel.is_set():
            return CANCEL_EXIT  # cancelled before it began: nothing to create or release
        if self.disk is None:
            return self._run(spec, sink, cancel, service_sink, None)
        ticket = self.disk.ticket()
        if hasattr(sink, "logged"):  # its output, spooled beside its workspace
            ticket.extra = lambda: sink.logged  # type: ignore[attr-defined]
        try:
            for m in spec.mounts:  # its workspace (an overlay kata mounted) and the like
                if m.kind == "bind" and not m.readonly:
                    ticket.add(m.source)
                elif m.kind == "overlay" and m.upper:
                    ticket.add(m.upper)
            status = self._run(spec, sink, cancel, service_sink, ticket)
        finally:
            self.disk.release(ticket)
        if status == DISK_EXIT:
            return ExitStatus(DISK_EXIT, note=ticket.tripped)
        return status

    def _run(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
             service_sink: ServiceSink | None, ticket) -> int:  # noqa: ANN001
        options = TaskOptions(fifo_root=self.fifo_root, stop_grace=self.stop_grace,
                              network=self.network, netns_pool=self.netns_pool,
                              runtime_options=self._runtime_options,
                              precompiled_seccomp=self._precompiled_seccomp,
                              shim_group=self.shim_group, hurry=self._hurry,
                              etc_dir=self.fifo_root.parent / "etc",
                              rlimits=self.task_rlimits, disk=ticket)
        digest = self._ensure_image(spec.image, cancel)
        if digest is None:
            return CANCEL_EXIT  # cancelled while its image was pulled: never started
        image = self.images.run_image(digest)
        running = getattr(sink, "running", None)  # the sink is told pulling is over
        if spec.services:
            from .pod import run_pod

            sdigests = [self._ensure_image(s.image, cancel) for s in spec.services]
            if cancel.is_set() or None in sdigests:
                return CANCEL_EXIT  # cancelled while its images were pulled: never started
            simages = [self.images.run_image(d) for d in sdigests if d is not None]
            if running is not None:
                running()
            return run_pod(self.client, options, spec, image, simages, sink, service_sink, cancel)
        if cancel.is_set():
            return CANCEL_EXIT  # cancelled while its image was pulled: never started
        if running is not None:
            running()

        def step(image: RunImage):  # noqa: ANN202
            if not self.direct_unusable:
                return DirectStep(self.direct, options, spec, image, sink, cancel)
            return StepRun(self.client, options, spec, image, sink, cancel)

        try:
            return step(image).execute(self._defer)
        except ContainerdError as err:
            # the image went away under us (`kata image rm` elsewhere): look again, once
            if err.code != grpc.StatusCode.NOT_FOUND or err.obj != "prepare snapshot":
                raise
            self.images.forget(digest)
            self.direct.forget(image.chain_id)
            digest = self._ensure_image(spec.image, cancel)
            if digest is None:
                return CANCEL_EXIT
            return step(self.images.run_image(digest)).execute(self._defer)

    # -- deferred release ---------------------------------------------------------------
    def _defer(self, cleanup: Cleanup) -> None:
        """Release a finished step's resources in the background (see StepRun.execute), on
        a few threads kept for it (a thread started per step cost ~0.1 ms of CPU).

        A failure is logged by Cleanup; what it leaves carries this process's owner
        label, so the next connect after this process ends sweeps it.
        """
        with self._lock:
            if self._releaser is None:
                self._releaser = ThreadPoolExecutor(max_workers=RELEASE_THREADS,
                                                    thread_name_prefix="kata-release")
            future = self._releaser.submit(cleanup.close)
            self._releasing.add(future)
        future.add_done_callback(self._released)

    def _released(self, future: Future) -> None:
        with self._lock:
            self._releasing.discard(future)

    def hurry(self) -> None:
        """From now on a cancelled step's containers (and its services) get SIGKILL at
        once instead of SIGTERM and ``stop_grace``: a second Ctrl-C, which still waits
        for them to be deleted rather than leave them behind."""
        self._hurry.set()

    def drain(self) -> None:
        """Wait until every deferred release has finished, then tear down the idle
        network namespaces kept for reuse and end the shim group (its anchor) if no
        container is in flight. A Ctrl-C meanwhile (as `kata run` closes its runtime, after
        the scheduler gave its handlers back) is raised once this is done
        (``signals_deferred``): no anchor or namespace is left half released."""
        with signals_deferred():
            while True:
                with self._lock:
                    pending = list(self._releasing)
                if not pending:
                    break
                wait(pending)
            with self._lock:
                pulls = list(self._pulling)
            for pull in pulls:  # stopped once their last step left: their cleanup is quick
                pull.finish(PULL_CLEANUP_SECONDS)
            try:
                if self.shim_group is not None:
                    self.shim_group.close()
            finally:
                try:
                    self.direct.drain()
                finally:
                    self.netns_pool.drain()

    def _ensure_image(self, image: str, cancel: threading.Event | None = None) -> str | None:
        """The digest of a pinned image reference, pulling it if it is not stored yet; None
        if ``cancel`` was set meanwhile.

        Steps asking at once for one image wait on one pull (pulls.SharedPull), each with
        its own ``cancel``: a cancelled step leaves at once, and the pull is stopped (its
        ingest aborted, its lease deleted) when no step waits for it any more.
        """
        if is_digest(image):
            digest, parsed = image, None
        else:
            parsed = parse_reference(image)
            if parsed.digest is None:
                raise KataError("runtime.unpinned_image",
                                f"step image {image} is not pinned by digest", obj=image)
            digest = parsed.digest
        if self.images.known(digest) or self.images.has_blob(digest):
            return digest
        if parsed is None or self.offline:
            raise KataError("image.not_found", f"image {image} is not in kata's image "
                            "store", obj=image, exit_code=1)
        if cancel is not None and cancel.is_set():
            return None  # no pull is started for a step cancelled already
        stored_name = parsed.stored_name
        with self._lock:
            pull = self._pulls.get(digest)
            if pull is None or not pull.join():
                pull = self._pulls[digest] = SharedPull(
                    stored_name, partial(self._pull_for, digest, stored_name), self._pulled)
                pull.join()
                self._pulling.add(pull)
                pull.start()
        return digest if pull.wait(cancel) else None

    def _pull_for(self, digest: str, stored_name: str, stop: PullStop) -> None:
        """A SharedPull's work: pull the image, then name it by the tags this run gave it."""
        if self.images.has_blob(digest):
            return  # another process pulled it meanwhile
        record = self.pull_image(stored_name, stop)
        with self._lock:
            names = sorted(self._tags.get(digest, ()))
        target = self.images.get_image(record.name) if names else None
        for name in names if target is not None else ():
            self.images.put_image(name, target)

    def _pulled(self, pull: SharedPull) -> None:
        with self._lock:  # the next step on this digest finds it stored, or pulls anew
            self._pulling.discard(pull)
            for digest, found in list(self._pulls.items()):
                if found is pull:
                    del self._pulls[digest]

    # -- images -------------------------------------------------------------------------
    def import_image(self, path: str | os.PathLike[str], name: str | None = None) -> list[ImageRecord]:
        return self.images.import_archive(path, name)

    def pull_image(self, ref: str, stop: PullStop | None = None) -> ImageRecord:
        """Pull ``ref`` (linux/amd64) into kata's image store, reporting to ``self.progress``.

        ``stop`` set meanwhile: KataError(image.pull_stopped); the blob being written is
        aborted and the pull's lease deleted, so nothing of it stays stored.
        """
        if self.offline:
            raise KataError("image.offline", f"cannot pull {ref}: offline", obj=ref, exit_code=1)
        parsed = parse_reference(ref)
        reg, store = self.registry, self.images
        digest, body, media_type = reg.fetch_manifest(parsed)
        meter = _PullMeter(ref, self.progress)

        def blob(desc):  # noqa: ANN001, ANN202
            return meter.count(desc, reg.blob_chunks(parsed, desc, stop))

        try:
            with self.client.lease("pull", sync_delete=True) as lease:
                if b'"manifests"' in body and "manifests" in _json(body):
                    from .images import select_platform

                    chosen = select_platform(_json(body))
                    _, mbody, mtype = reg.fetch_manifest(parsed, chosen.digest)
                    meter.plan(mbody, store)
                    mdesc = store.store_manifest(lease, mbody, mtype or chosen.media_type, blob)
                    target = store.store_index(lease, body, media_type, {mdesc.digest: mdesc})
                else:
                    meter.plan(body, store)
                    target = store.store_manifest(lease, body, media_type, blob)
                assert target.digest == digest
                store.put_image(parsed.stored_name, target)
        except BaseException:
            meter.finish(stopped=True)  # its last report: the pull is over, without the image
            raise
        meter.finish()
        return ImageRecord(name=parsed.stored_name, digest=target.digest, media_type=target.media_type,
                           size=store._size(target.digest))

    def list_images(self) -> list[ImageRecord]:
        return self.images.list_images()

    def remove_image(self, ref: str) -> list[str]:
        return self.images.remove_image(ref)

    # -- orphans ------------------------------------------------------------------------
    def sweep(self, *, everything: bool = False) -> dict[str, int]:
        """Release what dead kata processes left: tasks, containers, snapshots, leases, FIFOs.

        everything=True also takes what live owners hold (only for `kata daemon` tooling).
        """
        self.drain()
        c = self.client
        counts = {"tasks": 0, "containers": 0, "snapshots": 0, "leases": 0, "fifos": 0,
                  "netns": 0, "shims": 0, "steps": 0}

        def dead(labels) -> bool:  # noqa: ANN001
            owner = labels.get(OWNER_LABEL)
            return owner is not None and (everything or not owner_alive(owner))

        with Cleanup() as cleanup:
            try:  # first: their processes die, their mounts of image snapshots go
                counts["steps"] = self.direct.sweep(everything)
            except (OSError, KataError, subprocess.SubprocessError) as err:
                cleanup.push("sweep direct steps", _raiser(err))
            containers = c.call(c.containers.List, containers_pb2.ListContainersRequest(),
                                "list containers").containers
            tasks = {t.id for t in c.call(c.tasks.List, tasks_pb2.ListTasksRequest(),
                                          "list tasks").tasks}
            for ctr in containers:
                if not dead(ctr.labels):
                    continue
                try:
                    if ctr.id in tasks:
                        self._kill_and_delete_task(ctr.id)
                        counts["tasks"] += 1
                    # a cgroup the OCI runtime did not remove (its create was killed): the
                    # container record is what names it, so it goes first (task.py)
                    remove_cgroup(cgroup_path(ctr.id))
                    c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=ctr.id),
                           f"delete container {ctr.id}")
                    counts["containers"] += 1
                except (KataError, OSError) as err:
                    cleanup.push(f"sweep {ctr.id}", _raiser(err))
            # shims whose task was never registered (kata killed inside Tasks.Create):
            # no API call reaches them; before the snapshots, whose mounts they hold. With
            # a shared shim (shimgroup.py) such a container has no shim of its own: only
            # its bundle is left. Shims and bundles are listed *before* the containers: a
            # container is created before its task, so one that a live kata starts
            # meanwhile is never mistaken for an orphan.
            task_dir = self._task_dir()
            shims = orphans.shims(c.address, c.namespace)
            bundles = orphans.stray_bundles(task_dir, ()) if task_dir else []
            known = {x.id for x in c.call(c.containers.List, containers_pb2.ListContainersRequest(),
                                          "list containers").containers}
            strays = [(s.id, f"reap shim {s.pid} ({s.id})", partial(orphans.reap, s, c.namespace))
                      for s in shims]
            strays += [(os.path.basename(b), f"reap bundle {b}",
                        partial(orphans.reap_bundle, b, c.namespace)) for b in bundles]
            for cid, what, reap in strays:
                if cid in known:
                    continue
                try:
                    reap()
                    counts["shims"] += 1
                except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                    cleanup.push(what, _raiser(err))
            snaps = self._snapshots()
            for info in snaps:
                if info.kind != snapshots_pb2.COMMITTED and dead(info.labels):
                    try:
                        c.call(c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
                            snapshotter=SNAPSHOTTER, key=info.name), f"remove {info.name}")
                        counts["snapshots"] += 1
                    except ContainerdError as err:
                        if err.code != grpc.StatusCode.NOT_FOUND:
                            cleanup.push(f"sweep snapshot {info.name}", _raiser(err))
            for lease in c.call(c.leases.List, leases_pb2.ListRequest(), "list leases").leases:
                if dead(lease.labels):
                    c.call(c.leases.Delete, leases_pb2.DeleteRequest(id=lease.id, sync=False),
                           f"delete lease {lease.id}")
                    counts["leases"] += 1
            try:  # after the tasks: a netns is torn down once nothing runs in it
                counts["netns"] = self.network.sweep(everything)
            except KataError as err:
                cleanup.push("sweep networks", _raiser(err))
            if self.fifo_root.is_dir():
                for d in self.fifo_root.iterdir():
                    if everything or not owner_alive(d.name):
                        shutil.rmtree(d, ignore_errors=True)
                        counts["fifos"] += 1
        return counts

    def _task_dir(self) -> str | None:
        """Where containerd keeps this namespace's task bundles (its state dir's
        ``io.containerd.runtime.v2.task/<namespace>``); None when this containerd's
        state dir is not known (an address alone): its bundles are then never touched."""
        if len(self.mount_roots) < 2:
            return None
        return os.path.join(self.mount_roots[1], "io.containerd.runtime.v2.task",
                            self.client.namespace)

    def _kill_and_delete_task(self, cid: str) -> None:
        c = self.client
        try:
            c.call(c.tasks.Kill, tasks_pb2.KillRequest(container_id=cid, signal=signal.SIGKILL,
                                                       all=True), f"kill {cid}")
            c.call(c.tasks.Wait, tasks_pb2.WaitRequest(container_id=cid), f"wait {cid}",
                   timeout=30)
        except ContainerdError as err:
            if err.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
        c.call(c.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid), f"delete task {cid}")

    def _snapshots(self) -> list:  # noqa: ANN001
        c = self.client
        try:
            return [i for r in c.snapshots.List(snapshots_pb2.ListSnapshotsRequest(
                snapshotter=SNAPSHOTTER), metadata=c.metadata(), timeout=60) for i in r.info]
        except grpc.RpcError as err:
            from .client import wrap

            raise wrap(err, "list snapshots") from None

    def _orphan_shims(self) -> list[str]:
        """Shims of this containerd and namespace serving no container it has; a shim
        whose task was just deleted may take a moment to exit, so look again for up to
        a second before calling it left over."""
        c = self.client
        deadline = time.monotonic() + 1.0
        while True:
            known = {x.id for x in c.call(c.containers.List,
                                          containers_pb2.ListContainersRequest(),
                                          "list containers").containers}
            found = [f"{s.pid} {s.id}" for s in orphans.orphans(c.address, c.namespace, known)]
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def leftovers(self) -> dict[str, list[str]]:
        """What kata's namespace holds beyond images: used by tests and `kata daemon status`.

        Every runtime of this process on the same containerd is drained first, not only
        this one: all carry the process's owner label, and another one's deferred
        releases or idle shim anchor (held until its idle timer, shimgroup.py) are not
        left over, only not released yet. (Found in the suite: a test's own runtime
        listed the session runtime's anchor just after a realiser run on it.)"""
        for rt in list(ContainerdRuntime._live):
            if rt is not self and rt.client.address == self.client.address:
                rt.drain()
        self.drain()
        c = self.client
        mounts = []
        if self.mount_roots:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    point = line.split()[4]
                    if any(point.startswith(r + "/") for r in self.mount_roots):
                        mounts.append(point)
        return {
            "containers": [x.id for x in c.call(c.containers.List,
                                                containers_pb2.ListContainersRequest(),
                                                "list containers").containers],
            "tasks": [t.id for t in c.call(c.tasks.List, tasks_pb2.ListTasksRequest(),
                                           "list tasks").tasks],
            # an image view another live runtime of this process keeps is not a leftover
            "snapshots": [i.name for i in self._snapshots() if i.kind != snapshots_pb2.COMMITTED
                          and i.name not in DirectSteps.held_views()],
            "leases": [x.id for x in c.call(c.leases.List, leases_pb2.ListRequest(),
                                            "list leases").leases],
            "mounts": mounts,
            "shims": self._orphan_shims(),
            "netns": self.network.leftovers(),
            "steps": self.direct.leftovers(),
            "fifos": sorted(str(p) for p in self.fifo_root.glob("*/*")) if self.fifo_root.is_dir() else [],
        }


class _PullMeter:
    """Counts a pull's layers and bytes for a ``PullCallback`` (at most 10 reports a second)."""

    def __init__(self, ref: str, report: PullCallback | None) -> None:
        self.ref, self.report = ref, report
        self.layers: dict[str, int] = {}  # layer digest -> size, of those still to fetch
        self.layers_done = self.bytes_done = 0
        self._lock = threading.Lock()
        self._last = 0.0

    def plan(self, manifest: bytes, store: ImageStore) -> None:
        """Count the platform manifest's layers that are not stored yet."""
        layers = _json(manifest).get("layers") or []
        for layer in layers:
            digest, size = layer.get("digest"), layer.get("size")
            if isinstance(digest, str) and isinstance(size, int) and not store.has_blob(digest):
                self.layers[digest] = size
        self._send(force=True)

    def count(self, desc, chunks):  # noqa: ANN001, ANN201 - (Descriptor, Iterable[bytes])
        if desc.digest not in self.layers:  # the config: not a layer, not counted
            yield from chunks
            return
        for chunk in chunks:
            with self._lock:
                self.bytes_done += len(chunk)
            self._send()
            yield chunk
        with self._lock:
            self.layers_done += 1
        self._send(force=True)

    def finish(self, *, stopped: bool = False) -> None:
        """The last report: ``done``, and ``stopped`` when the pull ended without its image."""
        self._send(force=True, done=True, stopped=stopped)

    def _send(self, force: bool = False, done: bool = False, stopped: bool = False) -> None:
        if self.report is None:
            return
        import time

        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            event = PullProgress(image=self.ref, layers_done=self.layers_done,
                                 layers_total=len(self.layers), bytes_done=self.bytes_done,
                                 bytes_total=sum(self.layers.values()), done=done,
                                 stopped=stopped)
        self.report(event)


def _steps_root_of(address: str) -> Path:
    """Where direct steps live for a containerd known by its address alone: beside it when
    it is kata's own embedded daemon (its socket next to its ``root/`` and pid file, as
    ``daemon_paths`` lays them out), else ``STEPS_ROOT``."""
    run = Path(address.removeprefix("unix://")).parent
    if (run / "root").is_dir() and (run / "containerd.pid").exists():
        return run / "steps"
    return Path(STEPS_ROOT)


def _raiser(err: BaseException):  # noqa: ANN202
    def again() -> None:
        raise err
    return again


def _json(body: bytes) -> dict:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
