"""A real BuildGrid (the REAPI server) for the remote cache and execution tests.

    with buildgrid(tmp_path) as bg:                 # cache-only: disk CAS + LRU action cache
        bg.url                                       # "grpc://127.0.0.1:PORT"
        bg.bgd("cas", "download-dir", ...)           # BuildGrid's own CLI, pointed at it
        bg.kill()                                    # SIGKILL (a remote that dies mid-run)

BuildGrid lives in its own virtualenv (``.ci/install-buildgrid``; ``$KATA_BUILDGRID_VENV``
overrides /opt/kata-ci/buildgrid) so its dependencies never touch kata's pinned grpcio.
``BuildGridConfig`` renders the YAML; the execution helper extends it (services, a
PostgreSQL scheduler) through ``extra_services``/``connections``/``schedulers``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

VENV = Path(os.environ.get("KATA_BUILDGRID_VENV", "/opt/kata-ci/buildgrid"))
BGD = VENV / "bin" / "bgd"
_MISSING = f"BuildGrid is missing ({BGD}): run `bash .ci/install-buildgrid` as root"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(kw_only=True)
class BuildGridConfig:
    """What the server serves. Strings are raw YAML lines (indented by the renderer).

    instance: the REAPI instance name ("" is the default instance).
    connections/schedulers: top-level YAML list items (e.g. ``!sql-connection``).
    extra_services: more per-instance services (e.g. ``!execution``), as YAML list items.
    The rendered file names the disk CAS ``&cas`` and the action cache ``&ac``: extra items
    refer to them as ``*cas`` and ``*ac`` (a ``!sql-scheduler`` needs both).
    """

    instance: str = ""
    max_cached_refs: int = 100_000
    connections: list[str] = field(default_factory=list)
    schedulers: list[str] = field(default_factory=list)
    extra_services: list[str] = field(default_factory=list)
    tls_key: Path | None = None
    tls_cert: Path | None = None
    auth_secret: Path | None = None  # HS256 JWT secret: clients must send a bearer token
    # the CAS: YAML list items for ``storages:`` (the one clients use anchored ``&cas``);
    # None: a plain ``!disk-storage`` under workdir/cas
    storages: list[str] | None = None
    thread_pool_size: int | None = None

    def render(self, workdir: Path, port: int) -> str:
        def block(items: list[str], indent: str) -> str:
            return "".join(indent + line + "\n" for item in items for line in item.splitlines())

        channel = f'  - !channel\n    address: "127.0.0.1:{port}"\n'
        if self.tls_key is not None:
            channel += (f"    insecure-mode: false\n    credentials:\n"
                        f"      tls-server-key: {self.tls_key}\n"
                        f"      tls-server-cert: {self.tls_cert}\n")
        else:
            channel += "    insecure-mode: true\n"
        text = f"server:\n{channel}"
        if self.auth_secret is not None:
            text += (f"authorization:\n  method: jwt\n  secret: {self.auth_secret}\n"
                     f"  algorithm: hs256\n")
        if self.connections:
            text += "connections:\n" + block(self.connections, "  ")
        if self.thread_pool_size is not None:
            text += f"thread-pool-size: {self.thread_pool_size}\n"
        storages = self.storages or [f"!disk-storage &cas\n  path: {workdir / 'cas'}"]
        text += "storages:\n" + block([f"- {item}" for item in storages], "  ")
        text += f"""\
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: {self.max_cached_refs}
    allow-updates: true
    cache-failed-actions: true
"""
        if self.schedulers:
            text += "schedulers:\n" + block(self.schedulers, "  ")
        text += f"""\
instances:
  - name: "{self.instance}"
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
"""
        text += block(self.extra_services, "      ")
        return text


def memory_cas(size: str = "2G") -> list[str]:
    """``BuildGridConfig.storages`` for the CAS docs/remote.md recommends for a cache-only
    server: BuildGrid's in-memory LRU storage (as volatile as its ``!lru-action-cache``)."""
    return [f"!lru-storage &cas\n  size: {size}"]


class BuildGrid:
    """One ``bgd server start`` process on 127.0.0.1:<free port>, config and CAS in workdir."""

    def __init__(self, workdir: Path, config: BuildGridConfig | None = None) -> None:
        if not BGD.exists():
            raise RuntimeError(_MISSING)
        self.workdir = workdir
        self.config = config or BuildGridConfig()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        scheme = "grpcs" if self.config.tls_key is not None else "grpc"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "bgd.log"

    def start(self, timeout: float = 60) -> None:
        """Start the server (on the same port when restarted) and wait for Capabilities."""
        if not self.port:
            self.port = _free_port()
        cfg = self.workdir / "bgd.yml"
        cfg.write_text(self.config.render(self.workdir, self.port))
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([str(BGD), "server", "start", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._capabilities_answer():
            if self.proc.poll() is not None:
                raise RuntimeError(f"bgd server exited {self.proc.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bgd server did not answer Capabilities in {timeout}s:\n"
                                   f"{self._tail()}")
            time.sleep(0.2)

    def _capabilities_answer(self) -> bool:
        import grpc

        from kata.remote._api.build.bazel.remote.execution.v2 import (
            remote_execution_pb2 as re_pb2, remote_execution_pb2_grpc as re_grpc)

        if self.config.tls_key is not None:
            creds = grpc.ssl_channel_credentials(self.config.tls_cert.read_bytes())
            channel = grpc.secure_channel(f"127.0.0.1:{self.port}", creds,
                                          options=[("grpc.ssl_target_name_override", "localhost")])
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        with channel:
            try:
                re_grpc.CapabilitiesStub(channel).GetCapabilities(
                    re_pb2.GetCapabilitiesRequest(instance_name=self.config.instance), timeout=2)
                return True
            except grpc.RpcError as err:
                # an auth-protected server answering "unauthenticated" is up
                return err.code() == grpc.StatusCode.UNAUTHENTICATED

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def pause(self) -> None:
        """SIGSTOP the server's process group: a *hung* remote (the kernel still accepts
        connections and takes bytes; nothing answers). ``resume()`` or ``stop()`` ends it."""
        assert self.proc is not None and self.proc.poll() is None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent (a paused server is resumed first)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a remote that dies mid-run)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def bgd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run BuildGrid's CLI (``bgd cas ...``, ``bgd actioncache ...``) against this server."""
        scheme = "https" if self.config.tls_key is not None else "http"
        group, *rest = args
        cmd = [str(BGD), group, "--remote", f"{scheme}://127.0.0.1:{self.port}",
               "--instance-name", self.config.instance]
        if self.config.tls_key is not None:
            cmd += ["--server-cert", str(self.config.tls_cert)]
        return subprocess.run([*cmd, *rest], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


@contextmanager
def buildgrid(workdir: Path, config: BuildGridConfig | None = None) -> Iterator[BuildGrid]:
    """Start BuildGrid (cache-only unless ``config`` adds services); stop it on exit."""
    server = BuildGrid(workdir, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
