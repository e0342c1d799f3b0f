"""Process identity and liveness: the one answer to "is the process that made this alive?".

Shared by the store (ingest files in ``tmp/``), the realiser (run work directories) and the
containerd adapter (owner labels on containers, snapshots, leases, netns records, FIFO
directories, the embedded daemon), so it imports nothing of ``kata`` or ``store``.

An *owner* is ``"<pid>.<start ticks>@<boot id>"``: the pid, the process's start time in
clock ticks since boot (``/proc/<pid>/stat`` field 22) and the kernel's boot id
(``/proc/sys/kernel/random/boot_id``, a random UUID per boot and host). A pid is reused,
the triple never is, so a new process that got a dead owner's pid is not taken for it.

- ``pid_alive(pid)``: a process with this pid exists and is not a zombie.
- ``owner_alive(owner)``: the owner runs on this boot of this host. Resources that only
  exist on this host (containers, mounts, netns) are released when it is False.
- ``pid_tag()`` / ``pid_tag_alive(tag)``: ``"<pid>.<start ticks>"``, the short owner for
  names of host-local directories (a run's workspaces, a worker's leases), where ``-`` and
  ``@`` would not parse; a bare ``"<pid>"`` (names made before it) is asked about by pid.
- ``owner_dead(owner)``: the owner provably ended — it is of this boot and not alive. For
  what may be shared between hosts (a store on NFS): another host's owner is not dead,
  only unknown, and is left to a grace period.
"""

from __future__ import annotations

import errno
import os

__all__ = ["BOOT_ID", "owner_alive", "owner_dead", "owner_id", "parse_owner", "pid_alive",
           "pid_tag", "pid_tag_alive", "start_ticks"]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the parenthesised command name), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rpartition(b")")[2].decode("ascii", "replace").split()


def start_ticks(pid: int) -> str | None:
    """The process's start time after boot in clock ticks (``/proc/<pid>/stat`` field 22),
    as text; None when there is no such process."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie (exited, not yet reaped).

    ``kill(pid, 0)``: ESRCH is gone; EPERM is alive (another user's process); a zombie
    counts as gone. ``pid <= 0`` is never alive (it would name a process group).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno != errno.ESRCH
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # field 3: state


def owner_id(pid: int | None = None) -> str:
    """The owner label of ``pid`` (default: this process): ``"<pid>.<ticks>@<boot id>"``."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{start_ticks(pid)}@{BOOT_ID}"


def pid_tag(pid: int | None = None) -> str:
    """``"<pid>.<start ticks>"`` of ``pid`` (default: this process): an owner without the
    boot id, for names of host-local directories (mounts do not outlive a boot)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{start_ticks(pid)}"


def pid_tag_alive(tag: str) -> bool | None:
    """Whether the process of a ``pid_tag`` still runs: its pid alive with the same start
    time (a reused pid is not it). A bare pid (an older name): whether the pid is alive.
    None when ``tag`` is neither."""
    pid_s, dot, start = tag.partition(".")
    if not pid_s.isascii() or not pid_s.isdigit() or (dot and not start.isdigit()):
        return None
    pid = int(pid_s)
    if not dot:
        return pid_alive(pid)
    return pid_alive(pid) and start_ticks(pid) == start


def parse_owner(owner: str) -> tuple[int, str, str] | None:
    """``(pid, start ticks, boot id)`` of an owner label, None when it is not one."""
    head, sep, boot = owner.partition("@")
    pid_s, dot, start = head.partition(".")
    if not (sep and dot and boot and start) or not pid_s.isascii() or not pid_s.isdigit():
        return None
    return int(pid_s), start, boot


def owner_alive(owner: str) -> bool:
    """Whether the owner still runs: this boot, its pid alive with the same start time.
    Not an owner label, another boot, another host: False."""
    parsed = parse_owner(owner)
    if parsed is None or parsed[2] != BOOT_ID:
        return False
    pid, start, _ = parsed
    return pid_alive(pid) and start_ticks(pid) == start


def owner_dead(owner: str) -> bool:
    """Whether the owner provably ended: of this boot and no longer alive. Another boot
    or host, or not an owner label: False (unknown, not dead)."""
    parsed = parse_owner(owner)
    return parsed is not None and parsed[2] == BOOT_ID and not owner_alive(owner)
