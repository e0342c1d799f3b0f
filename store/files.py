"""Small immutable records (realisations, derivations, runs, pins) as atomically written files,
and the store's small file helpers (ingest names, directory fsync, OS errors as StoreErrors).

Imports no codec and no hash: the cached path (``kata.realise.noop``) writes a run record
with :func:`write_immutable` and nothing else of the store's writing side."""

from __future__ import annotations

import errno
import os
import stat

import procs

from .errors import StoreError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_OWNER: tuple[int, str] = (-1, "")


def _owner() -> str:
    """This process's owner label, computed once per pid (a forked child has its own)."""
    global _OWNER
    pid = os.getpid()
    if _OWNER[0] != pid:
        _OWNER = (pid, procs.owner_id(pid))
    return _OWNER[1]


def tmp_name(kind: str) -> str:
    """An ingest file name that says who writes it: ``kind.<random>.<owner>``, the owner
    being ``procs.owner_id()`` (pid, start time, boot id)."""
    return f"{kind}.{os.urandom(16).hex()}.{_owner()}"


def tmp_owner_dead(name: str) -> bool:
    """True when ``name`` (a ``tmp_name``) was made by a process that provably ended
    (``procs.owner_dead``: this boot of this host, and gone). Another host's file, or a
    name of another shape, is not known to be dead: gc leaves it to the grace period."""
    parts = name.split(".", 2)
    return len(parts) == 3 and procs.owner_dead(parts[2])


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename in it is durable; filesystems that refuse are tolerated."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # sshfs/FUSE and some NFS setups reject fsync on a directory
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.ENOSYS, errno.EIO):
            raise
    finally:
        os.close(fd)


def os_error(err: OSError, what: str, obj: str | None = None) -> StoreError:
    """Map an OS error to a StoreError with a reason a caller can act on."""
    if err.errno in _DISK_FULL:
        return StoreError("store.disk_full", f"no space left on the store's filesystem while {what}",
                          obj=obj)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError("store.permission", f"permission denied while {what}: {err}", obj=obj)
    return StoreError("store.io", f"I/O error while {what}: {err}", obj=obj)


# what a filesystem without hard links (or one that refuses them here) answers to link()
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS,
             errno.EMLINK, errno.EACCES)


def write_immutable(tmp_dir: str, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` via tmp + fsync + rename + dir fsync.

    Returns False (and writes nothing) when ``path`` already exists: records are
    immutable, the first writer wins.
    """
    if os.path.exists(path):
        return False
    tmp = os.path.join(tmp_dir, tmp_name("rec"))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        parent = os.path.dirname(path)
        if os.path.exists(path):
            os.unlink(tmp)
            return False
        try:
            os.rename(tmp, path)
        except FileNotFoundError:  # the shard's directory, made once (then a rename is enough)
            os.makedirs(parent, exist_ok=True)
            fsync_dir(os.path.dirname(parent))
            os.rename(tmp, path)
        fsync_dir(parent)
        return True
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        kinds = {"realisations": "a realisation record", "derivations": "a derivation record",
                 "runs": "a run record", "pins": "a pin"}
        dirs = path.split(os.sep)[-3:-1]  # <kind>/<name> or <kind>/<shard>/<name>
        what = next((kinds[d] for d in reversed(dirs) if d in kinds), os.path.basename(path))
        raise os_error(err, f"writing {what}", path) from err


def link_immutable(source: str, path: str) -> bool | None:
    """Give the record at ``source`` (written by ``write_immutable``, durable) a second
    name ``path``: a hard link + dir fsync, no new inode and no data to sync.

    Returns False when ``path`` already exists (the first writer wins), None when the
    filesystem has no hard links here (the caller writes the record instead)."""
    if os.path.exists(path):
        return False
    parent = os.path.dirname(path)
    try:
        try:
            os.link(source, path)
        except FileNotFoundError:  # the shard's directory, made once
            os.makedirs(parent, exist_ok=True)
            fsync_dir(os.path.dirname(parent))
            os.link(source, path)
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno in _NO_LINKS:
            return None
        raise os_error(err, "writing a realisation record", path) from err
    fsync_dir(parent)
    return True


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def iter_sharded(top: str):
    """(name, path, mtime) of every file under ``top/<shard>/``."""
    try:
        shards = list(os.scandir(top))
    except FileNotFoundError:
        return
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            try:
                yield entry.name, entry.path, entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue


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


def publish_dir(build, work: str, final: str) -> None:
    """Build a directory at ``work`` (``build(work)``) and rename it to ``final``; a
    concurrent builder that published ``final`` first wins (same content by name), and
    ours is removed. On any failure nothing is left at ``work``.

    Raises whatever ``build`` raises, or ``OSError`` when the rename fails and no
    ``final`` exists."""
    try:
        build(work)
        try:
            os.rename(work, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            force_rmtree(work)  # another consumer published the same content first
    except BaseException:
        if os.path.lexists(work):
            force_rmtree(work)
        raise
