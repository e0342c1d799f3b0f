"""Removing what a process left: scratch trees (a step's workspace or root filesystem
layer, a lease's input root, unpacked trees) of any shape a hostile step can give them.

Shared by the store, the realiser, the containerd adapter and the worker, so it imports
nothing of ``kata`` or ``store`` (as ``procs`` itself).
"""

from __future__ import annotations

import os
import stat


def sweep_dead_dirs(parent: str, prefix: str) -> list[str]:
    """Remove the directories ``<prefix><pid>.<start ticks>-*`` (``procs.pid_tag``; a bare
    pid in older names) under ``parent`` whose process is gone; the paths removed. Only
    this user's real directories are touched (``parent`` may be the shared temp
    directory), and a live pid's never (a reused pid is not alive: its start differs)."""
    from . import pid_tag_alive

    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        tag = entry.name[len(prefix):].split("-", 1)[0] if entry.name.startswith(prefix) else ""
        if pid_tag_alive(tag) is not False:  # not ours, or alive
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            force_rmtree(entry.path)
            removed.append(entry.path)
    return removed


def force_rmtree(path: str) -> None:
    """Remove a tree even where it was made read-only (unpacked trees, a step's overlay
    layers); symlinks are removed, never followed; a missing ``path`` is no error. What
    cannot be removed (a busy mount point) is left, silently: callers remove scratch.
    Any depth (``remove_tree``)."""
    remove_tree(path, force=True)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str, *, force: bool = False) -> None:
    """Remove ``path`` and everything below it; links are removed, never followed; a
    missing ``path`` is no error.

    Iterative, holding one directory open at a time and naming each entry relative to
    it: a tree a step made thousands of levels deep (``mkdir d && cd d`` in a loop) is
    bounded neither by Python's recursion limit (``shutil.rmtree`` and ``os.walk``
    recurse on Python 3.11) nor by ``PATH_MAX`` nor by the open-file limit. The tree must
    not change meanwhile (``..`` leads back up): it is scratch nobody else uses.
    ``force``: make read-only directories writable first (an owner other than root needs
    that) and leave what still cannot be removed instead of raising the OSError."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        if force:
            os.chmod(path, 0o700)
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError:
        if not force:
            raise
        return
    names: list[str] = []  # from path down to fd
    pending = [_clear_dir(fd, force)]  # per level: its subdirectories still to remove
    try:
        while True:
            if pending[-1]:
                name = pending[-1].pop()
                try:
                    if force:
                        os.chmod(name, 0o700, dir_fd=fd)  # a directory: nothing to follow
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    if not force:
                        raise
                    continue
                os.close(fd)
                fd = sub
                names.append(name)
                pending.append(_clear_dir(fd, force))
                continue
            pending.pop()
            if not names:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            _quietly(force, os.rmdir, names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    _quietly(force, os.rmdir, path)


def _clear_dir(fd: int, force: bool) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; its subdirectories' names."""
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                else:
                    _quietly(force, os.unlink, entry.name, dir_fd=fd)
    except OSError:
        if not force:
            raise
    return subdirs


def _quietly(force: bool, call, *args, **kwargs) -> None:  # noqa: ANN001
    try:
        call(*args, **kwargs)
    except FileNotFoundError:
        pass
    except OSError:
        if not force:
            raise
