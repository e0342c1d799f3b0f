"""Reading a file a repository controls, on the host, without being led outside it.

A pushed branch controls every file of its checkout, symbolic links included, and the CI
server reads some of them itself (as root) before any sandbox exists: the discovered
``.kata-ci.yaml``, ``.kataignore``. A link to ``/etc/shadow`` would put the host's file
into an error message the pusher reads; a link to ``/dev/zero`` or a FIFO would never end.
So such a file must resolve inside the repository, be a regular file, and be bounded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kata.errors import KataError


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, every symbolic link resolved, lies in ``root`` (resolved too)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def check_inside(root: str | os.PathLike[str], path: str | os.PathLike[str], *,
                 reason: str, what: str) -> None:
    """KataError ``reason`` (exit 2) when ``path`` resolves outside ``root``; the message
    names ``what`` and where the link leads."""
    if not inside(root, path):
        raise KataError(reason, f"{what} is a symbolic link to {os.path.realpath(path)}, "
                        f"outside the repository {os.path.realpath(root)}: kata reads only "
                        "the repository's own files", obj=str(path))


def read_bounded(path: str | os.PathLike[str], *, limit: int, reason: str,
                 what: str) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``limit`` bytes.

    FileNotFoundError when it does not exist (callers decide what absence means);
    KataError ``reason`` (exit 2) when it is not a regular file (a device, a FIFO, a
    directory: opened without blocking, never read), is larger than ``limit``, or
    cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise KataError(reason, f"cannot read {what}: {err.strerror}", obj=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KataError(reason, f"{what} is not a regular file", obj=str(path))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise KataError(reason, f"{what} is larger than {limit >> 20} MiB", obj=str(path))
        return b"".join(chunks)
    except OSError as err:
        raise KataError(reason, f"cannot read {what}: {err.strerror}", obj=str(path)) from None
    finally:
        os.close(fd)


def read_repo_file(root: str | os.PathLike[str], rel: str, *, limit: int, reason: str) -> bytes | None:
    """``root/rel`` read with ``check_inside`` and ``read_bounded``; None when absent."""
    path = Path(root) / rel
    if not os.path.lexists(path):
        return None
    check_inside(root, path, reason=reason, what=rel)
    try:
        return read_bounded(path, limit=limit, reason=reason, what=rel)
    except FileNotFoundError:
        return None
