"""A non-root ``kata`` hands its command to kata's server (``kata.server``), as the
docker CLI hands its commands to dockerd.

Standard library only (with ``kata.errors`` and ``kata.server``), and called before the
CLI is imported (``kata/__main__.py``, ``kata.cli.main``): handing a command over needs
none of kata's dependencies.

:func:`run_if_served` calls :func:`target` first: when this process is not root, the command is one the
server runs (anything but ``daemon``, ``doctor``, ``schema``, ``version`` and help, which
answer for the user as they are, and ``hooks``, which a git account runs through sudo) and a server socket exists, the command goes there with
this process's stdio, working directory and environment, and its exit status comes back.
Ctrl-C (SIGINT) and SIGTERM are passed on, so the run stops and cleans up as it would
locally. Without a socket nothing changes: kata runs here and says what needs root.

Errors (exit 2, a sentence with the fix): ``daemon.denied`` (the socket refuses this
user: not in group ``kata``), ``daemon.down`` (a socket file that nothing answers on).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

from kata.errors import KataError

#: commands that run as the user, never forwarded: they answer about this user and host;
#: and ``hooks``: a git account reaches root only through the narrow sudo rule SECURITY.md
#: gives, never through group kata (a push would otherwise hand root its environment)
LOCAL = frozenset({"daemon", "doctor", "schema", "version", "hooks"})
#: root options that take a value (``-f FILE``, ``--store DIR``, ``--containerd ADDR``)
_VALUED = frozenset({"-f", "--file", "--store", "--containerd"})


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (skipping root options and their values), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif arg.startswith("-"):
            if arg in ("-h", "--help", "--version"):
                return None
        else:
            return arg
    return None


def target(argv: Sequence[str]) -> Path | None:
    """The server socket to hand ``argv`` to, or None to run here."""
    if os.geteuid() == 0:
        return None
    command = command_of(argv)
    if command is None or command in LOCAL:
        return None
    from kata.server import socket_path

    sock = socket_path()
    return sock if os.path.lexists(sock) else None


def forward(sock: Path, argv: Sequence[str]) -> int:
    """Run ``argv`` through the server at ``sock``; its exit status."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            conn.connect(str(sock))
        except OSError as err:
            conn.close()
            raise _refused(sock, err) from None
        request = json.dumps({"argv": list(argv), "cwd": os.getcwd(),
                              "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [struct.pack(">I", len(request))],
                        [sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()])
        conn.sendall(request)

        def relay(signo: int, _frame: object) -> None:
            try:
                conn.sendall(b"INT\n" if signo == signal.SIGINT else b"TERM\n")
            except OSError:
                pass

        old = {s: signal.signal(s, relay) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            answer = b""
            while True:
                data = conn.recv(256)
                if not data:
                    break
                answer += data
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
    finally:
        conn.close()
    for line in answer.decode("ascii", "replace").splitlines():
        if line.startswith("exit "):
            return int(line.split()[1])
    raise KataError("daemon.lost", f"kata's server at {sock} ended the command without an "
                    "exit status (was it stopped?)", exit_code=1)


def _refused(sock: Path, err: OSError) -> KataError:
    if err.errno in (errno.EACCES, errno.EPERM):
        return KataError("daemon.denied", f"cannot use kata's server at {sock}: permission "
                         "denied. Kata runs as root; members of group 'kata' may use it "
                         "(ask an administrator: usermod -aG kata $USER, then log in again; "
                         "that group is root-equivalent), or run kata as root")
    return KataError("daemon.down", f"kata's server is not answering at {sock} "
                     f"({err.strerror}): start it as root (kata daemon serve, or its "
                     "systemd unit), or run kata as root")


def run_if_served(argv: Sequence[str]) -> None:
    """Exit with the server's status if ``argv`` goes to kata's server (else return).
    A refusal is printed as the CLI prints errors (``error: …``, its exit status)."""
    try:
        sock = target(argv)
        if sock is None:
            return
        code = forward(sock, argv)
    except KataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    sys.exit(code)
