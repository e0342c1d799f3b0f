"""Shims containerd no longer knows: found in /proc, ended, their bundles released.

A kata process killed while ``Tasks.Create`` is in flight cancels the call: containerd
has already started the task's shim (``containerd-shim-runc-v2``, which daemonises and
outlives everything) and runc has created the container, but the task is never
registered and the sweep deletes its container record. Nothing in containerd's API
then refers to that shim: it stays forever, with the container's init process waiting
in runc's ``created`` state and the container rootfs mounted in the task bundle.

The next connect finds such shims by their command line (``-namespace <ns> -id <id>
-address <our socket>``: only shims of our containerd and namespace are considered)
whose id is no container containerd has, and reaps each: ``runc delete --force`` or
``crun delete --force``, whichever runtime's state the container left (kills the
container's processes, removes its cgroup and runtime state), SIGKILL of the shim,
then the bundle's rootfs is unmounted and the bundle and shim socket removed.
A shim whose container containerd still has is never touched (a live kata owns it, or
the sweep deals with it through the API).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass

from procs import pid_alive

from .sandbox import remove_cgroup
from .spec import cgroup_path

log = logging.getLogger("kata.runtime")

SHIM_BINARY = "containerd-shim-runc-v2"
RUNC_ROOT = "/run/containerd/runc"  # the runc v2 shim's default root (+ /<namespace>)
# what each OCI runtime keeps in its state directory (<root>/<id>/), to tell whose it is
_STATE_FILES = (("runc", "state.json"), ("crun", "status"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Shim:
    """One shim process: its pid, the container id it serves, its bundle directory."""

    pid: int
    id: str
    bundle: str  # the shim runs in its task bundle (containerd sets its cwd there)


def shims(address: str, namespace: str) -> list[Shim]:
    """The live runc v2 shims of the containerd at ``address`` serving ``namespace``."""
    target = address.removeprefix("unix://")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if not argv or os.path.basename(argv[0]) != SHIM_BINARY.encode():
                continue
            args = _flags([a.decode(errors="replace") for a in argv[1:] if a])
            if args.get("-namespace") != namespace or args.get("-address") != target:
                continue
            if "-id" not in args:
                continue
            bundle = os.readlink(f"/proc/{entry.name}/cwd").removesuffix(" (deleted)")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append(Shim(pid=int(entry.name), id=args["-id"], bundle=bundle))
    return found


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out[arg] = args[i + 1]
    return out


def orphans(address: str, namespace: str, containers: Collection[str]) -> list[Shim]:
    """Shims of ``address``/``namespace`` whose container id is not in ``containers``
    (the ids containerd has)."""
    return [s for s in shims(address, namespace) if s.id not in containers]


def reap(shim: Shim, namespace: str) -> None:
    """End ``shim``, its container and what its bundle holds; every part is tried, the
    first failure is raised after the rest ran (``OSError`` / ``RuntimeError``)."""
    errors: list[BaseException] = []
    runc_root = os.path.join(RUNC_ROOT, namespace)
    state = os.path.join(runc_root, shim.id)
    if os.path.isdir(state):
        binary = next((b for b, f in _STATE_FILES if os.path.exists(os.path.join(state, f))),
                      "runc")
        res = subprocess.run([binary, "--root", runc_root, "delete", "--force", shim.id],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0 and os.path.isdir(state):
            errors.append(RuntimeError(f"{binary} delete {shim.id}: {res.stderr.strip()}"))
    init = _init_child(shim)
    if init:  # runc did not know it (another root): the container's init goes first
        try:
            os.kill(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
    socket = _shim_socket(shim.bundle)
    children = _children(shim.pid)  # an OCI runtime it runs dies with it (parent-death signal)
    try:
        os.kill(shim.pid, signal.SIGKILL)
        _wait_gone(shim.pid)
    except ProcessLookupError:
        pass
    for pid in children:  # before the cgroup goes: a create under way may still make it
        _wait_gone(pid)
    _remove_cgroup(shim.id, errors)  # after the shim: its death ends a create under way
    rootfs = os.path.join(shim.bundle, "rootfs")
    if os.path.ismount(rootfs):
        res = subprocess.run(["umount", "-l", rootfs], capture_output=True, text=True)
        if res.returncode != 0 and os.path.ismount(rootfs):  # not: unmounted meanwhile
            errors.append(RuntimeError(f"umount {rootfs}: {res.stderr.strip()}"))
    if not errors:
        shutil.rmtree(shim.bundle, ignore_errors=True)
        if socket:
            try:
                os.unlink(socket)
            except FileNotFoundError:
                pass
            except OSError as err:
                errors.append(err)
    if errors:
        raise errors[0]


def _remove_cgroup(cid: str, errors: list[BaseException]) -> None:
    """The container's cgroup, which ``<runtime> delete`` leaves when the runtime's
    create was killed before it wrote its state (sandbox.remove_cgroup); a failure
    keeps the bundle, the record the next sweep finds it by."""
    try:
        remove_cgroup(cgroup_path(cid))
    except OSError as err:
        errors.append(err)


def _init_child(shim: Shim) -> int:
    """The container's init pid from ``<bundle>/init.pid``, only while it is still a child
    of the shim (a pid is never killed on the word of a stale file)."""
    try:
        with open(os.path.join(shim.bundle, "init.pid"), encoding="ascii") as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/stat", "rb") as fh:
            ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError):
        return 0
    return pid if ppid == shim.pid else 0


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
                kids += [int(k) for k in fh.read().split()]
    except OSError:
        pass
    return kids


def _shim_socket(bundle: str) -> str:
    """The shim's socket path from ``<bundle>/address`` (``unix:///run/containerd/s/…``),
    if it is a file of containerd's socket directory."""
    try:
        with open(os.path.join(bundle, "address"), encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return ""
    path = text.removeprefix("unix://")
    return path if path.startswith("/run/containerd/s/") else ""


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    # dead (a zombie counts: reaping it is its parent's business) or still there after timeout
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            log.warning("process %d did not exit after SIGKILL", pid)
            return
        time.sleep(0.01)


def stray_bundles(task_dir: str, containers: Collection[str]) -> list[str]:
    """Task bundles under ``task_dir`` (``<containerd state>/io.containerd.runtime.v2.task/
    <namespace>``) whose container containerd does not have.

    With one shim for many containers (shimgroup.py), a kata killed inside Tasks.Create
    leaves a container in a shim that also serves others: no shim of its own to find by
    its command line, only its bundle (rootfs mounted) and its OCI runtime state."""
    try:
        entries = list(os.scandir(task_dir))
    except FileNotFoundError:
        return []
    return [e.path for e in entries if e.is_dir(follow_symlinks=False)
            and e.name not in containers]


def reap_bundle(bundle: str, namespace: str) -> None:
    """End the container of a stray ``bundle`` (``<runtime> delete --force``: its
    processes and cgroup), unmount its rootfs, remove it. The first failure is raised
    after the rest ran (``OSError`` / ``RuntimeError``)."""
    errors: list[BaseException] = []
    cid = os.path.basename(bundle)
    runc_root = os.path.join(RUNC_ROOT, namespace)
    state = os.path.join(runc_root, cid)
    if os.path.isdir(state):
        binary = next((b for b, f in _STATE_FILES if os.path.exists(os.path.join(state, f))),
                      "runc")
        res = subprocess.run([binary, "--root", runc_root, "delete", "--force", cid],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0 and os.path.isdir(state):
            errors.append(RuntimeError(f"{binary} delete {cid}: {res.stderr.strip()}"))
    _remove_cgroup(cid, errors)
    rootfs = os.path.join(bundle, "rootfs")
    if os.path.ismount(rootfs):
        res = subprocess.run(["umount", "-l", rootfs], capture_output=True, text=True)
        if res.returncode != 0 and os.path.ismount(rootfs):
            errors.append(RuntimeError(f"umount {rootfs}: {res.stderr.strip()}"))
    if not errors:
        shutil.rmtree(bundle, ignore_errors=True)
    if errors:
        raise errors[0]
