"""The sandbox of every step and service container: seccomp, AppArmor, cgroup limits.

Seccomp: containerd's default profile (``contrib/seccomp/seccomp_default.go``,
``DefaultProfile``), shipped as data in ``seccomp_default.json`` (generated from the Go
source by ``seccompgen.py``) and assembled here exactly as containerd assembles it for a
spec's bounding capabilities, kernel and architecture. Three deliberate restrictions:
- containerd allows ``ptrace`` on kernels >= 4.8; kata does not (``DENIED``), so no
  process of a step can attach to, read or write another process, as the threat model
  asks (SECURITY.md);
- containerd 1.6 allows ``io_uring_setup``, ``io_uring_enter`` and ``io_uring_register``;
  kata does not (``IO_URING``), as containerd 2.0 and Docker 25 no longer do: io_uring's
  kernel code is a large attack surface (most kernel exploits of Google's kCTF program in
  2022-23), and a step's libraries (libuv, Tokio) fall back to epoll when it is refused;
- containerd also lists the compat ABIs (x86_64: i386 and x32; arm64: arm); kata lists
  the native one only (``COMPAT_ARCHES``), so a syscall through a 32-bit ABI kills the
  thread (libseccomp's bad-arch action). It removes the compat syscall layer from what a
  step can reach, and it is most of the profile's cost: runc compiles the filter once per
  container and per listed ABI (~4 ms of CPU each here; bench/sandbox_bench.py). Without CAP_SYS_ADMIN the profile refuses mount, unshare, setns, bpf,
keyctl, add_key, the module calls, and ``clone`` with any ``CLONE_NEW*`` flag: a step
cannot create a user namespace, the escape Docker's default also blocks.

AppArmor: where the kernel offers it (``/sys/module/apparmor/parameters/enabled`` is
``Y``) and ``apparmor_parser`` exists, the profile ``kata-default`` (containerd's
``contrib/apparmor`` template: deny mount, writes to /proc and /sys, ptrace outside the
profile) is loaded once and named in the spec. Elsewhere no profile is set.

Limits (OCI runtime-spec config-linux.md, "Control groups"): memory.limit (and swap equal
to it: no swap beyond the limit), cpu.quota/period, pids.limit. After a step fails the
runtime reads its cgroup to tell an out-of-memory kill (``oom_killed``) from any other
SIGKILL; cgroup v1 (``memory.oom_control``: ``oom_kill N``) and v2 (``memory.events``).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import signal
import shutil
import subprocess
import time
from importlib import resources as pkg_resources
from pathlib import Path
from typing import Any

from kata.errors import KataError
from kata.resources import CPU_PERIOD, Resources

PROFILE_FILE = "seccomp_default.json"
DENIED = frozenset({"ptrace"})  # allowed by containerd on kernels >= 4.8; not by kata
# allowed by containerd 1.6's profile; removed from containerd's (2.0, containerd#9320) and
# Docker's (25.0, moby#46762) because its kernel code is where most container escapes of
# Google's kCTF came from; denied by kata whatever the capabilities
IO_URING = frozenset({"io_uring_setup", "io_uring_enter", "io_uring_register"})
COMPAT_ARCHES = frozenset({"SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_ARM"})
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "s390x": "s390x", "ppc64le": "ppc64le", "riscv64": "riscv64"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
APPARMOR_ENABLED = Path("/sys/module/apparmor/parameters/enabled")
APPARMOR_PROFILES = Path("/sys/kernel/security/apparmor/profiles")
APPARMOR_PROFILE = "kata-default"


@functools.cache
def _parts() -> dict[str, Any]:
    text = pkg_resources.files(__package__).joinpath(PROFILE_FILE).read_text()
    return json.loads(text)


def _kernel() -> tuple[int, int]:
    release = platform.release().split("-")[0].split(".")
    try:
        return int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return 0, 0


@functools.cache
def _profile(caps: frozenset[str], kernel: tuple[int, int], goarch: str) -> str:
    parts = _parts()
    rules: list[dict[str, Any]] = [dict(r, names=[n for n in r["names"] if n not in IO_URING])
                                   for r in parts["syscalls"]]
    for rule in parts["kernel"]:
        if kernel >= tuple(rule["min"]):
            rules.append({"names": list(rule["names"]), "action": "SCMP_ACT_ALLOW"})
    if goarch in parts["arch"]:
        rules.append({"names": list(parts["arch"][goarch]), "action": "SCMP_ACT_ALLOW"})
    for cap, names in parts["caps"].items():
        if cap in caps:
            rules.append({"names": list(names), "action": "SCMP_ACT_ALLOW"})
    if "CAP_SYS_ADMIN" not in caps:
        rules += [dict(r) for r in parts["non_admin"]]
    if "CAP_SYS_PTRACE" not in caps:  # kata's one difference; see the module docstring
        for rule in rules:
            if rule["action"] == "SCMP_ACT_ALLOW":
                rule["names"] = [n for n in rule["names"] if n not in DENIED]
        rules = [r for r in rules if r["names"]]
    profile = {"defaultAction": parts["defaultAction"],
               "architectures": [a for a in parts["architectures"].get(goarch, [])
                                 if a not in COMPAT_ARCHES],
               "syscalls": rules}
    return json.dumps(profile, separators=(",", ":"))


def seccomp_profile(capabilities: list[str] | tuple[str, ...], *,
                    kernel: tuple[int, int] | None = None,
                    machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a container with these bounding capabilities.

    Built like containerd's ``DefaultProfile(spec)``: the base allow list, the rules of
    the running kernel version and architecture (``platform.machine()``), the names each
    held capability unlocks, and (without CAP_SYS_ADMIN) the masked ``clone`` rule and
    ``clone3`` → ENOSYS; minus ``DENIED`` and the ``COMPAT_ARCHES``. A fresh dict each
    call (callers may edit it).
    """
    goarch = _GOARCH.get(machine or platform.machine(), machine or platform.machine())
    return json.loads(_profile(frozenset(capabilities), kernel or _kernel(), goarch))


# -- AppArmor -----------------------------------------------------------------------------
# containerd's contrib/apparmor/template.go (itself Docker's), rendered for a recent
# apparmor_parser (>= 2.9.95: signal and ptrace rules).
APPARMOR_TEMPLATE = """\
{imports}

profile {name} flags=(attach_disconnected,mediate_deleted) {{
{inner}
  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (receive) peer={daemon},
  signal (send,receive) peer={name},

  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/mem rwklx,
  deny @{{PROC}}/kmem rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,read) peer={name},
}}
"""


def apparmor_available(enabled: Path = APPARMOR_ENABLED) -> bool:
    """Whether the kernel enforces AppArmor and ``apparmor_parser`` can load a profile."""
    try:
        on = enabled.read_text().strip() == "Y"
    except OSError:
        return False
    return on and shutil.which("apparmor_parser") is not None


def render_apparmor(name: str = APPARMOR_PROFILE, etc: Path = Path("/etc/apparmor.d"),
                    daemon: str = "unconfined") -> str:
    """The profile text, with the tunables/abstractions includes the host has."""
    imports = ("#include <tunables/global>" if (etc / "tunables/global").exists()
               else "@{PROC}=/proc/")
    inner = "  #include <abstractions/base>\n" if (etc / "abstractions/base").exists() else ""
    return APPARMOR_TEMPLATE.format(imports=imports, inner=inner, name=name, daemon=daemon)


@functools.cache
def apparmor_profile() -> str | None:
    """The AppArmor profile to name in every spec, loaded on first use; None without AppArmor.

    Raises KataError ``runtime.apparmor_failed`` when AppArmor is on but the profile
    cannot be loaded (a step must not silently run with less confinement).
    """
    if not apparmor_available():
        return None
    try:
        if f"{APPARMOR_PROFILE} (" in APPARMOR_PROFILES.read_text():
            return APPARMOR_PROFILE
    except OSError:
        pass
    try:
        daemon = Path("/proc/self/attr/current").read_text().split(" ")[0].strip()
    except OSError:
        daemon = ""
    text = render_apparmor(daemon=daemon or "unconfined")
    proc = subprocess.run(["apparmor_parser", "-Kr"], input=text.encode(),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise KataError("runtime.apparmor_failed", "cannot load the AppArmor profile "
                        f"{APPARMOR_PROFILE}: {proc.stderr.decode(errors='replace').strip()}",
                        obj=APPARMOR_PROFILE, exit_code=1)
    return APPARMOR_PROFILE


# -- cgroup limits ------------------------------------------------------------------------
def linux_resources(limits: Resources) -> dict[str, Any]:
    """The OCI ``linux.resources`` object: devices denied, memory, CPU quota, pids.

    ``limits`` must be complete (``kata.resources.effective``).
    """
    assert limits.complete, limits
    memory = int(limits.memory or 0)
    return {
        "devices": [{"allow": False, "access": "rwm"}],
        # swap = the limit: nothing beyond it, also on a host with swap (needs swap
        # accounting on cgroup v1; without it runc ignores the swap value)
        "memory": {"limit": memory, **({"swap": memory} if _swap_accounting() else {})},
        "cpu": {"quota": max(1000, round(float(limits.cpus or 0) * CPU_PERIOD)),
                "period": CPU_PERIOD},
        "pids": {"limit": int(limits.pids or 0)},
    }


@functools.cache
def _swap_accounting() -> bool:
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # v2: memory.swap.max always
        return True
    return (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists()


def _cgroup_file(controller: str, cgroup: str, v1: str, v2: str) -> Path:
    rel = cgroup.lstrip("/")
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # unified hierarchy only
        return CGROUP_ROOT / rel / v2
    return CGROUP_ROOT / controller / rel / v1


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def oom_killed(cgroup: str) -> bool:
    """Whether the kernel's OOM killer killed a process of cgroup ``cgroup`` (its
    cgroupsPath, e.g. ``/kata/<id>``); False when the cgroup is gone or unreadable."""
    return _counter(_cgroup_file("memory", cgroup, "memory.oom_control", "memory.events"),
                    "oom_kill") > 0


def pids_exhausted(cgroup: str) -> bool:
    """Whether a fork in ``cgroup`` failed because its pids limit was reached."""
    return _counter(_cgroup_file("pids", cgroup, "pids.events", "pids.events"), "max") > 0



def remove_cgroup(cgroup: str, wait: float = 5.0, root: Path = CGROUP_ROOT) -> int:
    """Remove what is left of a container's cgroup ``cgroup`` (its cgroupsPath, e.g.
    ``/kata/<id>``) in every hierarchy under ``root`` (each v1 controller, the named
    ``systemd`` one, ``unified``; or the v2 root); the number of directories removed.

    The OCI runtime removes the cgroup when it deletes the container, but only when its
    state says where the cgroup is: a ``crun create`` killed after it made the cgroups
    and before it wrote ``status`` (its shim ended under it: the shim runs it with a
    parent-death SIGKILL, or containerd's call to the shim was cancelled) leaves a state
    that ``crun delete --force`` removes while the cgroups stay, in every hierarchy. Only
    for a container whose task is gone: a process still in it is SIGKILLed, and one that
    outlives ``wait`` seconds (uninterruptible sleep) raises ``OSError`` (EBUSY), so the
    caller keeps its record of the container for the next sweep.
    """
    rel = cgroup.strip("/")
    assert rel and ".." not in rel.split("/"), cgroup
    try:
        hierarchies = [root, *(h for h in root.iterdir() if h.is_dir())]
    except OSError:
        return 0
    removed = 0
    deadline = time.monotonic() + wait
    for d in (h / rel for h in hierarchies):
        while True:
            try:
                d.rmdir()
                removed += 1
                break
            except FileNotFoundError:
                break
            except NotADirectoryError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise
            try:  # the container's last processes: SIGKILL (they are its, and it is gone)
                for pid in (d / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except FileNotFoundError:
                continue
            time.sleep(0.01)
    return removed
