"""A step with services: a pod of containers sharing one network namespace.

Sequence: one netns for the pod (mode "default": the step's CNI netns; "none": a
fresh loopback-only netns; "host": the host's) and an /etc/hosts mapping every
service's name (and the step's hostname) to 127.0.0.1 → each service started →
each waited for until ready (a TCP connect or HTTP GET made *inside* the pod's
netns by a helper thread that ``setns``-es into it, or a command exec'd in the
service container) → the step → the services stopped (SIGTERM, grace, SIGKILL,
all at once) → everything released, in reverse order, on every path.
"""

from __future__ import annotations

import collections
import ctypes
import http.client
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from google.protobuf import any_pb2

from kata.errors import KataError
from kata.resources import effective, format_size

from ..base import CANCEL_EXIT, DISK_EXIT, Readiness, ServiceSink, ServiceSpec, StepSpec, Stream
from .cleanup import Cleanup
from .client import ContainerdError, grpc, tasks_pb2
from .sandbox import oom_killed
from .spec import cgroup_path, hosts_text, parse_user
from .task import PodNet, StepRun, TaskOptions

if TYPE_CHECKING:
    from .client import Client
    from .images import RunImage

CLONE_NEWNET = 0x40000000
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
TAIL_LINES = 20  # how much of a failed service's log its error message quotes
ERR_TAIL_LINES = 10  # stderr's last lines are always shown with a failure
PROBE_TIMEOUT = 1.0  # seconds, one TCP/HTTP attempt
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(netns: str | None, fn: Callable[[], bool]) -> bool:
    """Run ``fn`` in a fresh thread that first joins network namespace ``netns``.

    Namespaces are per thread: the sockets ``fn`` opens live in the pod, and the
    thread (the only one ever in it) ends with ``fn``. None: the current netns.
    """
    result: list[object] = []

    def body() -> None:
        if netns is not None:
            try:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                finally:
                    os.close(fd)
            except OSError as err:
                result.append(KataError("runtime.network_failed",
                                        f"cannot join network namespace {netns}: {err}",
                                        obj=netns, exit_code=1))
                return
        try:
            result.append(fn())
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            result.append(err)

    t = threading.Thread(target=body, name="kata-probe", daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0] is True


def tcp_probe(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def listening_tcp_ports(*tables: str) -> list[int]:
    """The local ports in LISTEN state (``0A``) of ``/proc/net/tcp``-format ``tables``
    (tcp, tcp6: a header line, then ``sl local_address(hex addr:hex port) rem st ...``),
    sorted, each once. proc(5), "/proc/net/tcp"."""
    ports: set[int] = set()
    for table in tables:
        for row in table.splitlines()[1:]:
            cols = row.split()
            if len(cols) > 3 and cols[3] == "0A":
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return sorted(ports)


def pod_listening_ports(netns: str | None) -> list[int] | None:
    """The TCP ports something listens on in network namespace ``netns`` (read from
    /proc/thread-self/net in a thread that joined it), or None when they cannot be read."""
    found: list[list[int]] = []

    def read() -> bool:
        tables = []
        for name in ("tcp", "tcp6"):
            try:
                with open(f"/proc/thread-self/net/{name}") as f:
                    tables.append(f.read())
            except OSError:
                pass  # no IPv6 in the kernel
        found.append(listening_tcp_ports(*tables))
        return True

    try:
        in_netns(netns, read)
    except KataError:
        return None
    return found[0] if found else None


def http_probe(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        # every name in the pod is 127.0.0.1 (localhost, the services, the step's hostname)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port out of range: never ready
        return False
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    kw = {}
    if parts.scheme == "https":
        import ssl

        kw["context"] = ssl._create_unverified_context()  # noqa: S323 - readiness, not trust
    conn = cls("127.0.0.1", port, timeout=PROBE_TIMEOUT, **kw)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers={"Host": parts.netloc or "localhost"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def default_readiness(service: ServiceSpec, image: RunImage) -> Readiness | None:
    """The declared readiness, else the image's first exposed TCP port, else None."""
    if service.ready is not None:
        return service.ready
    for entry in image.exposed_ports:
        port, _, proto = entry.partition("/")
        if (proto or "tcp") == "tcp" and port.isdigit():
            return Readiness(kind="tcp", target=port)
    return None


class ServiceRun(StepRun):
    """One service container of a pod: started, probed, stopped."""

    def __init__(self, client: Client, options: TaskOptions, service: ServiceSpec,
                 image: RunImage, sink: ServiceSink | None, cancel: threading.Event,
                 pod: PodNet, labels: dict[str, str], network: str) -> None:
        self.service = service
        # The last lines of the log, and apart from them the last lines of stderr: the two
        # streams are copied independently, so an error written to stderr just before the
        # exit can arrive before stdout's last lines and would fall out of a single tail.
        self.tail: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=TAIL_LINES)
        self.err_tail: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=ERR_TAIL_LINES)
        self._seq = 0
        self._tail_lock = threading.Lock()
        user = service.user or (image.user if _numeric(image.user) else "0:0")
        _give(service.owned, parse_user(user))
        argv = service.argv or (*image.entrypoint, *image.cmd)
        if not argv:
            raise KataError("service.no_command", f"service {service.name}: its image has no "
                            "Entrypoint or Cmd and the service declares no command",
                            obj=service.name)
        step = StepSpec(image=service.image, argv=tuple(argv), env=service.env,
                        workdir=service.workdir, user=user, mounts=service.mounts,
                        network=network, hostname=service.name, resources=service.resources,
                        labels={**labels, "kata.service": service.name})

        def out(stream: Stream, line: bytes) -> None:
            with self._tail_lock:
                self._seq += 1
                self.tail.append((self._seq, line))
                if stream == "stderr":
                    self.err_tail.append((self._seq, line))
            if sink is not None:
                sink(service.name, stream, line)

        super().__init__(client, options, step, image, out, cancel, pod=pod, prefix="kata-svc")
        self.what = f"service {service.name}"
        self.readiness = default_readiness(service, image)
        self.started_at = 0.0

    def launch(self, cleanup: Cleanup) -> None:
        super().launch(cleanup)
        self.started_at = time.monotonic()

    # -- readiness ----------------------------------------------------------------
    def wait_ready(self) -> int | None:
        """Return None once ready, CANCEL_EXIT when cancelled, DISK_EXIT when the disk
        guard tripped the step; raise if it exits or times out."""
        r = self.readiness
        if r is None:
            if self.exited.is_set():
                self._failed("service.exited", "exited before the step started")
            return None
        deadline = self.started_at + r.timeout
        delay = 0.01  # most servers listen within milliseconds: back off up to r.interval
        while True:
            if self.cancel.is_set():
                return CANCEL_EXIT
            if self.options.disk is not None and self.options.disk.tripped is not None:
                return DISK_EXIT  # filling the disk while it starts
            if self.exited.is_set():
                self._failed("service.exited", "exited before it was ready")
            if self._probe(r):
                if self.exited.is_set():  # answered by something else on its way out
                    self._failed("service.exited", "exited before it was ready")
                return None
            if time.monotonic() >= deadline:
                self._failed("service.not_ready",
                             f"was not ready after {r.timeout:g}s ({r.kind} {r.target}"
                             f"{self._listening() if r.kind in ('tcp', 'http') else ''})")
            self.exited.wait(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, r.interval)

    def _listening(self) -> str:
        """``; the pod listens on tcp 6379`` (a ready port with a typo), or that nothing
        does (a server still starting, or listening on a unix socket only)."""
        assert self.pod is not None
        if self.pod.netns is None:  # network: host: the host's ports are no hint
            return ""
        ports = pod_listening_ports(self.pod.netns)
        if ports is None:
            return ""
        if not ports:
            return "; nothing in the pod listens on TCP"
        return "; the pod listens on tcp " + ", ".join(map(str, ports))

    def _probe(self, r: Readiness) -> bool:
        assert self.pod is not None
        if r.kind == "tcp":
            port = int(r.target)
            return in_netns(self.pod.netns, lambda: tcp_probe(port))
        if r.kind == "http":
            return in_netns(self.pod.netns, lambda: http_probe(r.target))
        return self._exec_probe(r.target)

    def _exec_probe(self, command: str) -> bool:
        """Run ``/bin/sh -c command`` in the service container; True if it exits 0."""
        c, cid = self.c, self.id
        assert self.spec is not None
        process = dict(self.spec["process"])
        process["args"] = ["/bin/sh", "-c", command]
        exec_id = f"ready-{os.urandom(4).hex()}"
        try:
            c.call(c.tasks.Exec, tasks_pb2.ExecProcessRequest(
                container_id=cid, exec_id=exec_id,
                spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=_json(process))),
                f"exec readiness probe in {cid}")
        except ContainerdError:
            return False  # the task is going away: the exit check reports it
        try:
            wait = c.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id),
                                       metadata=c.metadata())
            c.call(c.tasks.Start, tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id),
                   f"start readiness probe in {cid}")
            timeout = max(PROBE_TIMEOUT, self.readiness.timeout if self.readiness else 0)
            try:
                status = wait.result(timeout=timeout).exit_status
            except grpc.FutureTimeoutError:
                self._kill_exec(exec_id)
                wait.result(timeout=30)
                return False
            return status == 0
        except (ContainerdError, grpc.RpcError):
            return False
        finally:
            try:
                c.call(c.tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
                    container_id=cid, exec_id=exec_id), f"delete readiness probe in {cid}")
            except ContainerdError as err:
                if err.code not in (grpc.StatusCode.NOT_FOUND,):
                    self._kill_exec(exec_id)
                    try:
                        c.call(c.tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
                            container_id=cid, exec_id=exec_id), f"delete probe in {cid}")
                    except ContainerdError:
                        pass  # deleted with the task

    def _kill_exec(self, exec_id: str) -> None:
        try:
            self.c.call(self.c.tasks.Kill, tasks_pb2.KillRequest(
                container_id=self.id, exec_id=exec_id, signal=signal.SIGKILL), "kill probe")
        except ContainerdError:
            pass

    def _failed(self, reason: str, what: str) -> None:
        status = ""
        if self.exited.is_set():
            try:
                code = self._exit_status()
                status = f" (exit status {code})"
                if code != 0 and oom_killed(cgroup_path(self.id)):  # before the task goes
                    limit = format_size(effective(self.service.resources).memory or 0)
                    status = f" (out of memory: limit {limit})"
            except KataError:
                status = ""
        self._teardown_task()  # its output is complete once its task is deleted
        with self._tail_lock:
            tail = [line.decode(errors="replace")
                    for _, line in sorted(set(self.tail) | set(self.err_tail))]
        log = ("; its last log lines:\n" + "\n".join(f"  {x}" for x in tail)) if tail else \
            "; it wrote no log"
        raise KataError(reason, f"service {self.service.name} {what}{status}{log}",
                        obj=self.service.name, exit_code=1)

    # -- stopping -----------------------------------------------------------------
    def stop_signal(self) -> None:
        if not self.task_gone and not self.exited.is_set():
            self._kill(signal.SIGTERM)


def run_pod(client: Client, options: TaskOptions, step: StepSpec, image: RunImage,
            service_images: list[RunImage], sink, service_sink: ServiceSink | None,  # noqa: ANN001
            cancel: threading.Event) -> int:
    network = options.network
    with Cleanup() as cleanup:
        pod_id = f"kata-pod-{os.urandom(8).hex()}"
        pod_dir = options.fifo_root / client.owner / pod_id
        pod_dir.mkdir(parents=True, mode=0o700)
        cleanup.push("remove pod dir", lambda: _rmtree(pod_dir))
        hosts = pod_dir / "hosts"
        hosts.write_text(hosts_text((step.hostname, *(s.name for s in step.services))))
        os.chmod(pod_dir, 0o755)
        hosts.chmod(0o644)
        if step.network == "host":
            pod = PodNet(netns=None, hosts_file=str(hosts))
        elif step.network == "default" and network is not None:
            cleanup.push("tear down network", lambda: network.teardown(pod_id))
            pod = PodNet(netns=network.setup(pod_id, client.owner), hosts_file=str(hosts))
        else:
            if network is None:
                raise KataError("runtime.network_failed", "a pod needs a network manager",
                                exit_code=1)
            cleanup.push("tear down network", lambda: network.teardown(pod_id))
            pod = PodNet(netns=network.setup_loopback(pod_id, client.owner),
                         hosts_file=str(hosts), resolv=False)
        runs: list[ServiceRun] = []
        labels = dict(step.labels)
        for service, simage in zip(step.services, service_images):
            run = ServiceRun(client, options, service, simage, service_sink, cancel, pod, labels,
                             step.network)
            runs.append(run)
        # on a failure each service's own cleanup kills (SIGKILL) and deletes it
        for run in runs:
            run.launch(cleanup)
        for run in runs:
            if (why := run.wait_ready()) is not None:
                return why
        status = StepRun(client, options, step, image, sink, cancel, pod=pod).execute()
        gone = [r for r in runs if r.exited.is_set()]  # died while the step ran
        _stop_all(runs, options)  # SIGTERM all at once, one grace, SIGKILL
        for run in gone:  # said at the end of its log, after all it wrote
            run.sink("stderr", f"kata: service {run.service.name} exited while the step ran "
                     f"(exit status {run._exit_status()})".encode())
        # a service's sink error (a full disk) fails the step like the step's own would
        for run in runs:
            for reader in run.readers:
                if reader.error is not None:
                    raise reader.error
        return status
    raise AssertionError("unreachable")  # pragma: no cover


def _stop_all(runs: list[ServiceRun], options: TaskOptions) -> None:
    live = [r for r in runs if not r.task_gone]
    for r in live:
        r.stop_signal()
    deadline = time.monotonic() + options.stop_grace
    for r in live:
        options.grace(r.exited, max(0.0, deadline - time.monotonic()))
    errors = []
    for r in live:
        try:
            r._teardown_task()  # SIGKILL if still alive, delete, output complete
        except KataError as err:
            errors.append(err)
    if errors:
        raise errors[0]


def _give(paths: tuple[str, ...], owner: tuple[int, int]) -> None:
    """Make each directory of ``paths`` and the files in it ``owner``'s (uid, gid); root's
    stay as they are. Modes are kept (a secret stays 0400, readable by its owner only)."""
    if owner == (0, 0):
        return
    for path in paths:
        for entry in os.scandir(path):
            os.chown(entry.path, *owner, follow_symlinks=False)
        os.chown(path, *owner)


def _numeric(user: str) -> bool:
    try:
        parse_user(user)
        return bool(user)
    except KataError:
        return False


def _json(obj: object) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


def _rmtree(path) -> None:  # noqa: ANN001
    import shutil

    shutil.rmtree(path, ignore_errors=True)

