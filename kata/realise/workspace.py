"""A step's working directory: an overlay of read-only trees with a throwaway upper.

Lower layers (top first): the unpacked output trees of the step's dependencies,
its restored ``cache.paths`` tree, and the snapshot of its input files; all of
them are the store's host-local unpacked trees, so passing a 50k-file artifact
to a dependent costs a mount, not a copy. The upper layer is fresh, and is
thrown away (with the mount) once the declared artifacts have been collected.

The overlay is mounted on the host and handed to the container as a bind
mount, so the realiser reads the merged view (artifacts may come from a lower
layer, e.g. a dependency's tree passed on) exactly as the step left it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kata.errors import KataError
from kata.runtimes.base import WORKSPACE_MODE
from procs import pid_tag_alive
from procs.leftovers import force_rmtree, remove_tree

_MNT_DETACH = 2
# the process's own symbols (libc among them): find_library("c") runs `ldconfig -p`
# twice, ~40 ms of a fully cached run
_libc = ctypes.CDLL(None, use_errno=True)
_MAX_OPTIONS = 4000  # the kernel copies at most one page of mount options


# the new mount API (Linux >= 5.2; overlayfs' "lowerdir+" since 6.8): one call per layer,
# no page limit on the option string. Syscall numbers are the same on every architecture.
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6
_CLOEXEC, _MOVE_MOUNT_F_EMPTY_PATH = 1, 4
_new_api = True  # cleared once the kernel says it has no "lowerdir+"


def _mount_overlay(lower: list[str], upper: str, work: str, target: str, links: Path) -> None:
    """Mount an overlay of ``lower`` (top first) with ``upper``/``work`` at ``target``.

    Layers are given one by one (``lowerdir+``) where the kernel takes that, so any
    number up to overlayfs' own limit (500) fits; else as one ``lowerdir=`` option,
    which must fit in one page: each layer is then linked under a short name in
    ``links`` (made here). KataError workspace.mount_failed / too_many_layers.
    """
    global _new_api
    if _new_api:
        try:
            _mount_overlay_fsconfig(lower, upper, work, target)
            return
        except _NoLowerdirPlus:
            _new_api = False
    links.mkdir()
    short = []
    for i, layer in enumerate(lower):  # short names keep the option string within one page
        (links / str(i)).symlink_to(layer)
        short.append(str(links / str(i)))
    options = f"lowerdir={':'.join(short)},upperdir={upper},workdir={work}"
    if len(options) > _MAX_OPTIONS:
        raise KataError("workspace.too_many_layers",
                        f"{len(lower)} layers do not fit in one overlay mount", exit_code=1)
    _mount("overlay", target, options, "the step's overlay workspace")


class _NoLowerdirPlus(Exception):
    pass


def _mount_overlay_fsconfig(lower: list[str], upper: str, work: str, target: str) -> None:
    syscall = _libc.syscall
    fs = syscall(_SYS_FSOPEN, b"overlay", _CLOEXEC)
    if fs < 0:
        raise _NoLowerdirPlus()
    try:
        def config(key: str, value: str) -> None:
            if syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0) < 0:
                err = ctypes.get_errno()
                if key == "lowerdir+" and err == errno.EINVAL and value == lower[0]:
                    raise _NoLowerdirPlus()
                raise KataError("workspace.mount_failed", f"cannot mount the step's overlay "
                                f"workspace: {key}={value}: {os.strerror(err)}", exit_code=1)

        for layer in lower:
            config("lowerdir+", layer)
        config("upperdir", upper)
        config("workdir", work)
        if syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0) < 0:
            err = ctypes.get_errno()
            raise KataError("workspace.mount_failed", f"cannot mount the step's overlay workspace "
                            f"({len(lower)} layers): {os.strerror(err)}", exit_code=1)
        mnt = syscall(_SYS_FSMOUNT, fs, _CLOEXEC, 0)
        if mnt < 0:
            err = ctypes.get_errno()
            raise KataError("workspace.mount_failed",
                            f"cannot mount the step's overlay workspace: {os.strerror(err)}",
                            exit_code=1)
        try:
            if syscall(_SYS_MOVE_MOUNT, mnt, b"", -100, target.encode(),
                       _MOVE_MOUNT_F_EMPTY_PATH) < 0:
                err = ctypes.get_errno()
                raise KataError("workspace.mount_failed", f"cannot attach the step's overlay "
                                f"workspace at {target}: {os.strerror(err)}", exit_code=1)
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


def _mount(fstype: str, target: str, options: str, what: str) -> None:
    """mount(2) of a filesystem without a device; KataError naming ``what`` on failure."""
    if _libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise KataError("workspace.mount_failed",
                        f"cannot mount {what}: {os.strerror(err)} ({options})", exit_code=1)


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # not mounted
        return
    _libc.umount2(target.encode(), _MNT_DETACH)  # busy: detach, the kernel finishes later


def _remove_tree(path: str) -> None:
    """Delete a closed workspace (a few directories and what the step wrote in its upper
    layer), never following a link, at any depth a step could nest its directories
    (``procs.leftovers.remove_tree``: the step's container is gone, so nothing moves under
    it); ``force_rmtree`` takes over for anything unusual (a mode root cannot pass, a
    busy mount point)."""
    try:
        remove_tree(path)
    except OSError:
        force_rmtree(path)


@functools.lru_cache(maxsize=256)
def _real_parent(path: str) -> str:
    return os.path.realpath(path)


def _realpath(layer: "str | os.PathLike[str]") -> str:
    """``os.path.realpath(layer)``, with the parent's resolved once per process: layers
    are the store's unpacked and merged trees, a few parents for thousands of layers
    (realpath costs an lstat per component, ~0.1 ms a layer)."""
    path = os.path.abspath(layer)
    parent, name = os.path.split(path)
    if not name or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(_real_parent(parent), name)


class WorkspaceLike(Protocol):
    """A step's working directory at ``path``, released by ``close()`` (or ``with``)."""

    path: Path

    def close(self) -> None: ...

    def __enter__(self) -> "WorkspaceLike": ...

    def __exit__(self, *exc: object) -> None: ...


# (work_root, layers top first) -> a workspace; the realiser is handed one
WorkspaceFactory = Callable[[Path, list[Path]], WorkspaceLike]


class OverlayWorkspace:
    """A mounted overlay at ``self.path``; ``close()`` unmounts and deletes it.

    ``layers``: host directories, top first (later ones are hidden by earlier
    ones where paths collide). Duplicates are dropped, keeping the topmost.
    """

    def __init__(self, work_root: Path, layers: list[Path]) -> None:
        self.root = work_root / uuid.uuid4().hex[:12]
        self.path = self.root / "m"
        self._mounted = False
        self.root.mkdir(parents=True)
        try:
            lower = list(dict.fromkeys(_realpath(layer) for layer in layers))
            root = str(self.root)
            if not lower:
                os.mkdir(root + "/e")
                lower.append(root + "/e")
            for name in ("u", "w", "m"):
                os.mkdir(f"{root}/{name}")
            # the upper's root is the workspace's root as the step sees it (`stat .`): its
            # mode is WORKSPACE_MODE, never what kata's umask left (0700 under umask 077,
            # 0775 under 002): one key, one view on every host, as a worker gives it
            os.chmod(root + "/u", WORKSPACE_MODE)
            _mount_overlay(lower, root + "/u", root + "/w", str(self.path), self.root / "l")
            self._mounted = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._mounted:
            _umount(str(self.path))
            self._mounted = False
        _remove_tree(str(self.root))

    def __enter__(self) -> "OverlayWorkspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Workspace = OverlayWorkspace  # the real implementation, under its historical name


class BackgroundCloser:
    """Closes workspaces on a thread of its own, so that a step's slot is free as soon as
    its artifacts are stored: unmounting a step's overlay and deleting its upper layer
    is little CPU but tens of milliseconds of waiting on the disk (measured ~33 ms per
    step on a busy machine, bench/bazel_side_by_side.py), which would otherwise hold a
    ``max_parallel`` slot. ``drain()`` waits until every workspace handed over is closed;
    the realiser drains before it removes its run directory. ``close()`` of a workspace
    raises nothing it would need to report (a busy mount is detached, what cannot be
    deleted is left for ``sweep_dead_runs``)."""

    _LINGER = 2.0  # seconds the thread waits for the next workspace before it ends

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._pending: list[WorkspaceLike] = []
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def close(self, workspace: WorkspaceLike) -> None:
        """Hand ``workspace`` over; it is closed soon, in order. One thread serves the
        steps that end within ``_LINGER`` of each other (not one thread per step)."""
        with self._lock:
            self._pending.append(workspace)
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kata-ws-close",
                                                daemon=True)
                self._thread.start()
            else:
                self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._idle.set()
                    self._lock.wait(self._LINGER)
                    if not self._pending:
                        self._thread = None
                        return
                workspace = self._pending.pop(0)
            try:
                workspace.close()
            except Exception:  # noqa: BLE001 - left for sweep_dead_runs; never lost silently
                logging.getLogger("kata.realise").warning(
                    "workspace %s not closed", getattr(workspace, "path", "?"), exc_info=True)

    def drain(self) -> None:
        """Wait until every workspace handed over so far is closed."""
        self._idle.wait()


class CopyWorkspace:
    """The copying fake: the layers copied bottom first into a plain directory (later,
    higher layers win), writable, no mount and no root. Same contract as the overlay
    for what a step sees; for realiser tests, not for real runs (a copy costs what the
    overlay saves)."""

    def __init__(self, work_root: Path, layers: list[Path]) -> None:
        self.root = work_root / uuid.uuid4().hex[:12]
        self.path = self.root / "m"
        self.path.mkdir(parents=True)
        try:
            for layer in reversed(layers):  # bottom first; each made writable for the next
                shutil.copytree(layer, self.path, symlinks=True, dirs_exist_ok=True)
                subprocess.run(["chmod", "-R", "u+rwX", str(self.path)], check=True)
            os.chmod(self.path, WORKSPACE_MODE)  # as the overlay's upper root, any umask
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        force_rmtree(str(self.root))

    def __enter__(self) -> "CopyWorkspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep_dead_runs(work_root: Path) -> None:
    """Remove what a killed kata left under ``work_root``: mounts first, then files.

    Each run works in ``run-<pid>.<start ticks>-<run id>/`` (``procs.pid_tag``); only
    runs whose process is gone are swept, so two kata runs side by side leave each other
    alone, and a new process that got a dead run's pid is not taken for it.
    """
    if not work_root.is_dir():
        return
    for run in work_root.iterdir():
        parts = run.name.split("-")
        if len(parts) < 3 or parts[0] != "run" or pid_tag_alive(parts[1]) is not False:
            continue
        for entry in run.iterdir() if run.is_dir() else ():
            merged = entry / "m"
            if merged.is_dir():
                _umount(str(merged))
            elif entry.name.startswith("secrets-") and os.path.ismount(entry):
                _umount(str(entry))  # a SecretsDir's tmpfs (its files go with it)
        force_rmtree(str(run))


class SecretsDir:
    """Secret values as files on a private tmpfs, bind-mounted read-only into the step.

    containerd writes a container's spec (env included) to disk, so values never go in
    the spec: the step's shell exports them from these files (``SECRETS_PRELUDE``).
    """

    def __init__(self, parent: Path, values: dict[str, str],
                 owner: tuple[int, int] | None = None) -> None:
        """``owner``: the (uid, gid) the step or service runs as when not root; the
        tmpfs and its files are theirs (modes 0700/0400 stay), else unreadable to it."""
        self.path = parent / f"secrets-{uuid.uuid4().hex[:12]}"
        self.path.mkdir(mode=0o700)
        self._mounted = False
        try:
            _mount("tmpfs", str(self.path), "mode=0700,size=4m", "a tmpfs for secrets")
            self._mounted = True
            for name, value in values.items():
                fd = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
                with os.fdopen(fd, "w") as f:
                    if owner is not None:
                        os.fchown(f.fileno(), *owner)
                    f.write(value)
            if owner is not None:
                os.chown(self.path, *owner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._mounted:
            _umount(str(self.path))
            self._mounted = False
        try:
            self.path.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "SecretsDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SECRETS_TARGET = "/run/kata/secrets"
SECRETS_PRELUDE = (
    f'for f in {SECRETS_TARGET}/*; do [ -f "$f" ] && export "${{f##*/}}=$(cat "$f")"; done\n'
)
