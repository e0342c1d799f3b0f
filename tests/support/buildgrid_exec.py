"""BuildGrid with execution (its SQL scheduler on PostgreSQL) for the remote execution tests.

    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(tmp_path, db, logstream=logs) as bg:
        bg.url          # "grpc://127.0.0.1:PORT": Execution, Bots, Operations, CAS, AC
        bg.stop(); bg.start()   # a scheduler restart on the same port and database
        logs            # "grpc://127.0.0.1:PORT": `kata logstream`, the Log Stream API

``bgd migrate apply`` creates the schema, then ``support.buildgrid.BuildGrid`` starts the
cache-only config extended with ``!sql-connection``, ``!sql-scheduler`` and ``!execution``
(which serves Execution, Operations and the Bots service). The config is the one
docs/remote.md gives a team, with the test's timings: bots that stop answering are given
up after ``keepalive`` seconds and their leases re-queued (the SIGKILLed-worker test).
With ``logstream``, the scheduler creates a stdout and a stderr log stream there for
each job it assigns (its ``logstream:`` option; BuildGrid 0.4 serves none itself, so the
tests run a real ``kata logstream`` process, as docs/remote.md tells a team to).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kata.executor.action import WILDCARD_KEYS

from .buildgrid import BGD, BuildGrid, BuildGridConfig
from .cli import ROOT
from .registry import free_port


class ExecutionConfig(BuildGridConfig):
    """``BuildGridConfig`` with a gRPC thread pool of ``threads``: BuildGrid caps concurrent
    RPCs at its pool size (default 5 per CPU), and every open Execute stream and every
    bot's long poll holds one for its whole life."""

    threads: int = 64

    def render(self, workdir: Path, port: int) -> str:
        return f"thread-pool-size: {self.threads}\n" + super().render(workdir, port)


def execution_config(db_url: str, *, keepalive: int = 8,
                     logstream: str | None = None) -> BuildGridConfig:
    """Cache services plus a PostgreSQL scheduler and Execution for the "" instance;
    ``logstream`` (grpc://HOST:PORT): where the scheduler creates its jobs' log streams."""
    keys = "".join(f"\n      - {k}" for k in WILDCARD_KEYS)
    streams = ""
    if logstream is not None:
        streams = f"\n  logstream:\n    url: http://{logstream.removeprefix('grpc://')}"
    return ExecutionConfig(
        connections=[f"""\
- !sql-connection &sql
  connection-string: {db_url}
  pool-size: 10
  max-overflow: 20"""],
        schedulers=[f"""\
- !sql-scheduler &scheduler
  sql: *sql
  storage: *cas
  action-cache: *ac
  bot-session-keepalive-timeout: {keepalive}
  session-expiry-timer-interval: 1
  poll-interval: 0.1
  bot-poll-interval: 0.1
  assigners:
    - !priority-age-assigner
      interval: 0.005
      jitter-factor: 0.002
      failure-backoff: 0.1
  property-set: !dynamic-property-set
    wildcard-property-keys:{keys}{streams}"""],
        extra_services=["""\
- !execution
  scheduler: *scheduler
  operation-stream-keepalive-timeout: 5"""],
    )


@contextmanager
def kata_logstream(timeout: float = 60) -> Iterator[str]:
    """A ``kata logstream`` process on a free loopback port; yields its grpc:// URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kata", "logstream", "--listen",
                             f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + timeout
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if b"serving on port" not in line or time.monotonic() > deadline:
            raise RuntimeError(f"kata logstream did not start: {line!r}")
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def buildgrid_execution(workdir: Path, db_url: str, *, keepalive: int = 8,
                        logstream: str | None = None) -> Iterator[BuildGrid]:
    """Migrate ``db_url``'s schema, start BuildGrid with execution; stop it on exit."""
    if not BGD.exists():
        raise RuntimeError(f"BuildGrid is missing ({BGD}): run `bash .ci/install-buildgrid`")
    done = subprocess.run([str(BGD), "migrate", "apply", db_url], capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"bgd migrate apply failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-3000:]}")
    server = BuildGrid(workdir, execution_config(db_url, keepalive=keepalive,
                                                 logstream=logstream))
    server.start()
    try:
        yield server
    finally:
        server.stop()
