"""Whole-file replacement: a reader sees the old file or the new one, never a torn one.

Used for the small files kata keeps beside the store (loaded configs, no-op records, the
image tag record, REAPI Tree memos) and for git hooks.
"""

from __future__ import annotations

import os
import threading


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory
    (``.<name>.tmp.<pid>.<thread>``, created with ``mode``, so concurrent writers never
    share one), then rename(2) it over ``path``. The directory must exist. Raises OSError;
    on any failure the temporary file is removed and ``path`` is unchanged."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp.{os.getpid()}.{threading.get_ident()}")
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


__all__ = ["write_atomic"]
