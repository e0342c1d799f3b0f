"""The gRPC channel to containerd: stubs, namespace/lease metadata, error wrapping.

One ``Client`` (one channel) is shared by every thread of a kata process; grpc
channels are thread-safe. Every call carries ``containerd-namespace: kata``
and, inside a lease, ``containerd-lease``. gRPC errors become ``ContainerdError``
(a KataError that keeps the status code for the adapter's own decisions).
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kata.errors import KataError
from procs import owner_id

from .cleanup import Cleanup

try:
    import grpc

    from ._api.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
    from ._api.api.services.content.v1 import content_pb2, content_pb2_grpc
    from ._api.api.services.diff.v1 import diff_pb2, diff_pb2_grpc
    from ._api.api.services.images.v1 import images_pb2, images_pb2_grpc
    from ._api.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
    from ._api.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
    from ._api.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
    from ._api.api.services.version.v1 import version_pb2_grpc
    from ._api.api.types import descriptor_pb2, mount_pb2
except ImportError as _err:  # pragma: no cover - depends on the install
    raise KataError(
        "runtime.stubs_missing",
        "the containerd API stubs are not generated; run "
        "`python3 -m kata.runtimes.containerd.protogen` (needs the Debian package "
        f"golang-github-containerd-containerd-dev and grpcio-tools) ({_err})",
        exit_code=1,
    ) from _err

NAMESPACE = "kata"
SNAPSHOTTER = "overlayfs"
OWNER_LABEL = "kata.owner"
LEASE_TTL = _dt.timedelta(hours=6)  # safety net: containerd's gc drops a forgotten lease

__all__ = [
    "Client", "ContainerdError", "NAMESPACE", "SNAPSHOTTER", "OWNER_LABEL", "containers_pb2", "content_pb2", "diff_pb2", "images_pb2", "leases_pb2",
    "snapshots_pb2", "tasks_pb2", "descriptor_pb2", "mount_pb2", "grpc",
]


class ContainerdError(KataError):
    """A containerd call failed; ``code`` is the gRPC status code."""

    def __init__(self, reason: str, message: str, *, code: Any = None, obj: str | None = None):
        super().__init__(reason, message, obj=obj, exit_code=1)
        self.code = code


_CODES = {
    "NOT_FOUND": "runtime.not_found",
    "ALREADY_EXISTS": "runtime.already_exists",
    "UNAVAILABLE": "runtime.unavailable",
    "FAILED_PRECONDITION": "runtime.failed_precondition",
    "DEADLINE_EXCEEDED": "runtime.timeout",
}


def wrap(err: grpc.RpcError, what: str) -> ContainerdError:
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if hasattr(err, "details") else str(err)
    if name == "UNAVAILABLE":  # gRPC's words for a containerd that went away, shortened
        for said, means in (("Connection refused", "connection refused"),
                            ("No such file", "no socket"), ("Socket closed", "socket closed"),
                            ("Broken pipe", "connection lost"),
                            ("Stream removed", "connection lost")):
            if said in details:
                details = f"containerd is not answering ({means})"
                break
    fix = ""
    if "setrlimit" in details and "not permitted" in details:
        # crun under a shim holding less than the spec asks (spec.task_rlimits cuts the
        # spec to the daemon's limits when it can read them: not here)
        fix = ("; containerd's (and so its shims') hard limit is below the step's: raise "
               "it, e.g. LimitNOFILE=infinity in containerd's systemd unit (systemctl edit "
               "containerd; systemctl restart containerd); `kata doctor` checks it")
    return ContainerdError(_CODES.get(name, "runtime.error"),
                           f"containerd: {what}: {details} ({name.lower()}){fix}", code=code,
                           obj=what)


_STRAY = re.compile(r"failed to rename: rename (\S+)/new-\d+ (\S+)/(\d+): file exists")


def _stray_snapshot(message: str, snapshot_dirs: tuple[str, ...]) -> str | None:
    """The directory a prepare failed to rename onto ("file exists") when it is an
    overlay snapshot id under one of ``snapshot_dirs``; else None."""
    m = _STRAY.search(message)
    if m is None or m.group(1) != m.group(2) or m.group(1) not in snapshot_dirs:
        return None
    return f"{m.group(2)}/{m.group(3)}"


# what a call gets from an address nothing answers at (refused, no socket, no answer)
_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.FAILED_PRECONDITION)


def _why_unreachable(address: str, code: Any) -> str:
    """Why a unix socket address does not answer, in words."""
    import os
    import stat

    path = address.removeprefix("unix://")
    if "://" not in path:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return "no such socket (containerd is not running there)"
        except PermissionError:
            return "permission denied (run as root, or as a user allowed to use the socket)"
        except OSError as err:
            return err.strerror or str(err)
        if not stat.S_ISSOCK(mode):
            return "that path is not a socket"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "the socket exists but containerd did not answer in time"
        return "the socket exists but nothing accepts connections (containerd stopped)"
    return "no answer"


class Client:
    """Stubs for containerd's services over one channel, in kata's namespace."""

    def __init__(self, address: str, namespace: str = NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace
        target = address if "://" in address else f"unix://{address}"
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ])
        ch = self.channel
        self.containers = containers_pb2_grpc.ContainersStub(ch)
        self.content = content_pb2_grpc.ContentStub(ch)
        self.diff = diff_pb2_grpc.DiffStub(ch)
        self.images = images_pb2_grpc.ImagesStub(ch)
        self.leases = leases_pb2_grpc.LeasesStub(ch)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
        self.tasks = tasks_pb2_grpc.TasksStub(ch)
        self.version = version_pb2_grpc.VersionStub(ch)
        self.owner = owner_id()
        # overlay snapshot directories of daemons kata owns (ContainerdRuntime.connect):
        # where prepare may remove what a killed daemon left half-made
        self.snapshot_dirs: tuple[str, ...] = ()

    def close(self) -> None:
        self.channel.close()

    def metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        md = (("containerd-namespace", self.namespace),)
        return md + ((("containerd-lease", lease),) if lease else ())

    def call(self, method: Callable[..., Any], request: Any, what: str, *,
             lease: str | None = None, timeout: float | None = 60.0) -> Any:
        """One unary call; a gRPC error becomes a ContainerdError naming ``what``."""
        try:
            return method(request, metadata=self.metadata(lease), timeout=timeout)
        except grpc.RpcError as err:
            raise wrap(err, what) from None

    def make_snapshot(self, method: Callable[..., Any], request: Any, what: str, *,
                      lease: str | None = None) -> Any:
        """Snapshots.Prepare or View (``method``), as ``call``; a directory a killed daemon
        left at the id this snapshot takes is removed and the call made again. An overlay
        snapshot is made in a temporary directory renamed to its id before the metadata
        commits that id: a daemon killed (SIGKILL, OOM, a reboot) in between leaves
        ``snapshots/N`` its metadata never knew, and every later prepare takes N again and
        fails ("failed to rename: ... file exists"). N is never a snapshot's (the id
        sequence only grows), so the directory is removed when it lies under
        ``snapshot_dirs`` (daemons kata owns). Containerd 1.6's Snapshots.Cleanup is not
        implemented for overlayfs, so it cannot do this."""
        for _ in range(8):  # several prepares were in flight when the daemon died
            try:
                return self.call(method, request, what, lease=lease)
            except ContainerdError as err:
                stray = _stray_snapshot(err.message, self.snapshot_dirs)
                if stray is None:
                    raise
                from procs.leftovers import force_rmtree

                force_rmtree(stray)
        return self.call(method, request, what, lease=lease)

    def ping(self, timeout: float = 5.0) -> str:
        """containerd's version; KataError runtime.unreachable (exit 2) when nothing answers
        at the address, saying why in words (no socket, refused, not answering) and what
        to do, instead of gRPC's status text."""
        from google.protobuf import empty_pb2

        try:
            return self.version.Version(empty_pb2.Empty(), timeout=timeout).version
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code not in _AWAY:
                raise wrap(err, f"connect to {self.address}") from None
            raise KataError("runtime.unreachable", f"cannot reach containerd at {self.address}: "
                            f"{_why_unreachable(self.address, code)}. Start containerd "
                            "(`systemctl start containerd`), or pass --containerd ADDRESS "
                            "(KATA_CONTAINERD_ADDRESS) of a running one, or give neither and "
                            "kata starts its own", obj=self.address) from None

    def went_away(self, timeout: float = 2.0, *, passed: bool = False) -> KataError | None:
        """After calls failed: KataError runtime.unreachable (exit 2, as at connect) when
        containerd no longer answers at this address (killed, stopped, its socket gone),
        saying so and what to do; None when it answers (the failures were something
        else). One Version call, at most ``timeout`` seconds. ``passed``: every step of
        the run passed (direct steps need containerd only to start), and the words say
        so rather than that the running steps failed."""
        from google.protobuf import empty_pb2

        try:
            self.version.Version(empty_pb2.Empty(), timeout=timeout)
            return None
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code not in _AWAY:
                return None
        except ValueError:  # this channel was closed: nothing to say about containerd
            return None
        start = ("Start it again (kata's own containerd starts with the next `kata run`, "
                 "`kata daemon status` shows it; the system's: `systemctl start containerd`)")
        said = (f"Every step passed; what the run left in it is swept by the next run. {start} "
                "before the next run") if passed else \
            f"The steps it was running failed and what they left is swept by the next run. " \
            f"{start}, then run again"
        return KataError("runtime.unreachable", f"containerd at {self.address} stopped "
                         f"answering during the run: {_why_unreachable(self.address, code)}. "
                         f"{said}", obj=self.address)

    def owner_labels(self) -> dict[str, str]:
        return {OWNER_LABEL: self.owner}

    @contextmanager
    def lease(self, purpose: str, *, sync_delete: bool = False) -> Iterator[str]:
        """A lease around an operation: what it creates survives gc until it is deleted."""
        lease_id = f"kata-{purpose}-{secrets.token_hex(8)}"
        expire = (_dt.datetime.now(_dt.timezone.utc) + LEASE_TTL).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = {"containerd.io/gc.expire": expire, **self.owner_labels()}
        self.call(self.leases.Create, leases_pb2.CreateRequest(id=lease_id, labels=labels),
                  "create lease")
        with Cleanup() as cleanup:
            cleanup.push(f"delete lease {lease_id}", lambda: self.call(
                self.leases.Delete, leases_pb2.DeleteRequest(id=lease_id, sync=sync_delete),
                f"delete lease {lease_id}"))
            yield lease_id
