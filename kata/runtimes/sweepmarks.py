"""Owner markers: which kata processes used which containerd, so that a run that never
connects (a fully cached one, a no-op replay) still clears what a killed kata left there.

A kata process that connects to containerd (``kata.cli.run_cmds.LazyRuntime``) writes
``<store state dir>/containerd-owners/<owner>`` (owner = ``procs.owner_id()``), two lines:
the containerd socket it reached and the address it was given (empty: the host config's
choice, resolved again by ``ContainerdRuntime.connect``). It removes the file once it has
released everything (``LazyRuntime.close`` without an error). A file whose owner is gone
(:func:`gone`: not alive, of this boot or an earlier one) therefore names a containerd
that may hold its leftovers (containers labelled ``kata.owner=<owner>``, their tasks,
snapshots, shims, mounts): :func:`sweep_dead` connects there, sweeps (``ContainerdRuntime.sweep``,
every dead owner's objects, not only this one's) and removes the file.

- Import-light (the replay calls it): ``os``, ``fcntl`` and ``procs``; a run with no
  marker pays one ``listdir`` of a missing or empty directory. The runtime is imported
  only when a dead owner's marker is there.
- Two runs racing: each marker is swept under ``flock(LOCK_EX | LOCK_NB)`` on its file;
  the loser skips it (the lock dies with its holder, so a sweeper killed halfway leaves
  the marker for the next run). A marker unlinked meanwhile (``st_nlink == 0``) is done.
- A containerd that does not answer (stopped, its socket gone): the marker stays (its
  objects come back when it starts; the next run that connects there sweeps them, or a
  later run finds the marker again); the check is a unix connect, no gRPC. Not forever:
  once the marker is older than ``MARKER_EXPIRY`` (7 days), a sweep that finds its
  containerd still silent removes it. That is safe: the marker only spares a run that
  never connects; any kata that connects to that containerd again sweeps every dead
  owner's objects by their labels (``ContainerdRuntime.connect``), marker or not.
- ``.<owner>.tmp``: a marker being written; its owner killed between the write and the
  rename leaves it. A sweep removes those of dead owners (nothing else writes them).
- ``kata doctor`` lists the markers of dead owners (:func:`markers`), with whether their
  containerd answers, as a warning naming what clears them.
- Per store, not per host: the store's host-local state directory is the user's (0700),
  exists for every run, and is what the tests isolate; a run on another store that
  connects to the same containerd sweeps those objects through the owner labels, and
  the marker left here then costs one more connect (that finds nothing) before it goes.
"""

from __future__ import annotations

import os
import time

DIR_NAME = "containerd-owners"
PROBE_SECONDS = 0.5  # how long a marker's socket may take to accept a connection
MARKER_EXPIRY = 7 * 86400.0  # seconds: a dead owner's marker whose containerd stays silent
TMP_SUFFIX = ".tmp"


def gone(owner: str) -> bool:
    """Whether a marker's owner no longer runs. Not ``procs.owner_dead``, which leaves
    another boot's owner to a grace period because it may be another host's: the state
    directory is host-local, so an earlier boot's owner is this host's and gone (its
    containers and snapshots outlive a reboot in containerd's root). A name that is not
    an owner label: False (not a marker)."""
    from procs import owner_alive, parse_owner

    return parse_owner(owner) is not None and not owner_alive(owner)


def marker_dir(state_dir: str) -> str:
    """``<state_dir>/containerd-owners``."""
    return os.path.join(state_dir, DIR_NAME)


def write_marker(state_dir: str, owner: str, socket: str, address: str | None) -> str:
    """Record that ``owner`` (this process) uses containerd at ``socket`` (a path),
    connected as ``address`` (None: the host config's default). Returns the file's path.
    OSError (a read-only store) is the caller's to ignore: the owner labels remain."""
    directory = marker_dir(state_dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, owner)
    tmp = os.path.join(directory, f".{owner}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{socket}\n{address or ''}\n")
    os.replace(tmp, path)  # whole or absent: a torn marker would name no socket
    return path


def remove_marker(path: str) -> None:
    """Remove a marker (missing: no error)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def dead_markers(state_dir: str) -> list[tuple[str, str, str | None]]:
    """``(owner, socket, address)`` of each marker whose owner is dead (for ``kata doctor``
    style listings, and :func:`sweep_dead`); unreadable markers are skipped."""
    directory = marker_dir(state_dir)
    try:
        names = os.listdir(directory)
    except OSError:  # none yet (the usual case), or not a directory
        return []
    found = []
    for name in names:
        if name.startswith(".") or not gone(name):
            continue
        read = _read(os.path.join(directory, name))
        if read is not None:
            found.append((name, *read))
    return found


def markers(state_dir: str) -> list[tuple[str, str, str | None, bool]]:
    """``(owner, socket, address, dead)`` of every readable marker, sorted by owner, plus
    ``(owner, "", None, True)`` for each dead owner's half-written ``.tmp`` marker (what
    ``kata doctor`` lists; a sweep removes the dead ones)."""
    directory = marker_dir(state_dir)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        owner = _tmp_owner(name)
        if owner is not None:
            if gone(owner):
                found.append((owner, "", None, True))
            continue
        if name.startswith("."):
            continue
        read = _read(os.path.join(directory, name))
        if read is not None:
            found.append((name, *read, gone(name)))
    return found


def _tmp_owner(name: str) -> str | None:
    """The owner of a half-written marker ``.<owner>.tmp`` (None: another name)."""
    if name.startswith(".") and name.endswith(TMP_SUFFIX) and len(name) > 1 + len(TMP_SUFFIX):
        return name[1:-len(TMP_SUFFIX)]
    return None


def _read(path: str) -> tuple[str, str | None] | None:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 2 or not lines[0]:
        return None
    return lines[0], lines[1] or None


def sweep_dead(state_dir: str, *, warn=None) -> int:  # noqa: ANN001 - warn(str)
    """Sweep the containerd of each dead owner's marker and remove the marker; the number
    swept. Never raises for a containerd that is gone or fails: ``warn(message)`` (if
    given) is told of a sweep that failed, and the marker stays for the next run."""
    directory = marker_dir(state_dir)
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    swept = 0
    for name in names:
        owner = _tmp_owner(name)
        if owner is not None:
            if gone(owner):  # killed between writing its marker and renaming it
                remove_marker(os.path.join(directory, name))
            continue
        if name.startswith(".") or not gone(name):
            continue
        try:
            if _sweep_one(os.path.join(directory, name), warn):
                swept += 1
        except OSError:
            continue
    return swept


def _sweep_one(path: str, warn) -> bool:  # noqa: ANN001
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:  # another run swept it
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run is sweeping it
            return False
        if os.fstat(fd).st_nlink == 0:  # swept and removed while we waited for the lock
            return False
        read = _read(path)
        if read is None:
            remove_marker(path)  # names no containerd: nothing to do with it
            return False
        socket, address = read
        from kata.errors import KataError
        from kata.runtimes.containerd.daemon import socket_answers

        if not socket_answers(socket, PROBE_SECONDS):
            # stopped or gone: kept for when it answers again, for a week (a connect
            # there sweeps by labels anyway); a marker from the future is not old
            if time.time() - os.fstat(fd).st_mtime > MARKER_EXPIRY:
                remove_marker(path)
            return False
        from kata.runtimes.containerd import ContainerdRuntime

        try:
            rt = ContainerdRuntime.connect(address=address, sweep=False)
            try:
                rt.sweep()
            finally:
                rt.close()
        except KataError as err:
            if warn is not None:
                warn(f"could not clear what an earlier kata left: {err.message}")
            return False
        remove_marker(path)
        return True
    finally:
        os.close(fd)
