"""Which OCI runtime binary runs kata's containers: crun or runc (a host property).

Host config ``containerd.oci_runtime`` (docs/config.md): ``auto`` (the default), ``crun``
or ``runc``. Both take the same OCI spec (spec.py) and enforce all of it: seccomp,
no-new-privileges, capabilities, masked and read-only paths, namespaces, cgroup limits
(SECURITY.md, "The sandbox"). The difference is cost: runc is a Go binary that the shim
runs three times per step (create, start, delete) and that re-executes itself as the
container's init; crun is C and measured here at about a third of runc's CPU per
container (bench/sandbox_bench.py prints both).

``auto`` picks crun when it is installed and can run on this host's cgroup layout, else
runc. crun refuses a *hybrid* layout (cgroup v1 controllers with a cgroup v2 hierarchy
at /sys/fs/cgroup/unified) in which the v2 hierarchy holds a controller (libcrun
``cgroup.c``: "cgroups in hybrid mode not supported, drop all controllers from
cgroupv2"); systemd's hybrid layout never does that, a VM whose init leaves ``hugetlb``
unmounted on v1 does (``.ci/install-kata`` mounts such controllers on v1).

The containerd adapter hands the choice to containerd's runc v2 shim as the container's
runtime options (``containerd.runc.v1.Options.binary_name``,
``runtime/v2/runc/options/oci.proto``; ``kata.runtimes.containerd.task``): no containerd
configuration is needed, so it works on the system containerd too. This module does no
I/O beyond PATH look-ups and reading the mounts and /sys; ``kata doctor`` uses it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kata.errors import KataError

CHOICES = ("auto", "crun", "runc")
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"  # where a hybrid layout mounts cgroup v2
CGROUP2 = "cgroup2"
# the cgroup v1 hierarchies a direct step gets (kata.runtimes.containerd.direct)
DIRECT_CONTROLLERS = ("memory", "pids", "cpu", "devices")


@dataclass(frozen=True, slots=True, kw_only=True)
class OciRuntime:
    """The chosen runtime: ``name`` (``crun``/``runc``), ``binary`` (an absolute path the
    shim executes) and ``why`` (how it was chosen, for ``kata doctor``)."""

    name: str
    binary: str
    why: str


def mount_types(mounts_file: str | os.PathLike[str] = "/proc/self/mounts") -> dict[str, str]:
    """Mount point -> filesystem type, from a mounts file (the last mount of a point wins)."""
    out: dict[str, str] = {}
    try:
        with open(mounts_file, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    out[parts[1]] = parts[2]
    except OSError:
        pass
    return out


def crun_blocker(mounts: Mapping[str, str] | None = None, sys_root: Path = Path("/sys")) -> str:
    """Why crun cannot create a container on this host's cgroups; "" when it can.

    ``mounts``: mount point -> filesystem type (default: this process's mounts);
    ``sys_root``: where /sys is (tests hand a directory). Unified (cgroup2 at
    /sys/fs/cgroup) and pure v1 layouts work; a hybrid one only while its v2 hierarchy
    holds no controller.
    """
    mounts = mount_types() if mounts is None else mounts
    if mounts.get(CGROUP_ROOT) == CGROUP2 or mounts.get(UNIFIED) != CGROUP2:
        return ""
    try:
        held = (sys_root / "fs/cgroup/unified/cgroup.controllers").read_text().split()
    except OSError:
        return ""
    if not held:
        return ""
    return (f"the cgroups are hybrid (v1, and v2 at {UNIFIED}) and the v2 hierarchy holds "
            f"{', '.join(held)}, which crun refuses; mount "
            + " and ".join(f"{c} on v1 (mkdir {CGROUP_ROOT}/{c} && mount -t cgroup -o {c} "
                           f"cgroup {CGROUP_ROOT}/{c})" for c in held)
            + " as .ci/install-kata does, or choose runc")


def choose(setting: str = "auto", *, which: Callable[[str], str | None] = shutil.which,
           blocker: Callable[[], str] = crun_blocker) -> OciRuntime:
    """The runtime for ``setting`` (one of ``CHOICES``).

    KataError ``runtime.oci_unavailable`` (exit 1) when the named runtime is not installed
    or (crun) cannot run on this host; ``auto`` never fails while runc is installed.
    """
    assert setting in CHOICES, setting
    if setting in ("auto", "crun"):
        crun = which("crun")
        why = "" if crun else "crun is not installed (apt-get install crun)"
        why = why or blocker()
        if crun and not why:
            return OciRuntime(name="crun", binary=os.path.realpath(crun),
                              why="chosen" if setting == "crun" else "auto: crun is installed "
                              "and can run here")
        if setting == "crun":
            raise KataError("runtime.oci_unavailable", f"containerd.oci_runtime is crun, but "
                            f"{why}", obj="crun", exit_code=1)
        fallback = f"auto: {why}"
    else:
        fallback = "chosen"
    runc = which("runc")
    if runc is None:
        raise KataError("runtime.oci_unavailable", "runc is not installed: apt-get install runc",
                        obj="runc", exit_code=1)
    return OciRuntime(name="runc", binary=os.path.realpath(runc), why=fallback)


def direct_blocker(oci: OciRuntime, cgroup_root: Path = Path(CGROUP_ROOT)) -> str:
    """Why steps cannot run directly (one ``crun run`` kata supervises,
    kata.runtimes.containerd.direct) on this host; "" when they can: crun, and cgroup v1
    with every hierarchy of ``DIRECT_CONTROLLERS`` mounted. ``kata doctor`` says it too."""
    if oci.name != "crun":
        return "the OCI runtime is runc (direct steps need crun)"
    if (cgroup_root / "cgroup.controllers").exists():
        return "the cgroups are unified (v2): crun enforces device rules only as its own " \
               "cgroup manager"
    missing = [c for c in DIRECT_CONTROLLERS if not (cgroup_root / c).is_dir()]
    if missing:
        return f"the cgroup v1 hierarchies {', '.join(missing)} are not mounted"
    return ""
