"""Whether a unix socket answers, and to whom: the one probe (standard library only).

Used by kata's containerd (``kata.runtimes.containerd.daemon``), kata's server and its
clients (``kata.server``, ``kata.client``) and ``kata daemon status``."""

from __future__ import annotations

import os
import socket
import struct
from typing import Literal

Access = Literal["yes", "denied", "no"]


def socket_access(path: str | os.PathLike[str], timeout: float = 1.0) -> Access:
    """``"yes"`` (it accepts this process), ``"denied"`` (something is there but the
    socket's mode refuses this user: a non-root user and root's socket) or ``"no"``
    (nothing answers: no file, a stale socket, a timeout)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
        return "yes"
    except PermissionError:
        return "denied"
    except OSError:
        return "no"
    finally:
        s.close()


def socket_peer_pid(path: str | os.PathLike[str], timeout: float = 1.0) -> int | None:
    """The pid of the process that listens on the unix socket at ``path`` (``SO_PEERCRED``:
    the listener's credentials from when it called listen(), so containerd's own pid for
    its socket), None when nothing answers or the listener is outside this process's pid
    namespace (the kernel says 0)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return pid if pid > 0 else None
    except OSError:
        return None
    finally:
        s.close()
