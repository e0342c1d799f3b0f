"""The narrow runtime interface the realiser is written against.

A runtime does two things: resolve an image reference to a manifest digest,
and run one step to completion. Everything a step needs is in ``StepSpec``;
everything it says goes to an ``OutputSink``; it returns the exit status.
The containerd adapter is the real implementation, ``FakeRuntime`` in the
tests drives the scheduler without containers.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from kata.resources import Resources

NetworkMode = Literal["default", "none", "host"]
Stream = Literal["stdout", "stderr"]

# Called once per complete line (without its trailing newline), in the order the
# step wrote it on that stream, as soon as the line is complete; a final partial
# line is delivered when the step ends. Called from a runtime thread.
# A sink with a true attribute ``raw`` gets the bytes exactly as read instead (chunks of
# any size, newlines included, in order per stream): what a streaming secret masker
# needs, since a line split at MAX_LINE or a dropped final newline would hide a value.
OutputSink = Callable[[Stream, bytes], None]
# A sink with a callable attribute ``running`` is called once (no arguments) when the
# step's images are in place and its container is about to be made: the end of pulling
# (run records' phase times).
# The same for a service's output: (service name, stream, line).
ServiceSink = Callable[[str, Stream, bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class PullProgress:
    """How far an image pull is: layers and compressed bytes fetched of the total.

    A runtime that pulls calls its ``progress`` callable (if set) with one of these when a
    pull starts, at most every 0.1 s while bytes arrive, after each layer, and once with
    ``done=True`` however it ended (``stopped=True`` too when it ended without the image:
    stopped, or failed). Called from the pulling thread.
    """

    image: str  # the reference being pulled
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    done: bool = False
    stopped: bool = False


PullCallback = Callable[[PullProgress], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """A mount inside the container.

    kind: "bind" (source is a host path), "overlay" (lower: host dirs, top
    first; upper and work: host dirs on one filesystem), or "tmpfs".
    """

    kind: Literal["bind", "overlay", "tmpfs"]
    target: str
    source: str = ""
    readonly: bool = False
    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """When a service counts as ready.

    kind "tcp": ``target`` is a port that must accept a connection on the pod's
    localhost; "http": ``target`` is a URL (its host is the pod's 127.0.0.1) that must
    answer 2xx/3xx; "command": ``target`` is a shell command run inside the service
    container (``/bin/sh -c``) that must exit 0. Probed every ``interval`` seconds
    until ``timeout`` seconds have passed since the service started.
    """

    kind: Literal["tcp", "http", "command"]
    target: str
    timeout: float = 60.0
    interval: float = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A sidecar container of a step: started before it, in its network namespace."""

    name: str  # also its host name: /etc/hosts maps it to 127.0.0.1 in the pod
    image: str  # pinned by digest, like StepSpec.image
    argv: tuple[str, ...] = ()  # () = the image's Entrypoint + Cmd
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"  # "/" = the image's WorkingDir
    user: str = ""  # "" = the image's user if numeric, else 0:0
    mounts: tuple[Mount, ...] = ()
    # host directories kata prepared for it (its secrets' tmpfs): the runtime gives them
    # and their files to the user it runs as once that is known (the image's, without
    # ``user``), or a non-root service could not read them
    owned: tuple[str, ...] = ()
    # None: the first ExposedPorts entry of the image config must accept a TCP
    # connection; an image that exposes none is ready once started
    ready: Readiness | None = None
    resources: Resources = Resources()  # None fields: kata.resources.host_defaults()


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSpec:
    """One container run, fully resolved: no tag, no unresolved path."""

    image: str  # a reference pinned by digest: "docker.io/library/x@sha256:…" or "sha256:…"
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "0:0"
    mounts: tuple[Mount, ...] = ()
    network: NetworkMode = "none"
    timeout: float | None = None  # seconds; SIGTERM, grace period, then SIGKILL
    hostname: str = "kata"
    labels: Mapping[str, str] = field(default_factory=dict)  # e.g. run id, step name
    # started first, in the step's network namespace (a pod), stopped after it
    services: tuple[ServiceSpec, ...] = ()
    # memory, CPU and process limits; None fields: kata.resources.host_defaults()
    resources: Resources = Resources()
    # the restored ``cache.paths`` (relative to the workspace) the step's ``user`` owns
    # before it starts (``give_cache_paths``): the realiser gives them on a local
    # workspace itself, unless the runtime says ``gives_cache_paths`` (a remote executor:
    # its worker, which materialises the workspace afresh, gives them on its copy, and the
    # client's copy is left alone). () when nothing was restored or the step runs as root
    cache_paths: tuple[str, ...] = ()


# a StepSpec label: the step's workspace or environment may hold a secret (it declares
# one, or it sees the artifacts of a step that does), so it never leaves this host (a
# remote executor runs it locally, SECURITY.md)
LOCAL_ONLY_LABEL = "kata.local-only"
#: The mode of a step's workspace root (the directory it starts in) wherever it runs,
#: whatever the umask of the kata process or worker that made it (0700 under umask 077)
WORKSPACE_MODE = 0o755

# What a runtime returns for a step it killed on timeout: out of the 0-255 range of real
# exit statuses, like OOM_EXIT, so a step's own ``exit 124`` (GNU ``timeout``'s status) is
# never taken for kata's timeout. The realiser reports it as 124.
TIMEOUT_EXIT = 256 + 124
CANCEL_EXIT = 130  # what a runtime returns for a step it killed on cancellation
# what a runtime returns for a step that failed after the kernel's OOM killer killed a
# process of it (its memory limit was reached); out of the 0-255 range of real exit
# statuses, so no step can exit with it. The real status was 137 (SIGKILL).
OOM_EXIT = 256 + 137
# what a runtime returns for a step it killed because the filesystem of its writable
# layers fell below the host's disk reserve (kata.runtimes.diskguard); an ExitStatus whose
# ``note`` says which filesystem, how much the step held and the reserve. Out of range.
DISK_EXIT = 256 + 28  # ENOSPC


class ExitStatus(int):
    """An exit status (an int, as ``Runtime.run`` returns) with facts the runtime knows
    and the realiser cannot: ``memory``, the memory limit in bytes it applied to a step
    whose ``resources.memory`` was None (a remote worker's host default, not this
    host's); ``host``, the machine that ran it when not this one (a worker's name, which
    its realisation records). A plain int means this host and its
    ``kata.resources.effective`` limits."""

    memory: int | None
    host: str | None
    note: str | None  # why the runtime ended it, when it did (DISK_EXIT)

    def __new__(cls, status: int, *, memory: int | None = None,
                host: str | None = None, note: str | None = None) -> "ExitStatus":
        self = super().__new__(cls, status)
        self.memory, self.host, self.note = memory, host, note
        return self


class Runtime(Protocol):
    """What the realiser needs from a container runtime. One that sets a true class
    attribute ``gives_cache_paths`` gives ``StepSpec.cache_paths`` to the step's user
    itself, wherever it runs the step; for any other the realiser does, on the
    workspace, before ``run``."""

    def resolve_image(self, ref: str) -> str:
        """Resolve an image reference (tag or digest) to its manifest digest "sha256:…".

        Raises KataError(reason="image.not_found") when it cannot.
        """
        ...

    def run(self, spec: StepSpec, sink: OutputSink, cancel: threading.Event,
            service_sink: ServiceSink | None = None) -> int:
        """Run the step to completion and return its exit status.

        ``spec.services`` are started first and must become ready (else
        KataError ``service.exited`` / ``service.not_ready`` naming the service, with
        the last lines of its log); their output goes to ``service_sink``.

        Returns TIMEOUT_EXIT when killed on spec.timeout, CANCEL_EXIT when killed
        because ``cancel`` was set, DISK_EXIT (an ``ExitStatus`` with a ``note``) when
        killed to keep the host's disk reserve, OOM_EXIT when it failed after running out of memory
        (``spec.resources.memory``; an ``ExitStatus`` names the limit when it is not this
        host's default); 128+signal for other signal deaths. Every
        resource it created is released before it returns or raises.
        """
        ...


def user_ids(user: str | None) -> tuple[int, int] | None:
    """The (uid, gid) a ``user:`` value (``uid[:gid]``, gid defaulting to uid) runs as,
    None for root or no user: the files kata prepares for a step or service (its
    workspace's root, its secrets) are made theirs, or a non-root user could not write
    its workspace nor read its secrets. A value that is not numeric is None here: the
    runtime refuses it (``runtime.bad_user``)."""
    uid_s, _, gid_s = (user or "").partition(":")
    try:
        uid = int(uid_s)
        gid = int(gid_s) if gid_s else uid
    except ValueError:
        return None
    return None if uid < 0 or gid < 0 or (uid, gid) == (0, 0) else (uid, gid)


def give_cache_paths(root: Path, paths: "tuple[str, ...]", owner: tuple[int, int]) -> None:
    """Make the restored ``cache.paths`` under the workspace ``root`` the step's user's
    (``owner``: uid, gid) and writable by it, as its workspace's root is: they come back
    from the store as root's read-only files, which a step that is not root could neither
    update nor remove (npm ci deletes node_modules first). Called before the step starts,
    on the overlay (each entry is copied up) locally, on its materialised copy on a
    remote worker (``StepSpec.cache_paths``). Links are never followed: a path whose
    component is a symbolic link is left alone, and links below are re-owned themselves.
    Raises nothing for a path that does not exist (nothing was restored)."""
    for rel in paths:
        target = root
        for part in Path(rel.rstrip("/")).parts:
            target = target / part
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(st.st_mode):
                break
        else:
            if not target.is_dir():
                _give(target, owner)
                continue
            # iterative, not os.walk (which recurses on Python 3.11): a step saves cache
            # directories nested as deep as it likes
            todo = [str(target)]
            while todo:
                top = todo.pop()
                _give(Path(top), owner)
                with os.scandir(top) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            todo.append(entry.path)
                        else:
                            _give(Path(entry.path), owner)


def _give(path: Path, owner: tuple[int, int]) -> None:
    os.lchown(path, *owner)
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
