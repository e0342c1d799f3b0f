"""Whole-file replacement: a reader sees the old file or the new one, never a torn one.

Used for the small files kata keeps beside the store (loaded configs, no-op records, the
image tag record, REAPI Tree memos, the remote cache's pending queue and back-off memo)
and for git hooks.

The temporary file is ``.<name>.tmp.<pid>.<start ticks>.<thread>`` (``procs.pid_tag``): a
writer killed between its create and its rename (SIGKILL, a power cut) leaves it, and the
first write of a later process into the same directory removes every such file whose
writer is gone (``sweep_dead``), so none stays for ever. A live writer's is never touched
(a reused pid is not it: its start time differs).
"""

from __future__ import annotations

import os
import re
import threading

from procs import pid_tag, pid_tag_alive

# ``.<name>.tmp.<pid>.<start ticks>.<thread ident>``
_TMP = re.compile(r"^\..+\.tmp\.(\d+\.\d+)\.\d+$")
_swept: set[tuple[int, str]] = set()  # (pid, directory): swept once per process
_swept_lock = threading.Lock()
_tag: tuple[int, str] = (0, "")  # (pid, pid_tag) of this process (a fork gets its own)


def _own_tag() -> str:
    global _tag
    pid = os.getpid()
    if _tag[0] != pid:
        _tag = (pid, pid_tag(pid))
    return _tag[1]


def tmp_path(path: str | os.PathLike[str]) -> str:
    """The temporary name ``write_atomic`` writes ``path`` through, in this thread."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.tmp.{_own_tag()}.{threading.get_ident()}")


def sweep_dead(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files (``tmp_path``) under ``folder`` whose writer no longer
    runs; returns the paths removed. Only this user's regular files. Never raises."""
    removed = []
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if e.name.startswith(".")]
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or pid_tag_alive(m.group(1)) is not False:
            continue
        try:
            if entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_uid == os.getuid():
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory
    (``tmp_path``, created with ``mode``, so concurrent writers never share one), then
    rename(2) it over ``path``. The first write of this process into a directory first
    removes what dead writers left there (``sweep_dead``). The directory must exist.
    Raises OSError; on any failure the temporary file is removed and ``path`` is
    unchanged."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    key = (os.getpid(), folder)
    if key not in _swept:
        with _swept_lock:
            _swept.add(key)
        sweep_dead(folder)
    tmp = tmp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # the umask narrowed os.open's mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["sweep_dead", "tmp_path", "write_atomic"]
