"""`kata doctor`: are this host's prerequisites in place, and if not, what to do.

Each check is a function of a :class:`Host` (where to look: /proc, /sys, PATH, the CNI
plugin directory, the store location, a socket probe) returning a :class:`Check`; tests
hand it a fake host made of a temporary directory. The checks read files and run
``--version`` of binaries; they start nothing.

Statuses: ``ok``; ``warn`` (kata runs, something is degraded: no cgroup controller for
limits, little free space, no git); ``fail`` (kata cannot run a step until it is fixed).
The store check creates and removes an empty directory where the store would be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kata.errors import KataError
from kata.oci_runtime import choose, crun_blocker, direct_blocker

Status = Literal["ok", "warn", "fail"]

GB = 1000 ** 3
MIN_FREE = 1 * GB  # below: fail (a base image and a few artifacts do not fit)
LOW_FREE = 5 * GB  # below: warn


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One prerequisite: ``name`` (``overlay``, ``cgroups``, ...), ``status``, ``detail``
    (what was found) and ``fix`` (what to do; "" when nothing)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix}


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """Where the checks look. ``proc``/``sys``: the roots of /proc and /sys; ``which``:
    finds an executable on PATH (``shutil.which``); ``cni_path``: the CNI plugin directory
    kata uses; ``store``: the store location kata would use; ``containerd_address``: an
    explicit ``--containerd`` or the host config's address (None: kata's own or the
    system's); ``system_socket``: the system containerd's socket ("" when the host config
    gives kata a ``state_dir``, so the system's is never used); ``kata_socket``: the
    socket of kata's own embedded containerd, ``kata_pid`` its pid if its pid file names a
    live containerd; ``answers``: whether a unix socket accepts connections; ``euid``:
    the effective uid; ``oci_runtime``: the configured OCI runtime (``auto``, ``crun``,
    ``runc``); ``step_runner``: how steps without services run (``direct``, ``task``)."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    which: Callable[[str], str | None] = shutil.which
    cni_path: Path = Path("/usr/lib/cni")
    store: Path = Path("/var/lib/kata/store")
    containerd_address: str | None = None
    system_socket: str = "/run/containerd/containerd.sock"
    server_socket: str = ""
    server_access: str = "no"  # kata.sockets.socket_access of server_socket
    kata_socket: str = ""
    kata_pid: int | None = None
    answers: Callable[[str], bool] = field(default=lambda path: False)
    euid: int = field(default_factory=os.geteuid)
    oci_runtime: str = "auto"  # the host config's containerd.oci_runtime
    step_runner: str = "direct"  # the host config's containerd.step_runner
    # the owner markers (kata.runtimes.sweepmarks.markers) in the store's state directory,
    # as ``(owner, socket, address, dead)``, the directory that holds them ("" while the
    # store has none) and how long a silent containerd's marker stays (seconds); the CLI
    # reads them, as the doctor imports no runtime
    owner_markers: tuple[tuple[str, str, str | None, bool], ...] = ()
    marker_dir: str = ""
    marker_expiry: float = 7 * 86400.0
    remote_executor: str = ""  # the host config's remote.executor URL ("" when none)
    # asks it for its REAPI ServerCapabilities (kata.executor.connection.probe); raises
    # kata.remote.cas.RemoteError when it does not answer
    executor_probe: Callable[[], object] | None = None
    # the scheduler a `kata worker` here is to serve (`kata doctor --worker-executor URL`;
    # "" when not asked) and the probe that asks it as a worker would
    # (kata.executor.connection.probe_bots: what it found, or RemoteError)
    worker_executor: str = ""
    worker_probe: Callable[[], str] | None = None
    # the pid and hard RLIMIT_NOFILE of the containerd listening on a socket (None: not
    # known); its shims, and the crun they run, can only lower what it holds
    daemon_nofile: Callable[[str], tuple[int, int] | None] = field(default=lambda path: None)
    nofile_ceiling: int = 524288  # the hard RLIMIT_NOFILE kata holds once it raised its own
    # what a step's spec asks before any cut (spec.NOFILE_SOFT, NOFILE_HARD; the CLI hands
    # them over: this module uses no runtime)
    nofile_spec: tuple[int, int] = (65536, 524288)


def _version(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 and \
        (proc.stdout or proc.stderr).strip() else ""


def check_root(host: Host) -> Check:
    if host.euid == 0:
        return Check(name="root", status="ok", detail="running as root")
    if host.server_access == "yes":
        return Check(name="root", status="ok", detail=f"uid {host.euid}: kata commands run "
                     f"as root through kata's server at {host.server_socket} (group kata)")
    if host.server_access == "denied":
        return Check(name="root", status="fail", detail=f"uid {host.euid} may not use kata's "
                     f"server at {host.server_socket}",
                     fix="an administrator adds you to group kata (usermod -aG kata $USER; "
                         "root-equivalent), then log in again; or run kata as root")
    return Check(name="root", status="fail", detail=f"running as uid {host.euid}",
                 fix="kata mounts each step's workspace (overlayfs) and drives containerd: "
                     "run it as root (sudo kata ...), or have root run kata's server "
                     "(kata daemon serve) and add you to group kata")


def check_overlay(host: Host) -> Check:
    try:
        filesystems = (host.proc / "filesystems").read_text()
    except OSError as err:
        return Check(name="overlay", status="fail", detail=f"cannot read /proc/filesystems "
                     f"({err.strerror})", fix="mount /proc")
    if any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines()):
        return Check(name="overlay", status="ok", detail="the kernel has overlayfs")
    return Check(name="overlay", status="fail", detail="the kernel has no overlay filesystem "
                 "loaded", fix="modprobe overlay (and add it to /etc/modules); the kernel "
                 "needs CONFIG_OVERLAY_FS")


def _mounts(host: Host) -> list[tuple[str, str, str]]:
    out = []
    try:
        text = (host.proc / "self" / "mounts").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))  # mount point, type, options
    return out


def check_cgroups(host: Host) -> Check:
    mounts = _mounts(host)
    wanted = ("cpu", "memory", "pids")
    if any(point == "/sys/fs/cgroup" and kind == "cgroup2" for point, kind, _ in mounts):
        try:
            found = (host.sys / "fs" / "cgroup" / "cgroup.controllers").read_text().split()
        except OSError:
            found = []
        version = "v2 (unified)"
    else:
        found = [opt for _, kind, opts in mounts if kind == "cgroup"
                 for opt in opts.split(",") if opt in wanted]
        version = "v1 (hybrid)" if any(kind == "cgroup2" for _, kind, _ in mounts) else "v1"
        if not any(kind == "cgroup" for _, kind, _ in mounts):
            return Check(name="cgroups", status="fail", detail="no cgroup filesystem mounted",
                         fix="mount cgroup2 on /sys/fs/cgroup (systemd does this at boot); "
                             "runc needs cgroups to start a container")
    missing = [c for c in wanted if c not in found]
    if missing:
        return Check(name="cgroups", status="warn", detail=f"cgroups {version}; controllers "
                     f"{', '.join(missing)} missing", fix="enable them (kernel command line "
                     "cgroup_enable=memory, or systemd's Delegate=) for step limits")
    return Check(name="cgroups", status="ok", detail=f"cgroups {version}, controllers "
                 f"{', '.join(wanted)}")


def check_containerd(host: Host) -> Check:
    if host.containerd_address:
        if host.answers(host.containerd_address):
            return Check(name="containerd", status="ok",
                         detail=f"answers at {host.containerd_address}")
        return Check(name="containerd", status="fail",
                     detail=f"nothing answers at {host.containerd_address}",
                     fix="start that containerd, or drop --containerd / "
                         "KATA_CONTAINERD_ADDRESS to let kata start its own")
    # the order kata connects in (ContainerdRuntime.connect): the system's, else its own
    binary = host.which("containerd")
    version = (_version(binary) or binary) + "; " if binary else ""
    if host.system_socket and host.answers(host.system_socket):
        return Check(name="containerd", status="ok",
                     detail=f"{version}the system's answers at {host.system_socket}")
    if host.kata_socket and host.answers(host.kata_socket):
        pid = f" (pid {host.kata_pid})" if host.kata_pid else ""
        return Check(name="containerd", status="ok",
                     detail=f"{version}kata's own is running{pid} and answers at "
                            f"{host.kata_socket}; kata uses it")
    if host.kata_pid is not None and host.kata_socket:
        return Check(name="containerd", status="fail",
                     detail=f"kata's own is running (pid {host.kata_pid}) but its socket "
                            f"{host.kata_socket} does not accept connections",
                     fix="kata daemon stop (kata starts a fresh one on first use); "
                         "its log says why")
    if binary is None:
        return Check(name="containerd", status="fail", detail="containerd is not installed",
                     fix="apt-get install containerd (kata starts its own daemon from it)")
    return Check(name="containerd", status="ok",
                 detail=version + "kata starts its own on first use")


def _used_socket(host: Host) -> str | None:
    """The socket of the containerd kata would use, when one answers (the order of
    ``ContainerdRuntime.connect``); None when kata would start its own."""
    if host.containerd_address:
        return host.containerd_address if host.answers(host.containerd_address) else None
    for sock in (host.system_socket, host.kata_socket):
        if sock and host.answers(sock):
            return sock
    return None


def check_open_files(host: Host) -> Check:
    """The open-files limit of steps run as containerd tasks (steps with services; every
    step where direct steps cannot run): crun runs them under containerd's shim, which
    holds the daemon's hard RLIMIT_NOFILE, and kata cuts the step's 65536:524288 to it
    (``spec.task_rlimits``). A warning when the daemon's is below what kata holds."""
    soft, asked = host.nofile_spec  # what the spec asks, before any cut
    wanted = min(asked, host.nofile_ceiling)
    sock = _used_socket(host)
    found = host.daemon_nofile(sock) if sock else None
    if found is None:
        if sock is None:
            return Check(name="open-files", status="ok",
                         detail=f"steps get {min(soft, wanted)}:{wanted} (kata's own "
                                "containerd, once started, inherits kata's limits)")
        return Check(name="open-files", status="ok",
                     detail=f"steps get {min(soft, wanted)}:{wanted} at most: the limits of "
                            f"the containerd at {sock} cannot be read (its steps with "
                            "services get less if it holds less)")
    pid, hard = found
    got = min(wanted, hard)
    if hard >= wanted:
        return Check(name="open-files", status="ok",
                     detail=f"steps get {min(soft, got)}:{got} (containerd pid {pid} "
                            f"allows {hard})")
    return Check(name="open-files", status="warn",
                 detail=f"the containerd at {sock} (pid {pid}) holds a hard open-files limit "
                        f"of {hard}: steps run as its tasks (steps with services) get "
                        f"{min(soft, got)}:{got}, not {min(soft, wanted)}:{wanted}",
                 fix=f"raise containerd's limit to {asked} or more: LimitNOFILE=infinity "
                     "in its systemd unit (systemctl edit containerd; systemctl restart "
                     f"containerd), or at once `prlimit --pid {pid} --nofile={soft}:"
                     f"{asked}` (shims it starts afterwards inherit it)")


def check_runc(host: Host) -> Check:
    binary = host.which("runc")
    if binary is None:
        return Check(name="runc", status="fail", detail="runc is not installed",
                     fix="apt-get install runc")
    return Check(name="runc", status="ok", detail=_version(binary) or binary)


def check_oci_runtime(host: Host) -> Check:
    """Which OCI runtime the containers will use (kata.oci_runtime)."""
    mounts = {point: kind for point, kind, _ in _mounts(host)}
    try:
        oci = choose(host.oci_runtime, which=host.which,
                     blocker=lambda: crun_blocker(mounts, host.sys))
    except KataError as err:
        fix = "apt-get install crun" if "not installed" in err.message else \
            "follow the message, or set containerd.oci_runtime: auto (docs/config.md)"
        return Check(name="oci-runtime", status="fail", detail=err.message, fix=fix)
    version = _version(oci.binary) or oci.binary
    return Check(name="oci-runtime", status="ok",
                 detail=f"{version} (containerd.oci_runtime: {host.oci_runtime}"
                        + ("" if oci.why == "chosen" else f"; {oci.why.removeprefix('auto: ')}")
                        + ")")


def check_step_runner(host: Host) -> Check:
    """How steps without services will run: each as one ``crun run`` kata supervises
    (``direct``), or as a containerd task (``task``: asked for, or the host cannot run
    them directly; kata.oci_runtime.direct_blocker says why). Never fails: tasks
    run everything, only slower."""
    if host.step_runner == "task":
        return Check(name="step-runner", status="ok", detail="containerd tasks "
                     "(containerd.step_runner: task)")
    mounts = {point: kind for point, kind, _ in _mounts(host)}
    try:
        oci = choose(host.oci_runtime, which=host.which,
                     blocker=lambda: crun_blocker(mounts, host.sys))
    except KataError:
        return Check(name="step-runner", status="warn", detail="unknown: no OCI runtime "
                     "(see oci-runtime)", fix="see the oci-runtime check's fix")
    why = direct_blocker(oci, host.sys / "fs" / "cgroup")
    if why:
        return Check(name="step-runner", status="ok", detail=f"containerd tasks: {why} "
                     "(containerd.step_runner: direct falls back)")
    return Check(name="step-runner", status="ok", detail="direct: one crun per step, "
                 "supervised by kata; steps with services run as containerd tasks")


def check_cni(host: Host) -> Check:
    missing = [p for p in ("bridge", "host-local") if not os.access(host.cni_path / p, os.X_OK)]
    tools = [t for t in ("ip", "iptables") if host.which(t) is None]
    if missing:
        return Check(name="cni", status="fail",
                     detail=f"CNI plugins {', '.join(missing)} missing in {host.cni_path}",
                     fix="apt-get install containernetworking-plugins (steps with the "
                         "default network need them)")
    if tools:
        return Check(name="cni", status="fail", detail=f"{', '.join(tools)} not on PATH",
                     fix="apt-get install iproute2 iptables")
    return Check(name="cni", status="ok", detail=f"bridge, host-local in {host.cni_path}")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    for cand in (path, *path.parents):
        if cand.exists():
            return cand
    return Path("/")


def check_store(host: Host) -> Check:
    base = _existing(host.store)
    if base != host.store and not base.is_dir():
        return Check(name="store", status="fail", detail=f"{host.store}: {base} is not a "
                     "directory", fix="choose another store: --store DIR or KATA_STORE=DIR")
    try:  # access(2) says yes to root on /proc: try it, as the store will
        os.rmdir(tempfile.mkdtemp(prefix=".kata-doctor-", dir=base))
    except OSError as err:
        return Check(name="store", status="fail", detail=f"{host.store}: cannot write in "
                     f"{base} ({err.strerror})",
                     fix="choose a writable store: --store DIR or KATA_STORE=DIR")
    made = "" if base == host.store else " (created on first use)"
    return Check(name="store", status="ok", detail=f"{host.store}{made}")


def check_space(host: Host) -> Check:
    base = _existing(host.store)
    try:
        free = shutil.disk_usage(base).free
    except OSError as err:
        return Check(name="space", status="fail", detail=f"cannot stat {base} ({err.strerror})",
                     fix="choose another store: --store DIR or KATA_STORE=DIR")
    shown = f"{free / GB:.1f}GB free at {base}"
    if free < MIN_FREE:
        return Check(name="space", status="fail", detail=shown,
                     fix="free space (kata store gc --max-size SIZE) or move the store "
                         "(--store DIR)")
    if free < LOW_FREE:
        return Check(name="space", status="warn", detail=shown,
                     fix="images and artifacts need room: kata store gc --max-size SIZE")
    return Check(name="space", status="ok", detail=shown)


def check_git(host: Host) -> Check:
    if host.which("git") is None:
        return Check(name="git", status="warn", detail="git is not installed",
                     fix="apt-get install git (only:, when:, triggers and hooks need it)")
    return Check(name="git", status="ok", detail=_version("git") or "git")


EXECUTOR_PROBE_TIMEOUT = 5.0  # seconds: kata.executor.connection.probe's default

CHECKS = (check_root, check_overlay, check_cgroups, check_containerd, check_open_files,
          check_runc,
          check_oci_runtime, check_step_runner, check_cni, check_store, check_space, check_git)


def remote_fix(code: str, detail: str, *, server: str, timeout: float, start: str,
               hung: str) -> str:
    """The fix for a REAPI server (``server``: what to call it) whose GetCapabilities failed
    with the gRPC status ``code`` (its name) and ``detail``: an unknown instance, refused
    credentials, a TLS mismatch (either way) and a hung server each have their own; else
    ``start`` (it is down or the URL is wrong). ``hung``: what runs do meanwhile, after a ``timeout``
    (seconds) that went unanswered. One rule for ``remote-cache`` and ``remote-executor``."""
    if code in ("INVALID_ARGUMENT", "NOT_FOUND"):  # it answers: not a down server
        return (f"the {server} does not know this instance name: set remote.instance (or "
                "--remote-instance) to one it serves")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return (f"the {server} refused the credentials: set remote.token_file to a token it "
                "accepts (BuildGrid's jwt: signed with its secret, with an `exp` not past; "
                "docs/remote.md, \"TLS and a bearer token\"), and remote.tls.cert/key "
                "when it asks for a client certificate")
    if "handshake failed" in detail.lower():
        return ("the TLS handshake failed: if the server speaks plaintext, use grpc:// "
                "instead of grpcs://; otherwise check its certificate against remote.tls.ca")
    if code == "UNAVAILABLE" and any(x in detail.lower() for x in ("socket closed",
                                                                  "connection reset")):
        # something listens there (a down server refuses) and closed a plaintext
        # HTTP/2 connection at once: what a TLS server does with one
        return (f"something at that address took the connection and closed it: if the "
                f"{server} speaks TLS, use grpcs:// (remote.tls.ca for a private CA); "
                f"otherwise no REAPI {server} listens there: correct the URL")
    if code == "DEADLINE_EXCEEDED":
        return (f"the {server} took the connection but did not answer in {timeout:g} s: it "
                f"is hung or overloaded, or a proxy stands in front of a dead one; {hung}")
    return start


def check_remote_executor(host: Host) -> Check:
    """The configured remote executor answers Capabilities with execution enabled and
    SHA-256 digests (REAPI ``ServerCapabilities.execution_capabilities``)."""
    from kata.remote.cas import RemoteError

    url = host.remote_executor
    assert host.executor_probe is not None
    start = (f"start the scheduler at {url} (BuildGrid with !execution, docs/remote.md) or "
             "correct remote.executor in the host config")
    try:
        caps = host.executor_probe()
    except RemoteError as err:
        fix = remote_fix(err.code or "", err.message, server="scheduler",
                         timeout=EXECUTOR_PROBE_TIMEOUT, start=start,
                         hung="a run's remote steps fail after 10 s with remote.unavailable")
        # the error's own hint (a TLS mismatch's advice) is the fix line's: said once
        return Check(name="remote-executor", status="fail", detail=f"{url}: {err.bare}",
                     fix=fix)
    execution = caps.execution_capabilities  # type: ignore[attr-defined]
    if not execution.exec_enabled:
        return Check(name="remote-executor", status="fail", detail=f"{url} answers but does "
                     "not execute (execEnabled is false: a cache-only server)", fix=start)
    sha256 = 1  # build.bazel.remote.execution.v2.DigestFunction.SHA256
    if execution.digest_function not in (0, sha256):
        return Check(name="remote-executor", status="fail", detail=f"{url} does not hash "
                     "with SHA-256", fix="use an Execution service that hashes with SHA-256")
    return Check(name="remote-executor", status="ok", detail=f"{url}: execution enabled")


def check_worker_scheduler(host: Host) -> Check:
    """``worker-scheduler``: the scheduler a ``kata worker`` here is to serve answers as a
    worker needs (reachable, its TLS and token accepted, the instance known, execution
    enabled, a Bots service: ``kata.executor.connection.probe_bots``), or the fix named;
    a worker that cannot work for it exits 2 at its first contact (or waits for ever for
    one that does not answer), so this is ``fail``."""
    from kata.remote.cas import RemoteError

    url = host.worker_executor
    assert host.worker_probe is not None
    start = (f"start the scheduler at {url} (BuildGrid with !execution, whose Bots service "
             "workers use: docs/remote.md) or correct the worker's --executor")
    try:
        found = host.worker_probe()
    except RemoteError as err:
        if err.code == "UNIMPLEMENTED":  # no Execution / Bots service: a cache-only server
            fix = (f"{url} has no Bots service (a cache-only server, such as the cache-only "
                   "BuildGrid of docs/remote.md): point the worker's --executor at the "
                   "scheduler, a BuildGrid with !execution")
        else:
            fix = remote_fix(err.code or "", err.message, server="scheduler",
                             timeout=EXECUTOR_PROBE_TIMEOUT, start=start,
                             hung="a worker waits for it, logging each retry")
            fix = fix.replace("remote.instance (or --remote-instance)",
                              "the worker's --instance (or remote.instance)")
        return Check(name="worker-scheduler", status="fail", detail=f"{url}: {err.bare}",
                     fix=fix)
    return Check(name="worker-scheduler", status="ok", detail=f"{url}: {found}")


def check_owner_markers(host: Host) -> Check | None:
    """The owner markers (``kata.runtimes.sweepmarks``) of kata processes that died
    (killed) in the store's state directory: each names a containerd that may hold what
    that kata left, which the next run sweeps. None when there is none (no line)."""
    if not host.marker_dir:
        return None
    found = host.owner_markers
    dead = [m for m in found if m[3]]
    if not dead:
        return None
    torn = sum(1 for _, socket, _, _ in dead if not socket)
    by_socket: dict[str, int] = {}
    for _, socket, _, _ in dead:
        if socket:
            by_socket[socket] = by_socket.get(socket, 0) + 1
    parts = [f"{n} for containerd at {socket} ({'answers' if host.answers(socket) else 'not answering'})"
             for socket, n in sorted(by_socket.items())]
    if torn:
        parts.append(f"{torn} half-written")
    days = int(host.marker_expiry // 86400)
    return Check(name="owner-markers", status="warn",
                 detail=(f"{len(dead)} owner markers of killed kata processes" if len(dead) != 1
                         else "1 owner marker of a killed kata process")
                        + f" in {host.marker_dir}: {'; '.join(parts)}",
                 fix="the next kata run clears what they left and removes them (one whose "
                     f"containerd stays silent goes after {days} days; a later connection "
                     "there still sweeps its leftovers)")


def diagnose(host: Host) -> list[Check]:
    """Every check, in a fixed order: root, overlay, cgroups, containerd, open-files, runc,
    oci-runtime, step-runner, cni, store, space, git; then owner-markers when killed kata
    processes left some (``check_owner_markers``), remote-executor when the host
    config names one (it asks the server), and worker-scheduler when asked about one
    (``--worker-executor``)."""
    checks = [check(host) for check in CHECKS]
    markers = check_owner_markers(host)
    if markers is not None:
        checks.append(markers)
    if host.remote_executor and host.executor_probe is not None:
        checks.append(check_remote_executor(host))
    if host.worker_executor and host.worker_probe is not None:
        checks.append(check_worker_scheduler(host))
    return checks
