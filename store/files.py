"""Small immutable records (realisations, derivations, runs, pins) as atomically written files."""

from __future__ import annotations

import errno
import os

from .objects import fsync_dir, os_error, tmp_name

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
    cannot be removed (a busy mount point) is left, silently: callers remove scratch."""
    import shutil
    import stat

    def onerror(func, p, exc_info):  # noqa: ANN001
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if os.geteuid() != 0:  # root ignores the read-only modes; others must undo them first
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    try:
                        os.chmod(full, 0o755)
                    except OSError:
                        pass
    try:
        os.chmod(path, 0o755)
    except OSError:
        pass
    shutil.rmtree(path, onerror=onerror)


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
