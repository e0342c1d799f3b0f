"""Resource limits of a container: memory, CPUs, processes (`resources:` in the config).

    resources: {memory: "2GiB", cpus: 1.5, pids: 1024}

may stand on ``settings`` (the pipeline's default), on a step and on a service; a field
left out comes from the level above (service or step → settings → the host default).
``Resources`` is a frozen value parsed once where the YAML is read; ``None`` in a field
means "not said here". The runtime fills what is still ``None`` from ``host_defaults()``
and writes the result into the OCI spec (``linux.resources``: memory.limit, cpu
quota/period, pids.limit; OCI runtime-spec config-linux.md).

Declared limits are part of the derivation hash (``kata.derivation.limits``): a pass
under 4 GiB is no pass under 64 MiB, and what a step computes can follow the limits it
sees (a JVM sizes its heap from the cgroup's memory, Go and Java their parallelism from
its CPU quota). Host defaults are not hashed: a config means the same on every host,
and a step that declares no limit keeps one key everywhere.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from fractions import Fraction

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MIN_MEMORY = 6 * MIB  # runc/Docker refuse less: the container's init alone needs about that
MIN_CPUS = 0.01  # one CFS quota tick of 1 ms per 100 ms period
MAX_CPUS = 1024
MAX_PIDS = 4_194_304  # the kernel's PID_MAX_LIMIT on 64-bit
MAX_SIZE = 1 << 62  # 4 EiB: past any machine, and every int64 field (cgroups, msgpack) holds it
CPU_PERIOD = 100_000  # µs, CFS period (Docker's and containerd's default)

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from ``"2GiB"``, ``"512MiB"``, ``"1.5G"``, ``"500MB"``, ``"1024"`` or an int.

    The one size grammar of kata (config ``resources.memory``, ``kata store gc
    --max-size``): a number, then optionally K, M, G, T or P, ``i`` for binary (powers of
    1024) and ``B``; without ``i`` the unit is decimal (powers of 1000). Case does not
    matter. Exact (no float); at most MAX_SIZE (4 EiB). Raises ValueError naming the
    text and what is expected.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"bad size {text!r}: expected e.g. 500MB or 2GiB")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"bad size {text!r}: a size cannot be negative")
        size = text
    else:
        m = _SIZE.fullmatch(text)
        if m is None:
            raise ValueError(f"bad size {text!r}: expected e.g. 500MB or 2GiB")
        number, unit, binary = m.groups()
        power = "KMGTP".find(unit.upper()) + 1 if unit else 0
        if len(number) > 40:  # no machine's size; and Fraction of it costs nothing
            raise ValueError(f"bad size {text!r}: larger than {format_size(MAX_SIZE)}")
        # exact (a float of 400 digits is infinity)
        size = int(Fraction(number) * (1024 if binary else 1000) ** power)
    if size > MAX_SIZE:
        raise ValueError(f"bad size {text!r}: larger than {format_size(MAX_SIZE)}")
    return size


def parse_memory(text: str | int) -> int:
    """A memory limit: ``parse_size`` and at least ``MIN_MEMORY``; ValueError otherwise."""
    size = parse_size(text)
    if size < MIN_MEMORY:
        raise ValueError(f"size {text!r} is below the minimum of {format_size(MIN_MEMORY)}")
    return size


def format_size(size: int) -> str:
    """``67108864`` → ``"64 MiB"``; the largest IEC unit that keeps at most 2 decimals."""
    for unit, factor in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", GIB),
                         ("MiB", MIB), ("KiB", KIB)):
        if size >= factor:
            value = size / factor
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{size} B"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Limits of one container; a ``None`` field is filled from the level above.

    memory: bytes (hard limit; swap is not allowed beyond it); cpus: CPUs as a fraction
    (1.5 = 150 ms of CPU time per 100 ms period); pids: processes and threads at once.
    """

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise ValueError(f"memory {self.memory} is below {format_size(MIN_MEMORY)}")
        if self.cpus is not None and not MIN_CPUS <= self.cpus <= MAX_CPUS:
            raise ValueError(f"cpus must be between {MIN_CPUS} and {MAX_CPUS}, "
                             f"got {self.cpus:g}")
        if self.pids is not None and not 1 <= self.pids <= MAX_PIDS:
            raise ValueError(f"pids must be between 1 and {MAX_PIDS}, got {self.pids}")

    def over(self, base: Resources) -> Resources:
        """These limits, with every field not said here taken from ``base``."""
        return Resources(memory=self.memory if self.memory is not None else base.memory,
                         cpus=self.cpus if self.cpus is not None else base.cpus,
                         pids=self.pids if self.pids is not None else base.pids)

    @property
    def complete(self) -> bool:
        return None not in (self.memory, self.cpus, self.pids)

    def __str__(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"memory {format_size(self.memory)}")
        if self.cpus is not None:
            parts.append(f"cpus {self.cpus:g}")
        if self.pids is not None:
            parts.append(f"pids {self.pids}")
        return ", ".join(parts) or "host defaults"


DEFAULT_PIDS = 4096  # threads count too: a parallel build with JVMs stays well under it


def host_defaults(meminfo: str = "/proc/meminfo") -> Resources:
    """The limits a container gets when neither it nor ``settings`` says otherwise.

    memory: half the host's RAM (MemTotal), so one runaway step cannot take the host's
    memory; cpus: every CPU of the host (a quota that only stops a step from claiming
    more than the machine; the kernel's fair scheduler keeps the host responsive);
    pids: 4096. Read from /proc/meminfo and the CPUs this process may run on.
    """
    total = 0
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * KIB
                    break
    except OSError:
        total = 0
    memory = max(total // 2, 256 * MIB) if total else 2 * GIB
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    return Resources(memory=memory, cpus=cpus, pids=DEFAULT_PIDS)


@functools.cache
def _host() -> Resources:
    return host_defaults()


def effective(resources: Resources | None) -> Resources:
    """``resources`` with every field still ``None`` taken from ``host_defaults()`` (read
    once per process)."""
    return (resources or Resources()).over(_host())
