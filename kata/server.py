"""Kata's server: root runs kata for the members of group ``kata`` (the docker group's model).

Kata needs root on the host (overlay mounts for workspaces, network namespaces, its own
containerd). ``kata daemon serve``, run by root (a systemd unit), listens on a unix socket
``root:kata 0660`` (``SERVER_SOCKET``, or ``KATA_SERVER_SOCKET``); a non-root ``kata`` finds
it there and hands it the whole command (``kata.cli.forward``). So a member of group
``kata`` can do what root can do with kata: run any pipeline, as root, in any directory
it can name, read and write the store. **That group is root-equivalent**, exactly as the
docker group is; SECURITY.md says so.

One connection is one command. The client sends, in one ``sendmsg``, a 4-byte length and
its stdin, stdout and stderr as file descriptors (``SCM_RIGHTS``), then that many bytes
of JSON: ``{"argv": [...], "cwd": "/abs", "env": {...}}``. The server checks the peer
(``SO_PEERCRED``: root, or a member of the group now), then runs ``python -m kata ARGV``
as root in ``cwd`` with the client's descriptors as its stdio (a terminal stays a
terminal: the live view works) and the client's environment (secrets come from it, as in
a local run) except what chooses the code root runs (``PATH``, ``PYTHON*``, ``LD_*``:
the server's own; ``KATA_OUT_OWNER`` is set to the requester, so the files ``--out``
writes are theirs). While it runs, a line ``INT`` or ``TERM`` from the
client is sent to it as that signal, and the client hanging up is an ``INT``. At the end
the server writes ``exit N`` (a death by signal S: ``128+S``) and closes.

git refuses, as root, a repository another user owns ("dubious ownership"); the server
declares the repository of ``cwd`` safe (``safe.directory``, through a private global
git config) only when it belongs to the requesting user or to root, so a third user's
repository config never runs anything as root.

Files it creates: the socket (``root:kata 0660``; bound under umask 0177 so it is never
wider, then given to the group), its directory (``root:root 0755``) and a pid file beside
the socket (``0644``, what ``kata daemon status`` reads as any user).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from kata.errors import KataError
from kata.sockets import socket_access

SERVER_SOCKET = "/run/kata/kata.sock"
GROUP = "kata"
MAX_REQUEST = 8 << 20  # argv, cwd and environment: bounded before it is read
_LEN = struct.Struct(">I")
_ENV_DROPPED = ("PYTHON", "LD_")


#: set by the server for the kata it runs: who asked (``uid:gid``), so ``--out`` gives
#: them the files it writes (``out_owner``)
OUT_OWNER = "KATA_OUT_OWNER"


def out_owner() -> tuple[int, int] | None:
    """(uid, gid) ``--out`` files go to: the server's requester, when this kata is root
    and was started by the server; else None (files stay this process's)."""
    text = os.environ.get(OUT_OWNER, "")
    uid, _, gid = text.partition(":")
    if os.geteuid() != 0 or not (uid.isdigit() and gid.isdigit()):
        return None
    return int(uid), int(gid)


def socket_path() -> Path:
    """Where the server listens: ``$KATA_SERVER_SOCKET``, else ``SERVER_SOCKET``."""
    return Path(os.environ.get("KATA_SERVER_SOCKET") or SERVER_SOCKET)


def pid_path(sock: Path) -> Path:
    """The server's pid file, beside its socket (``kata.sock`` -> ``kata.pid``)."""
    return sock.with_suffix(".pid")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a connection (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, conn: socket.socket) -> "Peer":
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return cls(*struct.unpack("3i", creds))


def group_id(name: str = GROUP) -> int:
    """The gid of group ``name``; KataError daemon.no_group (exit 2) with the fix."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise KataError("daemon.no_group", f"there is no group {name!r}: create it "
                        f"(groupadd --system {name}; .ci/install-kata does) and add the "
                        f"users who may run kata (usermod -aG {name} USER)") from None


def allowed(peer: Peer, gid: int) -> bool:
    """Root, or a user whose groups (as the group database says now) include ``gid``."""
    if peer.uid == 0 or peer.gid == gid:
        return True
    try:
        user = pwd.getpwuid(peer.uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def serve(sock: Path | None = None, *, group: str = GROUP,
          ready: "threading.Event | None" = None) -> None:
    """Listen on ``sock`` (default ``socket_path()``) until SIGTERM/SIGINT; root only.

    KataError daemon.not_root, daemon.no_group, daemon.running (another server answers)."""
    if os.geteuid() != 0:
        raise KataError("daemon.not_root", "kata daemon serve runs kata for group "
                        f"{group!r}, as root: start it as root (a systemd unit)")
    sock = sock or socket_path()
    gid = group_id(group)
    if not sock.parent.exists():  # a directory it makes is root:root 0755, deliberately
        sock.parent.mkdir(parents=True, mode=0o755)
        os.chmod(sock.parent, 0o755)
    if socket_access(sock) == "yes":
        raise KataError("daemon.running", f"a kata server already answers at {sock}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # a stale socket of a server that died
        umask = os.umask(0o177)
        try:
            listener.bind(str(sock))
        finally:
            os.umask(umask)
        os.chown(sock, 0, gid)
        os.chmod(sock, 0o660)
        listener.listen(64)
        pidfile = pid_path(sock)
        pidfile.write_text(f"{os.getpid()}\n")
        os.chmod(pidfile, 0o644)
        stop = threading.Event()

        def on_signal(_signo: int, _frame: object) -> None:
            stop.set()
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    if stop.is_set():
                        break
                    raise
                threading.Thread(target=_handle, args=(conn, gid), name="kata-server-conn",
                                 daemon=True).start()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for p in (sock, pidfile):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
    finally:
        listener.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        data = conn.recv(min(left, 1 << 16))
        if not data:
            raise ConnectionError("the client hung up mid-request")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _say(conn: socket.socket, text: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(text.encode() + b"\n")


def _handle(conn: socket.socket, gid: int) -> None:
    fds: list[int] = []
    try:
        peer = Peer.of(conn)
        head, fds, _flags, _addr = socket.recv_fds(conn, _LEN.size, 3)
        if len(head) != _LEN.size or len(fds) != 3:
            return
        if not allowed(peer, gid):  # the socket's mode says so already; this says why
            os.write(fds[2], f"error: uid {peer.uid} is not in group {GROUP!r}: kata's "
                     "server runs kata only for its members\n".encode())
            _say(conn, "exit 2")
            return
        (size,) = _LEN.unpack(head)
        if size > MAX_REQUEST:
            _say(conn, "exit 2")
            return
        request = json.loads(_recv_exact(conn, size))
        _run(conn, peer, request, fds)
    except (OSError, ValueError, ConnectionError):
        pass  # the client went away or spoke nonsense: nothing to answer
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            # wakes the signal relay's recv (a plain close would not: the client would
            # never see the end) and tells the client the answer is complete
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The client's environment for the root kata, less what chooses the code root runs:
    ``PATH``, ``PYTHON*`` and ``LD_*`` are the server's own (root's ``PATH`` has the
    ``sbin`` tools kata runs: iptables, the CNI plugins' helpers)."""
    out = {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)
           and not k.startswith(_ENV_DROPPED)
           and k not in ("PATH", "KATA_SERVER_SOCKET", OUT_OWNER)}
    out.update((k, v) for k, v in os.environ.items() if k == "PATH" or k.startswith(_ENV_DROPPED))
    return out


def _repository_of(cwd: str) -> Path | None:
    """The work tree containing ``cwd`` (the nearest directory with a ``.git``), or None."""
    for d in (Path(cwd), *Path(cwd).parents):
        if os.path.lexists(d / ".git"):
            return d
    return None


def _safe_directory(cwd: str, uid: int, env: dict[str, str], scratch: Path) -> None:
    """Declare the repository of ``cwd`` safe for root's git, when it is ``uid``'s or root's
    (git's own ownership test: the owner of the work tree and of its ``.git``)."""
    top = _repository_of(cwd)
    if top is None:
        return
    try:
        owners = {os.lstat(top).st_uid, os.lstat(top / ".git").st_uid}
    except OSError:
        return
    if not owners <= {uid, 0}:
        return  # someone else's: git refuses it, and kata says so (git.unsafe_repository)
    cfg = scratch / "gitconfig"
    lines = ["[safe]", f"\tdirectory = {top}"]
    base = env.get("GIT_CONFIG_GLOBAL") or os.path.join(env.get("HOME", "/nonexistent"),
                                                        ".gitconfig")
    if os.path.isfile(base):
        lines = ["[include]", f"\tpath = {base}", *lines]
    cfg.write_text("\n".join(lines) + "\n")
    env["GIT_CONFIG_GLOBAL"] = str(cfg)


def _run(conn: socket.socket, peer: Peer, request: dict, fds: list[int]) -> None:
    argv, cwd = request.get("argv"), request.get("cwd")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
            and isinstance(cwd, str) and os.path.isabs(cwd)):
        _say(conn, "exit 2")
        return
    env = child_env(request.get("env") or {})
    env[OUT_OWNER] = f"{peer.uid}:{peer.gid}"  # --out files are the requester's
    with tempfile.TemporaryDirectory(prefix="kata-server-") as scratch:
        _safe_directory(cwd, peer.uid, env, Path(scratch))
        try:
            child = subprocess.Popen([sys.executable, "-m", "kata", *argv], cwd=cwd, env=env,
                                     stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                     start_new_session=True, close_fds=True)
        except OSError as err:
            os.write(fds[2], f"error: kata's server cannot run in {cwd}: "
                     f"{err.strerror}\n".encode())
            _say(conn, "exit 2")
            return
        for fd in fds:
            os.close(fd)
        fds.clear()  # the child holds them now
        threading.Thread(target=_relay_signals, args=(conn, child), name="kata-server-sig",
                         daemon=True).start()
        code = child.wait()
    _say(conn, f"exit {128 - code if code < 0 else code}")


def _relay_signals(conn: socket.socket, child: subprocess.Popen) -> None:
    """``INT``/``TERM`` lines from the client become signals to the child; the client
    hanging up is an ``INT`` (kata then stops its steps and cleans up, as on Ctrl-C)."""
    buf = b""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGINT)
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            signo = {b"INT": signal.SIGINT, b"TERM": signal.SIGTERM}.get(line.strip())
            if signo is not None and child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signo)


def server_status(sock: Path, *, group: str = GROUP) -> dict[str, str]:
    """What ``kata daemon status`` says of the server, true for any user: ``state``
    ("running (pid N)", "not running", "not running (stale socket)"), ``socket``,
    ``owner`` ("root:kata 0660" as the socket's stat shows it, "" without one) and
    ``access`` (whether this user may use it, and if not, why and what to do)."""
    import stat as stat_mod

    out = {"socket": str(sock), "owner": "", "state": "not running", "access": ""}
    try:
        st = os.stat(sock)
    except OSError:
        out["access"] = ("root: kata runs here itself" if os.geteuid() == 0 else
                         "no server here: kata runs as you, and steps need root")
        return out
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        gname = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        gname = str(st.st_gid)
    out["owner"] = f"{owner}:{gname} {stat_mod.S_IMODE(st.st_mode):04o}"
    pid = _read_pid(pid_path(sock))
    access = socket_access(sock)
    reachable, denied = access == "yes", access == "denied"
    if reachable or (denied and pid is not None):
        out["state"] = f"running (pid {pid})" if pid is not None else "running"
    elif pid is None:
        out["state"] = "not running (stale socket)"
    if os.geteuid() == 0:
        out["access"] = "root: may use it" if reachable else "root"
    elif reachable:
        out["access"] = f"may use it (group {gname}): kata commands run there, as root"
    elif denied:
        member = False
        try:
            user = pwd.getpwuid(os.getuid())
            member = st.st_gid in os.getgrouplist(user.pw_name, user.pw_gid)
        except KeyError:
            pass
        out["access"] = (f"may not use it yet: you joined group {gname} after logging in "
                         "(log in again)" if member else
                         f"may not use it: not in group {gname} (an administrator: usermod "
                         f"-aG {gname} $USER; that group is root-equivalent)")
    else:
        out["access"] = "cannot reach it: start it as root (kata daemon serve)"
    return out


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None
