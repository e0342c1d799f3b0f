"""Steps without services run by kata itself: one ``crun run`` per step, no containerd task.

containerd 1.6's task model costs ~60 ms of system CPU per trivial step here (two shim
processes, four crun processes, ~8 gRPC calls with their bolt transactions;
docs/architecture.md, "Direct steps"). For a step with no services kata keeps containerd
for images and snapshots only and supervises the container itself:

- **Rootfs.** One read-only View of the image's top committed snapshot per image and
  runtime (``DirectSteps.lowers``; labelled ``containerd.io/gc.root`` and with kata's
  owner label, so gc keeps it and the next sweep removes it once its kata is gone) gives
  the image's lower dirs. Each step mounts its own overlay on them, with an upper and a
  work dir of its own, at ``<steps root>/<owner>/<id>/rootfs``.
- **Spec.** The same spec as a containerd task (``spec.build_spec``: seccomp,
  capabilities, masked and read-only paths, namespaces, rlimits, AppArmor), written as the
  bundle's ``config.json``; only ``root.path`` and the cgroup part differ.
- **Cgroups.** crun runs with ``--cgroup-manager=disabled`` inside a per-step cgroup kata
  makes (``/kata/<id>`` in the memory, pids, cpu and devices hierarchies of cgroup v1),
  holding the spec's ``linux.resources`` (memory and swap, CPU quota, pids, devices
  denied but crun's default allow list). ``crun run`` removes a cgroup it made when the
  container exits; this one is kata's, so the OOM and pids checks (``sandbox.oom_killed``,
  ``pids_exhausted``) read it after the exit as they read a task's. A small ``sh`` moves
  itself into the cgroup and execs crun, so every process of the step starts inside it.
- **Process.** One ``crun --root <steps root>/crun run`` per step, stdout and stderr on
  pipes read by ``task._Reader``; its exit status is the step's. Kill, timeout and cancel
  signal every process of the step's cgroup but crun itself (what ``crun kill --all``
  does with a cgroup manager); crun's own errors go to a log file and an exec failure is
  ``runtime.start_failed`` as on the task path.
- **Sweep.** Everything of a step lives under ``<steps root>/<owner>/<id>``, named by the
  kata process that made it (``procs.owner_id``): ``DirectSteps.sweep`` kills what runs in
  a dead owner's cgroups, ``crun delete --force``s its containers, unmounts their rootfs,
  removes the cgroups and the directories.

Only on cgroup v1 (``kata.oci_runtime.direct_blocker``): on the unified hierarchy crun enforces the device rules
with an eBPF program it attaches itself, which a disabled cgroup manager does not do; such
hosts keep the containerd task path.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kata.errors import KataError
from kata.oci_runtime import DIRECT_CONTROLLERS as CONTROLLERS, OciRuntime
from kata.resources import effective
from procs import owner_alive
from procs.leftovers import force_rmtree, remove_tree

from ..base import DISK_EXIT, OutputSink, StepSpec
from .cleanup import Cleanup
from .client import SNAPSHOTTER, Client, ContainerdError, grpc, snapshots_pb2
from .images import RunImage
from .sandbox import CGROUP_ROOT
from .spec import build_spec, cgroup_path, lift_open_files_limit
from .task import OUTPUT_END_WAIT, TaskOptions, _Reader, _with_workdir, compiled_seccomp, \
    limit_verdict, output_ended, released, start_failure, watch

log = logging.getLogger("kata.runtime")
# what crun allows beside a spec's rules (libcrun's default devices; a crun-made
# container's devices.list here): mknod of anything, and the standard character devices
DEFAULT_DEVICES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm",
                   "c 1:5 rwm", "c 1:9 rwm", "c 5:1 rwm", "c 136:* rwm", "c 5:2 rwm")
# moves itself into each cgroup.procs file named before "--", then execs the rest
ENTER_CGROUPS = ('for f; do [ "$f" = -- ] && break; echo 0 > "$f" || exit 125; shift; done; '
                 'shift; exec "$@"')
CRUN_DIR = "crun"  # crun's --root, beside the owners' directories
KILL_WAIT = 30.0  # seconds for a step's processes to end after SIGKILL
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount_overlay(target: str, options: str) -> None:
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise KataError("runtime.mount_failed", f"cannot mount the step's rootfs at {target}: "
                        f"{os.strerror(err)} ({options})", obj=target, exit_code=1)


def _unmount(target: str) -> None:
    """Unmount ``target`` if it is mounted (lazily when it is still busy)."""
    if not os.path.ismount(target):
        return
    if _libc.umount2(target.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(target.encode(), MNT_DETACH) == 0:
        return
    if err in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
        return
    raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _cgroup_dirs(cid: str, root: Path = CGROUP_ROOT) -> list[Path]:
    rel = cgroup_path(cid).lstrip("/")
    return [root / c / rel for c in CONTROLLERS]


def procs(cid: str) -> list[int]:
    """The processes of step ``cid``'s cgroup; [] once it is gone."""
    try:
        text = (CGROUP_ROOT / "pids" / cgroup_path(cid).lstrip("/") / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _signal_all(cid: str, sig: int, spare: int | None = None) -> int:
    """Send ``sig`` to every process of the step's cgroup but ``spare``; how many."""
    n = 0
    for pid in procs(cid):
        if pid == spare:
            continue
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def _write(path: Path, value: object) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def make_cgroup(cid: str, resources: dict[str, Any]) -> list[Path]:
    """Create step ``cid``'s cgroups holding the spec's ``linux.resources`` (cgroup v1
    files, as runc and crun write them: config-linux.md "Control groups"); the dirs made.
    A failure removes what it made and raises KataError ``runtime.cgroup_failed``."""
    made: list[Path] = []
    try:
        for d in _cgroup_dirs(cid):
            d.mkdir(parents=True)
            made.append(d)
        mem_dir, pids_dir, cpu_dir, dev_dir = made
        memory = resources.get("memory") or {}
        if memory.get("limit"):
            _write(mem_dir / "memory.limit_in_bytes", memory["limit"])
            if memory.get("swap") and (mem_dir / "memory.memsw.limit_in_bytes").exists():
                _write(mem_dir / "memory.memsw.limit_in_bytes", memory["swap"])
        cpu = resources.get("cpu") or {}
        if cpu.get("period"):
            _write(cpu_dir / "cpu.cfs_period_us", cpu["period"])
        if cpu.get("quota"):
            _write(cpu_dir / "cpu.cfs_quota_us", cpu["quota"])
        pids = (resources.get("pids") or {}).get("limit")
        if pids and pids > 0:  # + crun, which waits in the cgroup (not in the step's
            _write(pids_dir / "pids.max", pids + 1)  # pid namespace; a shim is outside)
        for rule in resources.get("devices") or ():
            kind, access = rule.get("type", "a"), rule.get("access", "rwm")
            major, minor = rule.get("major", "*"), rule.get("minor", "*")
            line = "a" if kind == "a" else f"{kind} {major}:{minor} {access}"
            _write(dev_dir / ("devices.allow" if rule.get("allow") else "devices.deny"), line)
        for line in DEFAULT_DEVICES:
            _write(dev_dir / "devices.allow", line)
    except OSError as err:
        remove_cgroup(made)
        raise KataError("runtime.cgroup_failed", f"cannot set up the cgroup of {cid}: {err}",
                        obj=cid, exit_code=1) from None
    return made


def remove_cgroup(dirs: list[Path], wait: float = 5.0) -> None:
    """Remove a step's cgroup dirs; processes still exiting get up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    for d in reversed(dirs):
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)


class DirectSteps:
    """A runtime's direct steps: where they live, the image views, the sweep.

    ``root``: ``<root>/<owner>/<id>/`` per step (config.json, rootfs/, upper/, work/,
    crun.log), ``<root>/crun`` is crun's state (``--root``). Thread-safe.
    """

    _all_views: set[str] = set()  # view keys held by every live DirectSteps of this process
    _all_lock = threading.Lock()

    @classmethod
    def held_views(cls) -> frozenset[str]:
        """The image views live runtimes of this process keep for their next steps (not
        leftovers: each is removed when its runtime drains or closes)."""
        with cls._all_lock:
            return frozenset(cls._all_views)

    def __init__(self, client: Client, oci: OciRuntime, root: Path) -> None:
        self.client = client
        self.oci = oci
        self.root = root
        self.crun_root = root / CRUN_DIR
        self._lock = threading.Lock()
        self._views: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        self._view_locks: dict[str, threading.Lock] = {}
        self._in_flight = 0
        self._stale: list[str] = []  # view keys forgotten, removed by the next drain

    # -- image views -------------------------------------------------------------------
    def lowers(self, image: RunImage) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(lower dirs top first, other overlay options) of ``image``'s root filesystem,
        from a View of its top snapshot made once per runtime. ContainerdError
        (obj ``prepare snapshot``) when the snapshot is gone."""
        chain = image.chain_id
        with self._lock:
            found = self._views.get(chain)
            if found is not None:
                return found[1], found[2]
            lock = self._view_locks.setdefault(chain, threading.Lock())
        with lock:
            with self._lock:
                found = self._views.get(chain)
            if found is not None:
                return found[1], found[2]
            c = self.client
            key = f"kata-view-{secrets.token_hex(8)}"
            labels = {"containerd.io/gc.root": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      **c.owner_labels()}
            mounts = c.make_snapshot(c.snapshots.View, snapshots_pb2.ViewSnapshotRequest(
                snapshotter=SNAPSHOTTER, key=key, parent=chain, labels=labels),
                "prepare snapshot").mounts
            lower, extra = _lower_dirs(mounts)
            with self._lock:
                self._views[chain] = (key, lower, extra)
            with self._all_lock:
                self._all_views.add(key)
            return lower, extra

    def forget(self, chain: str) -> None:
        """Drop the cached view of ``chain`` (its snapshot went away): the next step makes
        a new one; the old one is removed by ``drain`` or the next sweep."""
        with self._lock:
            found = self._views.pop(chain, None)
            if found is not None:
                self._stale.append(found[0])

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def drain(self) -> None:
        """Remove the image views and this process's (empty) steps directory when no step
        is in flight (the next step makes them again); the first failure is raised after
        all were tried."""
        with self._lock:
            if self._in_flight:
                return
            keys = [v[0] for v in self._views.values()] + self._stale
            self._views, self._stale = {}, []
            try:  # under the lock: a step enters before it makes its directory in it
                (self.root / self.client.owner).rmdir()
            except OSError:
                pass  # never made, or not empty (a step dir the sweep reaps)
        with self._all_lock:
            self._all_views.difference_update(keys)
        c = self.client
        first: BaseException | None = None
        for key in keys:
            try:
                c.call(c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
                    snapshotter=SNAPSHOTTER, key=key), f"remove view {key}")
            except ContainerdError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    first = first or err
        if first is not None:
            raise first

    # -- orphans -------------------------------------------------------------------------
    def step_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [d for o in self.root.iterdir() if o.name != CRUN_DIR and o.is_dir()
                for d in o.iterdir()]

    def sweep(self, everything: bool = False) -> int:
        """Reap the steps of dead kata processes (every step with ``everything``): kill
        their processes, delete their crun containers, unmount, remove cgroups and dirs."""
        if not self.root.is_dir():
            return 0
        n = 0
        for owner in self.root.iterdir():
            if owner.name == CRUN_DIR or not owner.is_dir():
                continue
            if not everything and owner_alive(owner.name):
                continue
            for d in owner.iterdir():
                self.reap(d)
                n += 1
            try:
                owner.rmdir()
            except OSError:
                pass  # a live kata of the same name? never: owner ids are unique per boot
        return n

    def reap(self, d: Path) -> None:
        cid = d.name
        deadline = time.monotonic() + KILL_WAIT
        while _signal_all(cid, signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.02)
        if (self.crun_root / cid).exists():
            subprocess.run([self.oci.binary, "--cgroup-manager=disabled", "--root",
                            str(self.crun_root), "delete", "--force", cid],
                           capture_output=True, timeout=60, check=False)
            shutil.rmtree(self.crun_root / cid, ignore_errors=True)
        _unmount(str(d / "rootfs"))
        remove_cgroup(_cgroup_dirs(cid))
        remove_tree(str(d))  # the step's rootfs upper layer: any depth it nested

    def leftovers(self) -> list[str]:
        """Step directories, crun containers and mounts of direct steps that exist now."""
        found = [str(d) for d in self.step_dirs()]
        if self.crun_root.is_dir():
            found += [str(p) for p in self.crun_root.iterdir()]
        with open("/proc/self/mountinfo") as f:
            found += [line.split()[4] for line in f
                      if line.split()[4].startswith(str(self.root) + "/")]
        return sorted(found)


def _lower_dirs(mounts) -> tuple[tuple[str, ...], tuple[str, ...]]:  # noqa: ANN001
    """The lower dirs (top first) and other options of a View's mounts: one overlay
    mount (``lowerdir=a:b``) or, for a one-layer image, one read-only bind mount."""
    if len(mounts) != 1:
        raise KataError("runtime.mount_failed", f"unexpected view mounts: {list(mounts)}",
                        exit_code=1)
    m = mounts[0]
    if m.type == "bind":
        return (m.source,), ()
    lower: tuple[str, ...] = ()
    extra = []
    for opt in m.options:
        if opt.startswith("lowerdir="):
            lower = tuple(opt.removeprefix("lowerdir=").split(":"))
        elif not opt.startswith(("upperdir=", "workdir=")) and opt not in ("ro", "rw"):
            extra.append(opt)
    if m.type != "overlay" or not lower:
        raise KataError("runtime.mount_failed", f"unexpected view mount {m}", exit_code=1)
    return lower, tuple(extra)


class DirectStep:
    """One run of one step without services by ``crun run``; ``execute`` returns its
    exit status (the same contract as ``task.StepRun``)."""

    def __init__(self, host: DirectSteps, options: TaskOptions, step: StepSpec,
                 image: RunImage, sink: OutputSink, cancel: threading.Event) -> None:
        self.host = host
        self.options = options
        self.step = step
        self.image = image
        self.sink = sink
        self.cancel = cancel
        self.id = f"kata-{secrets.token_hex(10)}"
        self.dir = host.root / host.client.owner / self.id
        self.proc: subprocess.Popen | None = None
        self.readers: list[_Reader] = []
        self.note = b""
        self.pooled: str | None = None
        self.cgroups: list[Path] = []

    def execute(self, defer: Callable[[Cleanup], None] | None = None) -> int:
        """Run the step; return its exit status once its output is complete. With
        ``defer``, the release (unmount, cgroups, directories, network namespace) is
        handed to it instead of being waited for."""
        cleanup = Cleanup()
        try:
            self.host.enter()
            cleanup.push("leave", self.host.leave)
            self._launch(cleanup)
            status = self._supervise()
            self._end_output()
            output_ended(self.readers, self.sink, self.note)
        except BaseException as err:
            cleanup.close(err)
            raise
        return released(cleanup, status, defer)

    def _launch(self, cleanup: Cleanup) -> None:
        step, owner = self.step, self.host.client.owner
        workdir = step.workdir if step.workdir and step.workdir != "/" else (self.image.workdir or "/")
        step = step if workdir == step.workdir else _with_workdir(step, workdir)
        build_spec(step, container_id=self.id, image_env=self.image.env)  # bad input first
        lower, extra = self.host.lowers(self.image)
        netns = None
        network = self.options.network
        if step.network == "default" and self.options.netns_pool is not None:
            name, netns = self.options.netns_pool.acquire(owner)
            self.pooled = name
            cleanup.push("release network", self._release_netns)
        elif step.network == "default" and network is not None:
            cleanup.push("tear down network", lambda: network.teardown(self.id))
            netns = network.setup(self.id, owner)
        spec = build_spec(step, container_id=self.id, image_env=self.image.env, netns=netns,
                          hosts_file=self.options.hosts_file(step))
        compiled_seccomp(spec, self.options)
        d = self.dir
        # the upper layer holds whatever the step wrote to its root filesystem, nested as
        # deep as it liked (shutil.rmtree recurses per level): force_rmtree takes any depth
        cleanup.push("remove step dir", lambda: force_rmtree(str(d)))
        rootfs = d / "rootfs"
        # the upper dir's mode is the root directory's (as a snapshot's fs dir: 0755)
        for sub, mode in (("rootfs", 0o755), ("upper", 0o755), ("work", 0o700)):
            (d / sub).mkdir(parents=True, mode=mode)
            os.chmod(d / sub, mode)  # whatever the umask
        os.chmod(d, 0o700)
        if self.options.disk is not None:  # its root filesystem's writable layer
            self.options.disk.add(str(d / "upper"))
        resources = spec["linux"].pop("resources")
        spec["linux"].pop("cgroupsPath", None)
        spec["root"] = {"path": str(rootfs)}
        # what a containerd container's labels say (run, step): for `ps`-like tooling
        spec["annotations"] = {**step.labels, **spec.get("annotations", {})}
        (d / "config.json").write_text(json.dumps(spec, separators=(",", ":")))
        self.cgroups = make_cgroup(self.id, resources)
        cleanup.push("remove cgroup", lambda: remove_cgroup(self.cgroups))
        options = ",".join((f"lowerdir={':'.join(lower)}", f"upperdir={d}/upper",
                            f"workdir={d}/work", *extra))
        _mount_overlay(str(rootfs), options)
        cleanup.push("unmount rootfs", lambda: _unmount(str(rootfs)))
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds = [out_r, err_r]
        cleanup.push("close pipes", lambda: [os.close(fd) for fd in fds])
        argv = ["/bin/sh", "-c", ENTER_CGROUPS, "sh",
                *(str(c / "cgroup.procs") for c in self.cgroups), "--",
                self.host.oci.binary, "--cgroup-manager=disabled", "--root",
                str(self.host.crun_root), f"--log=file:{d}/crun.log", "run", "--bundle", str(d),
                self.id]
        lift_open_files_limit()  # crun can only lower the rlimits it inherits
        try:
            # a session of its own: crun forwards the signals it gets to the step, and a
            # terminal signals its whole foreground group (Ctrl-C, Ctrl-Z, SIGHUP); the
            # step hears of those only through kata's cancel, as a task's does
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_w,
                                         stderr=err_w, close_fds=True, start_new_session=True)
        finally:
            os.close(out_w)
            os.close(err_w)
        cleanup.push("stop the step", self._stop)
        reader = _Reader([(out_r, "stdout"), (err_r, "stderr")], self.sink, f"{self.id}-output")
        reader.start()
        self.readers.append(reader)

    # -- waiting, timeout, cancellation ----------------------------------------------
    def _wait(self, seconds: float) -> bool:
        """Whether crun (the step) has exited, waiting up to ``seconds``."""
        assert self.proc is not None
        try:
            return self.proc.wait(seconds) is not None
        except subprocess.TimeoutExpired:
            return False

    def _supervise(self) -> int:
        assert self.proc is not None
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            killed_for = watch(lambda seconds: bool(poller.poll(seconds * 1000)), self.cancel,
                               self.step.timeout, self.options.disk)
        finally:
            os.close(pidfd)
        if killed_for is not None:
            exited = threading.Event()
            # no grace for a step filling the disk
            _signal_all(self.id, signal.SIGKILL if killed_for == DISK_EXIT else signal.SIGTERM,
                        spare=self.proc.pid)
            if not self._grace(exited):
                _signal_all(self.id, signal.SIGKILL, spare=self.proc.pid)
            if not self._wait(60):
                raise KataError("runtime.kill_failed",
                                f"step container {self.id} did not die after SIGKILL",
                                obj=self.id, exit_code=1)
        status = self.proc.wait()
        if status < 0:  # crun itself died of a signal: the OOM killer's choice (it waits
            status = 128 - status  # in the step's memory cgroup); nothing supervises the
            self._kill_all()  # step any more (no timeout, no cancel): it ends with crun
        if killed_for is not None:
            return killed_for
        if status != 0:
            self._check_start()
        status, self.note = limit_verdict(self.id, status, effective(self.step.resources).pids,
                                          "step")
        return status

    def _grace(self, exited: threading.Event) -> bool:
        """SIGTERM's grace period (cut short by ``hurry``); whether the step ended."""
        deadline = time.monotonic() + self.options.stop_grace
        while True:
            if self._wait(0.05):
                return True
            if time.monotonic() >= deadline or (self.options.hurry is not None
                                                 and self.options.hurry.is_set()):
                return False

    def _check_start(self) -> None:
        """Raise KataError when crun failed to start the step (its log says why)."""
        try:
            text = (self.dir / "crun.log").read_text(errors="replace").strip()
        except FileNotFoundError:
            return
        if not text:
            return
        message = text.splitlines()[-1]
        detail = start_failure("OCI runtime create failed: " + message)
        if detail is not None:
            raise KataError("runtime.start_failed", f"the step could not start: {detail}",
                            obj=self.id, exit_code=1)
        raise KataError("runtime.crun_failed", f"crun could not run the step: {message}",
                        obj=self.id, exit_code=1)

    def _end_output(self) -> None:
        deadline = time.monotonic() + OUTPUT_END_WAIT + 30
        for reader in self.readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    # -- release -----------------------------------------------------------------------
    def _stop(self) -> None:
        """Make sure nothing of the step runs any more (kata failing or going away)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_all(self.id, signal.SIGKILL, spare=proc.pid)
            if not self._wait(KILL_WAIT):
                proc.kill()
                proc.wait()
        self._kill_all()
        if (self.host.crun_root / self.id).exists():  # crun itself was killed
            subprocess.run([self.host.oci.binary, "--cgroup-manager=disabled", "--root",
                            str(self.host.crun_root), "delete", "--force", self.id],
                           capture_output=True, timeout=60, check=False)
        for reader in self.readers:
            reader.join(KILL_WAIT)
        self._release_netns()

    def _kill_all(self) -> None:
        """SIGKILL every process of the step's cgroup until none is left (or KILL_WAIT)."""
        deadline = time.monotonic() + KILL_WAIT
        while _signal_all(self.id, signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _release_netns(self) -> None:
        name, self.pooled = self.pooled, None
        if name is not None and self.options.netns_pool is not None:
            self.options.netns_pool.release(name, reusable=not procs(self.id))
