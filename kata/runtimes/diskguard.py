"""The disk reserve: a step is killed before it fills the filesystem it writes to.

A step writes to the host's disk through its writable layers: its workspace's overlay
upper directory, its root filesystem's (a direct step's ``<steps root>/<owner>/<id>/upper``,
a task's containerd snapshot) and its services' root filesystems. No quota bounds an
overlay upper directory on ext4 or xfs without project quotas, so without this a step (a
pushed branch on a hook server) could fill the filesystem kata's state and store live on
and break every other run.

One :class:`DiskGuard` per runtime watches the filesystems that hold the writable layers
of the steps running now (``statvfs``: free bytes and free inodes as an unprivileged user
sees them), at an interval that shrinks as free space nears the reserve: a second while
there is room, down to 20 ms when a write of ``RATE`` bytes a second could reach it
before the next look. When a filesystem falls below its reserve, the guard measures each
running step's layers on it (a walk, done only then) and *trips* the step holding the
most, if it holds at least a quarter of the reserve (a step of a few files is never
blamed for what something else filled): the runtime kills it at once (SIGKILL, no grace)
and the step fails with ``step.disk_reserve`` and the guard's message. One trip at a
time: the next only once the tripped step is released and ``COOLDOWN`` seconds passed
(its layers are removed after it ends); when nobody was to blame, the next measuring
(and warning) waits as long. Modelled on the kubelet's hard eviction
(``nodefs.available<10%``, ``nodefs.inodesFree<5%``, evicting the pod that uses most).

Host config ``containerd.disk_reserve`` (``kata.runtimes.containerd.config``): a
percentage of each filesystem (``5%``, the default; for bytes and inodes alike) or a size
(``2GiB``; inodes keep 5%), ``0`` to turn the guard off. SECURITY.md, "Resource limits".
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kata.runtime")

DEFAULT_FRACTION = 0.05
RATE = 1 << 30  # bytes a second a step is assumed able to write (a fast local disk)
INODE_RATE = 200_000  # files a second
MIN_INTERVAL = 0.02
MAX_INTERVAL = 1.0
COOLDOWN = 5.0  # seconds after a tripped step is released before the next trip
LINGER = 2.0  # seconds the thread waits for the next step before it ends


@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve:
    """What must stay free on each filesystem a step writes to: ``size`` bytes when set,
    else ``fraction`` of its size; inodes: ``fraction`` of them (``DEFAULT_FRACTION`` when
    a size is given). ``fraction == 0`` and ``size == 0``: no reserve (the guard is off)."""

    fraction: float = DEFAULT_FRACTION
    size: int = 0

    @property
    def off(self) -> bool:
        return self.fraction == 0 and self.size == 0

    def of(self, st: os.statvfs_result) -> tuple[int, int]:
        """(bytes, inodes) to keep free on a filesystem of ``statvfs`` ``st``."""
        fraction = self.fraction if not self.size else DEFAULT_FRACTION
        total = st.f_blocks * st.f_frsize
        return (self.size or int(total * self.fraction), int(st.f_files * fraction))

    def __str__(self) -> str:
        from kata.resources import format_size

        return format_size(self.size) if self.size else f"{self.fraction * 100:g}%"


def parse_reserve(value: object) -> Reserve:
    """``containerd.disk_reserve``: ``"5%"`` (0 < p < 100), a size (``2GiB``, bytes as an
    integer) or ``0``/``"0"`` (off). ValueError naming what is accepted."""
    from kata.resources import parse_size

    if value in (0, "0", "0%"):
        return Reserve(fraction=0.0, size=0)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            pct = -1.0
        if not 0 < pct < 100:
            raise ValueError(f"a percentage between 0 and 100 (5%), got {value!r}")
        return Reserve(fraction=pct / 100)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"a percentage (5%) or a size (2GiB), got {value!r}")
    try:
        return Reserve(fraction=0.0, size=parse_size(value))
    except ValueError:
        raise ValueError(f"a percentage (5%) or a size (2GiB), got {value!r}") from None


class Ticket:
    """One step's claim on the guard: its writable directories (each an overlay mount
    point, whose upper directory is what is measured, or a plain directory) and, once
    tripped, the guard's message (``tripped``)."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.tripped: str | None = None
        # bytes the step holds beside its directories, on their filesystem: the log its
        # output is spooled to (the sink's ``logged``)
        self.extra: Callable[[], int] | None = None

    def add(self, path: str) -> None:
        self.dirs.append(path)


def _upper_dirs() -> dict[str, str]:
    """Mount point -> upper directory of every overlay mount of this mount namespace."""
    found = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                fields, rest = head.split(), tail.split()
                if len(rest) < 3 or rest[0] != "overlay":
                    continue
                for opt in rest[2].split(","):
                    if opt.startswith("upperdir="):
                        found[_unescape(fields[4])] = _unescape(opt[len("upperdir="):])
    except OSError:
        pass
    return found


def _unescape(text: str) -> str:
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def usage(path: str) -> tuple[int, int]:
    """(bytes allocated, entries) below ``path``, links never followed, a file with several
    links counted once. Iterative (a step nests directories as deep as it likes); what
    vanishes meanwhile is skipped."""
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    todo = [path]
    while todo:
        top = todo.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries += 1
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    todo.append(e.path)
    return total, entries


class DiskGuard:
    """Kills the step that fills a filesystem below its reserve (module docstring).
    Thread-safe; one thread, started with the first ticket and ended ``LINGER`` seconds
    after the last is released."""

    def __init__(self, reserve: Reserve, *,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 watch: bool = True) -> None:
        """``watch``: look in a thread of its own (False: only when ``check`` is called,
        for a test that must know every look: the thread's first look, at once, could see
        a ticket before all its directories were added and blame nobody for COOLDOWN)."""
        self.reserve = reserve
        self._statvfs = statvfs
        self._watch = watch
        self._lock = threading.Condition(threading.Lock())
        self._tickets: list[Ticket] = []
        self._thread: threading.Thread | None = None
        self._tripped: Ticket | None = None
        self._released_at = 0.0  # when the last tripped ticket was released
        self._blamed_none_at = -COOLDOWN  # when a low disk last had nobody to blame

    def ticket(self) -> Ticket:
        """A registered ticket for a step about to run; ``release`` it when it ended. No
        look is made for it: the thread looks at its own pace, so a step costs a lock
        and a list entry (a look per step, with its ``/proc/self/mountinfo`` read, cost
        trivial steps 10% more CPU: bench/disk_guard_bench.py)."""
        ticket = Ticket()
        with self._lock:
            self._tickets.append(ticket)
            if self._thread is None and self._watch:
                self._thread = threading.Thread(target=self._run, name="kata-disk-guard",
                                                daemon=True)
                self._thread.start()
        return ticket

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            try:
                self._tickets.remove(ticket)
            except ValueError:
                return
            if ticket is self._tripped:
                self._tripped = None
                self._released_at = time.monotonic()

    def _run(self) -> None:
        wait = 0.0  # a first look at once: the disk may be low already
        idle_since: float | None = None
        while True:
            with self._lock:
                self._lock.wait(wait)  # nobody notifies: a timed wait
                tickets = list(self._tickets)
                if not tickets:
                    now = time.monotonic()
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since >= LINGER:
                        self._thread = None
                        return
                    wait = MAX_INTERVAL
                    continue
            idle_since = None
            try:
                wait = self.check(tickets)
            except Exception:  # noqa: BLE001 - the guard must outlive a fault of its own
                log.warning("disk guard check failed", exc_info=True)
                wait = MAX_INTERVAL

    def check(self, tickets: list[Ticket]) -> float:
        """One look at the filesystems of ``tickets``' directories (a ``statvfs`` each; an
        overlay mount point reports its upper directory's filesystem); trips one if a
        filesystem is below its reserve. Seconds until the next look."""
        stats: dict[str, os.statvfs_result] = {}
        wait = MAX_INTERVAL
        low: list[tuple[str, os.statvfs_result, int, int]] = []
        for ticket in tickets:
            for d in list(ticket.dirs):
                if d in stats:
                    continue
                try:
                    st = stats[d] = self._statvfs(d)
                except OSError:
                    continue
                keep, keep_inodes = self.reserve.of(st)
                free = st.f_bavail * st.f_frsize
                headroom = min((free - keep) / RATE,
                               (st.f_favail - keep_inodes) / INODE_RATE if st.f_files else 1e9)
                wait = min(wait, max(MIN_INTERVAL, headroom))
                if free < keep or (st.f_files and st.f_favail < keep_inodes):
                    low.append((d, st, keep, keep_inodes))
        if low:
            self._trip(tickets, low)
        return wait

    def _trip(self, tickets: list[Ticket], low: list) -> None:
        now = time.monotonic()
        with self._lock:
            if self._tripped is not None or now - self._released_at < COOLDOWN \
                    or now - self._blamed_none_at < COOLDOWN:
                return  # a step is being killed, or none was to blame a moment ago
        mounts = _upper_dirs()  # only now: an overlay mount point is measured by its upper

        def device(path: str) -> int | None:
            try:
                return os.stat(path).st_dev
            except OSError:
                return None

        def measured(d: str) -> str:
            # mountinfo names a mount point by its resolved path: a directory given by a
            # path through a link (a store named by a symlink) is still its overlay, whose
            # upper directory is what the step wrote, not the merged view with its inputs
            return mounts.get(d) or mounts.get(os.path.realpath(d), d)

        low_devices = {device(measured(d)) for d, *_ in low} - {None}
        held: list[tuple[int, int, Ticket]] = []
        for ticket in tickets:
            if ticket.tripped is not None:
                continue
            size = count = 0
            on_low = False
            for upper in {measured(d) for d in list(ticket.dirs)}:
                if device(upper) in low_devices:
                    b, n = usage(upper)
                    size, count, on_low = size + b, count + n, True
            if on_low and ticket.extra is not None:
                size += ticket.extra()
            held.append((size, count, ticket))
        if not held:
            return
        d, st, keep, keep_inodes = low[0]
        inodes = bool(st.f_files) and st.f_favail < keep_inodes \
            and st.f_bavail * st.f_frsize >= keep
        size, count, ticket = max(held, key=lambda h: h[1] if inodes else h[0])
        if (count if inodes else size) < (keep_inodes if inodes else keep) // 4:
            self._blamed_none_at = now  # no walk every look while the disk stays low
            log.warning("the filesystem of %s is below its reserve (%s), and no step of this "
                        "kata holds a quarter of it", d, self.reserve)
            return
        from kata.resources import format_size

        if inodes:
            what = (f"its filesystem has {st.f_favail:,} free inodes, below the reserve of "
                    f"{keep_inodes:,} (host config containerd.disk_reserve: {self.reserve}), "
                    f"and the step made {count:,} files and directories in its writable "
                    "layers, the most of the steps running")
        else:
            free = st.f_bavail * st.f_frsize
            total = st.f_blocks * st.f_frsize
            what = (f"its filesystem has {format_size(free)} free of {format_size(total)}, "
                    f"below the reserve of {format_size(keep)} (host config "
                    f"containerd.disk_reserve: {self.reserve}), and the step wrote "
                    f"{format_size(size)} to its writable layers and log, the most of the "
                    "steps running")
        with self._lock:
            if ticket in self._tickets:
                ticket.tripped = f"killed to keep the disk's reserve: {what}"
                self._tripped = ticket
