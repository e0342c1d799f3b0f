"""Kata's own embedded containerd: start it detached, find it again, stop it.

OWNERSHIP (every file kata makes here, deliberately): the directories are root's, 0711
(traversable, not listable: any user's ``kata daemon status`` reads the pid file and
stats the socket by name), containerd's root 0700 (images, snapshots; containerd sets it
so itself); the gRPC socket is ``root:root 0660`` (set in containerd's
config, ``[grpc] uid/gid``): only root talks to containerd, group ``kata``'s members
reach it through kata's server (``kata.server``), never directly; the pid file and the
config are 0644 (no secret in either), the log 0600.

With no address configured and nothing answering at the system socket, kata
runs Debian's containerd with a config, root, state and socket of its own.
The daemon outlives the kata process that started it (new session, log to a
file) and later kata processes reuse it: a pid file plus a socket probe say it
is there, an flock keeps two kata processes from starting it at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kata.errors import KataError
from kata.sockets import socket_access, socket_peer_pid
from procs import pid_alive

from .spec import lift_open_files_limit

SYSTEM_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_ROOT_DIR = "/var/lib/kata/containerd"
DEFAULT_RUN_DIR = "/run/kata/containerd"
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonPaths:
    """Where one embedded containerd keeps everything."""

    root: Path  # containerd's persistent root (content, snapshots, metadata)
    state: Path  # containerd's volatile state
    config: Path
    log: Path
    socket: Path
    pidfile: Path
    lockfile: Path

    @property
    def address(self) -> str:
        return str(self.socket)


def daemon_paths(state_dir: str | os.PathLike[str] | None = None) -> DaemonPaths:
    """The default layout for root, or everything under an explicit state_dir."""
    if state_dir is None:
        base, run = Path(DEFAULT_ROOT_DIR), Path(DEFAULT_RUN_DIR)
    else:
        base = run = Path(state_dir).absolute()
    sock = run / "containerd.sock"
    if len(str(sock).encode()) > _SUN_PATH_MAX:
        # a unix socket path is limited to 108 bytes: keep a short one, named after the dir
        tag = hashlib.sha256(str(base).encode()).hexdigest()[:16]
        sock = Path("/run/kata/sock") / f"{tag}.sock"
    return DaemonPaths(
        root=base / "root", state=run / "state", config=base / "config.toml",
        log=base / "containerd.log", socket=sock, pidfile=run / "containerd.pid",
        lockfile=run / "containerd.lock",
    )


def socket_answers(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when something accepts connections on the unix socket at ``path``."""
    return socket_access(path, timeout) == "yes"


def _check_host() -> str:
    if os.geteuid() != 0:
        raise KataError("runtime.not_root",
                        "kata's embedded containerd needs root: run kata as root, or point "
                        "--containerd / KATA_CONTAINERD_ADDRESS at a containerd you may use")
    binary = shutil.which("containerd")
    if binary is None:
        raise KataError("runtime.containerd_missing",
                        "containerd is not installed: apt install containerd runc")
    if shutil.which("runc") is None:
        raise KataError("runtime.runc_missing", "runc is not installed: apt install runc")
    return binary


def _config_text(paths: DaemonPaths) -> str:
    return f"""\
# written by kata: its own containerd, separate from the system one
version = 2
root = "{paths.root}"
state = "{paths.state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{paths.socket}"
  uid = 0
  gid = 0

[ttrpc]
  address = "{paths.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.root}/opt"
"""


def read_pid(paths: DaemonPaths) -> int | None:
    """The pid of the embedded containerd if its pid file (missing: its socket's
    listener) names a live containerd started with this daemon's config (``--config
    paths.config``): a dead one's pid taken by another containerd (one per CI job, per
    test session) is not this one."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 0 and _is_ours(paths, pid):
        return pid
    # no pid file, or one naming a daemon that is gone: the kata that started this one may
    # have been killed before it wrote the file (a restart after the old daemon was
    # killed), and the daemon lives on; the socket's listener then says who it is
    pid = socket_peer_pid(paths.socket, timeout=0.5) or 0
    return pid if pid > 0 and _is_ours(paths, pid) else None


def _is_ours(paths: DaemonPaths, pid: int) -> bool:
    """Whether ``pid`` is a containerd started with this daemon's config."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    config = os.fsencode(str(paths.config))
    return comm == "containerd" and any(a == b"--config" and b == config
                                        for a, b in zip(argv, argv[1:]))


def ensure_daemon(paths: DaemonPaths, *, timeout: float = 30.0) -> str:
    """Start the embedded containerd unless it is already answering; return its socket."""
    if socket_answers(paths.socket):
        return paths.address  # running (even if its pid file went missing)
    binary = _check_host()
    for d in (paths.root, paths.state, paths.pidfile.parent, paths.socket.parent,
              paths.config.parent, paths.log.parent):
        d.mkdir(parents=True, exist_ok=True, mode=0o711)
        if not os.stat(d).st_mode & 0o1000:  # never a shared sticky dir such as /tmp
            # OWNERSHIP: root's; containerd's root 0700 (as containerd itself sets it), the
            # rest traversable, not listable (any user's status reads the pid file)
            os.chmod(d, 0o700 if d == paths.root else 0o711)
    with open(paths.lockfile, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another kata may be starting it right now
        if socket_answers(paths.socket):
            return paths.address
        starting = read_pid(paths)
        if starting is not None:
            # one a kata started and was killed while waiting for (a worker killed while
            # it started its containerd again): never a second daemon on the same root
            # (it would wait on the first's metadata lock, and the first would be lost)
            deadline = time.monotonic() + timeout
            while pid_alive(starting) and time.monotonic() < deadline:
                if socket_answers(paths.socket, timeout=0.5):
                    paths.pidfile.write_text(f"{starting}\n")
                    return paths.address
                time.sleep(0.05)
            if pid_alive(starting):  # it never answered: replaced, not left beside
                os.kill(starting, signal.SIGKILL)
                _reap(starting)
        paths.config.write_text(_config_text(paths))
        os.chmod(paths.config, 0o644)  # no secret in it
        try:
            paths.socket.unlink()
        except FileNotFoundError:
            pass
        lift_open_files_limit()  # the shims and crun inherit containerd's rlimits
        with open(os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
                  "ab") as log:
            proc = subprocess.Popen(
                [binary, "--config", str(paths.config), "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, close_fds=True,
            )
        paths.pidfile.write_text(f"{proc.pid}\n")
        os.chmod(paths.pidfile, 0o644)  # any user's `kata daemon status` reads it
        deadline = time.monotonic() + timeout
        while not socket_answers(paths.socket, timeout=0.5):
            if proc.poll() is not None:
                raise KataError("runtime.daemon_failed",
                                f"kata's containerd exited with status {proc.returncode} "
                                f"while starting; its log: {paths.log}\n{_tail(paths.log)}",
                                exit_code=1)
            if time.monotonic() > deadline:
                proc.kill()
                raise KataError("runtime.daemon_failed",
                                f"kata's containerd did not answer within {timeout:.0f} s; "
                                f"its log: {paths.log}\n{_tail(paths.log)}", exit_code=1)
            time.sleep(0.02)
        # the child is ours only until it is reaped; it lives on detached from us
    return paths.address


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def daemon_status(paths: DaemonPaths) -> dict[str, object]:
    """What `kata daemon status` shows, true for any user: ``running`` when the pid file
    names a live containerd whose socket is there (answering, or refusing this user:
    a non-root user may not connect to root's socket, which does not make it stopped),
    ``usable`` when this process may connect."""
    pid = read_pid(paths)
    access = socket_access(paths.socket) if pid is not None else "no"
    return {
        "running": pid is not None and access != "no",
        "usable": access == "yes",
        "pid": pid,
        "socket": str(paths.socket),
        "root": str(paths.root),
        "state": str(paths.state),
        "config": str(paths.config),
        "log": str(paths.log),
    }


def stop_daemon(paths: DaemonPaths, *, timeout: float = 15.0) -> bool:
    """Stop the embedded containerd (SIGTERM, then SIGKILL). False if it was not running."""
    pid = read_pid(paths)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in (paths.pidfile, paths.socket):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the daemon is our child (it was started by this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
