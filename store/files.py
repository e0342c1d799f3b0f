"""Small immutable records (realisations, derivations, runs, pins) as atomically written files,
and the store's small file helpers (ingest names, directory fsync, OS errors as StoreErrors).

Imports no codec and no hash: the cached path (``kata.realise.noop``) writes a run record
with :func:`write_immutable` and nothing else of the store's writing side."""

from __future__ import annotations

import errno
import os

import procs
from procs.leftovers import force_rmtree

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
