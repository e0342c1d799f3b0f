"""The OCI runtime spec of a step, from containerd's own defaults.

containerd 1.6's ``populateDefaultUnixSpec``: /proc, /dev, /dev/pts, /dev/shm,
/dev/mqueue, /sys (ro), but no tmpfs on /run (as Docker); pid, ipc, uts, mount and network
namespaces; the 14 default capabilities; noNewPrivileges; masked and read-only paths (Docker's lists);
devices denied; containerd's default seccomp profile and, where the kernel has it, its
AppArmor profile (``sandbox.py``). On top: the step's process, hostname, mounts,
network mode, memory/CPU/pids limits and a cgroup of our own.
Secrets must never be put here: containerd writes the spec to disk.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import resource
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kata.errors import KataError
from kata.resources import effective

from ..base import Mount, StepSpec
from .sandbox import apparmor_profile, linux_resources, seccomp_profile

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
# Docker's (moby oci/defaults.go) lists, a superset of containerd 1.6's
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# RLIMIT_NOFILE: containerd's default spec says 1024:1024, under which redis-server cuts
# maxclients to 992 and test runners, databases and JVMs run out of descriptors. The soft
# limit is GitHub-hosted runners' 65536 (Elasticsearch's bootstrap check wants 65535), small
# enough that programs closing every descriptor up to it stay fast (moby#45534); the hard
# limit is systemd's and Docker 25's 524288, so a program may raise its own (redis, the JVM,
# Go and Node do). Each descriptor is kernel memory charged to the step's memory cgroup.
NOFILE_SOFT, NOFILE_HARD = 65536, 524288
RLIM_INFINITY_OCI = 2**64 - 1  # "unlimited" in an OCI spec's uint64 rlimits
CGROUP_PARENT = "/kata"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def lift_open_files_limit() -> None:
    """Raise this process's hard RLIMIT_NOFILE to at least ``NOFILE_HARD`` (its soft limit
    stays), so the containerd it starts and the crun it runs inherit room for the step's.

    crun sets a container's rlimits after dropping CAP_SYS_RESOURCE, so it can only lower
    the hard limit it inherited (else ``setrlimit RLIMIT_NOFILE: Operation not permitted``).
    Raising a hard limit needs root, as kata's containerd runtime does; without it (or
    above ``fs.nr_open``) this does nothing and the step's start says why.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_HARD:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, NOFILE_HARD))
        except (OSError, ValueError):
            pass


def step_rlimits(nofile_ceiling: int, core_ceiling: int) -> list[dict[str, Any]]:
    """The OCI ``process.rlimits`` of a step under a host whose hard limits are these
    (``RLIM_INFINITY_OCI`` for none): RLIMIT_NOFILE ``NOFILE_SOFT``/``NOFILE_HARD`` cut to
    the ceiling; RLIMIT_CORE soft 0 (no core files in a workspace unless the step says
    ``ulimit -c``), hard the ceiling. Other rlimits are the runtime's (inherited)."""
    return [
        {"type": "RLIMIT_NOFILE", "hard": min(NOFILE_HARD, nofile_ceiling),
         "soft": min(NOFILE_SOFT, nofile_ceiling)},
        {"type": "RLIMIT_CORE", "hard": core_ceiling, "soft": 0},
    ]


def host_rlimits() -> list[dict[str, Any]]:
    """``step_rlimits`` under the hard limits this process holds after
    ``lift_open_files_limit``: crun can only lower what it inherits, so a host (or a
    container kata itself runs in) with a lower ceiling gets that ceiling."""
    lift_open_files_limit()

    def hard(kind: int) -> int:
        value = resource.getrlimit(kind)[1]
        return RLIM_INFINITY_OCI if value == resource.RLIM_INFINITY else value

    return step_rlimits(hard(resource.RLIMIT_NOFILE), hard(resource.RLIMIT_CORE))


def hard_limits(pid: int) -> tuple[int, int] | None:
    """The hard RLIMIT_NOFILE and RLIMIT_CORE process ``pid`` holds (OCI's uint64:
    ``RLIM_INFINITY_OCI`` for none), None when they cannot be read (no such process, or a
    user who may not read another's limits)."""
    try:
        nofile = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        core = resource.prlimit(pid, resource.RLIMIT_CORE)[1]
    except (OSError, ValueError):
        return None
    return tuple(RLIM_INFINITY_OCI if v == resource.RLIM_INFINITY else v  # type: ignore[return-value]
                 for v in (nofile, core))


def task_rlimits(daemon_pid: int | None) -> list[dict[str, Any]]:
    """``step_rlimits`` for a containerd task: crun runs there under containerd's shim,
    which inherits the rlimits of the containerd (``daemon_pid``) that started it, not
    kata's, and can only lower them. So the ceilings are the lower of this process's
    (``host_rlimits``) and the daemon's: a system containerd whose unit says
    ``LimitNOFILE=4096`` gives its steps 4096:4096 instead of failing every one with
    crun's ``setrlimit RLIMIT_NOFILE: Operation not permitted`` (``kata doctor`` names
    the cut). A daemon whose limits cannot be read (None, or not ours to read) is
    assumed to hold kata's own."""
    own = host_rlimits()
    theirs = hard_limits(daemon_pid) if daemon_pid is not None else None
    if theirs is None:
        return own
    nofile, core = (min(rl["hard"], t) for rl, t in zip(own, theirs))
    return step_rlimits(nofile, core)


HOST_RESOLV = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"  # systemd-resolved's real servers


def _only_loopback(path: str) -> bool:
    """Whether the resolv.conf at ``path`` names nameservers and all are loopback."""
    with open(path, encoding="utf-8", errors="replace") as f:
        servers = [line.split()[1] for line in f
                   if line.startswith("nameserver") and len(line.split()) > 1]
    try:
        return bool(servers) and all(ipaddress.ip_address(s.split("%")[0]).is_loopback
                                     for s in servers)
    except ValueError:
        return False


def bridge_resolv_conf(etc: str = HOST_RESOLV, upstream: str = RESOLVED_UPSTREAM) -> str | None:
    """The resolv.conf a step on the bridge (network ``default``) binds: the host's, unless
    it names only loopback resolvers (systemd-resolved's 127.0.0.53 stub), which are the
    step's own loopback there; then systemd-resolved's upstream list if that names others,
    as Docker does. None without a host resolv.conf."""
    if not os.path.exists(etc):
        return None
    try:
        if _only_loopback(etc) and os.path.exists(upstream) and not _only_loopback(upstream):
            return upstream
    except OSError:
        pass
    return etc


def hosts_text(names: tuple[str, ...]) -> str:
    """An /etc/hosts mapping ``names`` (the step's hostname, a pod's service names) and
    ``localhost`` to the loopback address, with Docker's IPv6 line: what every container
    Docker makes has, and what a step of ``none`` or ``default`` network gets."""
    return (f"127.0.0.1\tlocalhost {' '.join(dict.fromkeys(names))}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n")


def shared_hosts_file(directory: Path, hostname: str) -> str:
    """The path of ``hosts_text((hostname,))`` under ``directory`` (made if missing), one
    file per content shared by every step that binds it read-only: written once, by a
    rename, so a step never sees it half-written. Kept with kata's state (a few bytes)."""
    text = hosts_text((hostname,))
    path = directory / f"hosts-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not path.exists():
        directory.mkdir(parents=True, mode=0o755, exist_ok=True)
        tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return str(path)


def _default_mounts(shm_bytes: int) -> list[dict[str, Any]]:
    """containerd's default mounts, /dev/shm sized ``shm_bytes`` (the memory limit: its
    pages are charged to the container's memory cgroup, so no more than the step may use
    anyway; Docker's and containerd's 64 MiB is too little for Chromium or PyTorch)."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777",
                     f"size={max(shm_bytes >> 10, 4)}k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        # no tmpfs on /run (containerd's default spec mounts an empty one): as under Docker,
        # a step sees the image's own /run on its fresh rootfs, with its modes and owners
        # (postgres:16's /var/run/postgresql, Debian's 1777 /run/lock), which a tmpfs, even
        # one filled by tmpcopyup, could not keep for /run itself nor, under runc, its copies
    ]


def parse_user(user: str) -> tuple[int, int]:
    uid_s, _, gid_s = (user or "0:0").partition(":")
    try:
        uid = int(uid_s)
        gid = int(gid_s) if gid_s else uid
    except ValueError:
        raise KataError("runtime.bad_user",
                        f"user {user!r} must be numeric, uid or uid:gid", obj=user) from None
    if uid < 0 or gid < 0:
        raise KataError("runtime.bad_user", f"user {user!r} is negative", obj=user)
    return uid, gid


def merge_env(image_env: tuple[str, ...], step_env: Mapping[str, str]) -> list[str]:
    env: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH.partition("=")[2])
    env.update(step_env)
    return [f"{k}={v}" for k, v in env.items()]


def _check_path(what: str, path: str) -> None:
    if not path.startswith("/"):
        raise KataError("runtime.bad_mount", f"{what} {path!r} must be absolute", obj=path)


def oci_mount(m: Mount) -> dict[str, Any]:
    _check_path("mount target", m.target)
    if m.kind == "bind":
        _check_path("bind source", m.source)
        if not os.path.exists(m.source):
            raise KataError("runtime.bad_mount", f"bind source {m.source} does not exist",
                            obj=m.source)
        return {"destination": m.target, "type": "bind", "source": m.source,
                "options": ["rbind", "ro" if m.readonly else "rw", *m.options]}
    if m.kind == "overlay":
        if not m.lower:
            raise KataError("runtime.bad_mount", f"overlay at {m.target} has no lower layer",
                            obj=m.target)
        for p in (*m.lower, *(x for x in (m.upper, m.work) if x)):
            _check_path("overlay layer", p)
            if any(c in p for c in ":,"):
                raise KataError("runtime.bad_mount", f"overlay path {p!r} contains ':' or ','",
                                obj=p)
        options = ["lowerdir=" + ":".join(m.lower)]
        if m.upper or m.work:
            if not (m.upper and m.work):
                raise KataError("runtime.bad_mount",
                                f"overlay at {m.target} needs both upper and work", obj=m.target)
            options += [f"upperdir={m.upper}", f"workdir={m.work}"]
        elif len(m.lower) < 2:  # overlayfs wants two lowers without an upper: a ro bind
            return {"destination": m.target, "type": "bind", "source": m.lower[0],
                    "options": ["rbind", "ro"]}
        if m.readonly:
            options.append("ro")
        return {"destination": m.target, "type": "overlay", "source": "overlay",
                "options": options + list(m.options)}
    if m.kind == "tmpfs":
        return {"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", *(["ro"] if m.readonly else []),
                            *m.options]}
    raise KataError("runtime.bad_mount", f"unknown mount kind {m.kind!r}", obj=m.target)


def build_spec(step: StepSpec, *, container_id: str, image_env: tuple[str, ...],
               netns: str | None = None, hosts_file: str | None = None,
               resolv: bool = True, rlimits: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """The OCI runtime spec for ``step`` (netns: a path to join; None = a fresh one).

    rlimits: the process's; None = ``host_rlimits()``, this host's (a containerd task's
    are ``task_rlimits``: its shim's ceiling).
    hosts_file: bound read-only at /etc/hosts (a pod's: its services' names; a step's own:
    ``shared_hosts_file``; for network ``host`` without one, the host's);
    resolv: with ``netns``, bind the host's resolv.conf (``bridge_resolv_conf``; not for a
    loopback-only pod).
    """
    uid, gid = parse_user(step.user)
    rlimits = host_rlimits() if rlimits is None else rlimits
    if not step.argv:
        raise KataError("runtime.bad_step", "a step needs a command", obj=container_id)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    resources = linux_resources(effective(step.resources))
    mounts = _default_mounts(resources["memory"]["limit"])
    if step.network == "host":
        for f in ("/etc/resolv.conf", "/etc/hosts"):
            if f == "/etc/hosts" and hosts_file:
                continue
            if os.path.exists(f):
                mounts.append({"destination": f, "type": "bind", "source": f,
                               "options": ["rbind", "ro"]})
    elif netns:
        namespaces.append({"type": "network", "path": netns})
        source = bridge_resolv_conf() if resolv else None  # the host's resolvers, via NAT
        if source is not None:
            mounts.append({"destination": "/etc/resolv.conf", "type": "bind",
                           "source": source, "options": ["rbind", "ro"]})
    else:
        namespaces.append({"type": "network"})  # a fresh one: loopback only
    if hosts_file:
        mounts.append({"destination": "/etc/hosts", "type": "bind", "source": hosts_file,
                       "options": ["rbind", "ro"]})
    mounts += [oci_mount(m) for m in step.mounts]
    caps = list(CAPABILITIES)
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
        "args": list(step.argv),
        "env": merge_env(image_env, step.env),
        "cwd": step.workdir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits,
        "noNewPrivileges": True,
    }
    armor = apparmor_profile()
    if armor is not None:
        process["apparmorProfile"] = armor
    return {
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": "rootfs"},
        "hostname": step.hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroup_path(container_id),
            "namespaces": namespaces,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp_profile(caps),
        },
    }


def cgroup_path(container_id: str) -> str:
    """The container's cgroupsPath: under kata's own parent, never the daemon's."""
    return f"{CGROUP_PARENT}/{container_id}"


def spec_bytes(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec, separators=(",", ":")).encode()
