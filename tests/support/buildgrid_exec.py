"""BuildGrid with execution (its SQL scheduler on PostgreSQL) for the remote execution tests.

    with postgres_cluster() as db, buildgrid_execution(tmp_path, db) as bg:
        bg.url          # "grpc://127.0.0.1:PORT": Execution, Bots, Operations, CAS, AC
        bg.stop(); bg.start()   # a scheduler restart on the same port and database

``bgd migrate apply`` creates the schema, then ``support.buildgrid.BuildGrid`` starts the
cache-only config extended with ``!sql-connection``, ``!sql-scheduler`` and ``!execution``
(which serves Execution, Operations and the Bots service). The config is the one
docs/remote.md gives a team, with the test's timings: bots that stop answering are given
up after ``keepalive`` seconds and their leases re-queued (the SIGKILLed-worker test).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kata.executor.action import WILDCARD_KEYS

from .buildgrid import BGD, BuildGrid, BuildGridConfig


class ExecutionConfig(BuildGridConfig):
    """``BuildGridConfig`` with a gRPC thread pool of ``threads``: BuildGrid caps concurrent
    RPCs at its pool size (default 5 per CPU), and every open Execute stream and every
    bot's long poll holds one for its whole life."""

    threads: int = 64

    def render(self, workdir: Path, port: int) -> str:
        return f"thread-pool-size: {self.threads}\n" + super().render(workdir, port)


def execution_config(db_url: str, *, keepalive: int = 8) -> BuildGridConfig:
    """Cache services plus a PostgreSQL scheduler and Execution for the "" instance."""
    keys = "".join(f"\n      - {k}" for k in WILDCARD_KEYS)
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
      interval: 0.02
      jitter-factor: 0.01
      failure-backoff: 0.1
  property-set: !dynamic-property-set
    wildcard-property-keys:{keys}"""],
        extra_services=["""\
- !execution
  scheduler: *scheduler
  operation-stream-keepalive-timeout: 5"""],
    )


@contextmanager
def buildgrid_execution(workdir: Path, db_url: str, *, keepalive: int = 8,
                        ) -> Iterator[BuildGrid]:
    """Migrate ``db_url``'s schema, start BuildGrid with execution; stop it on exit."""
    if not BGD.exists():
        raise RuntimeError(f"BuildGrid is missing ({BGD}): run `bash .ci/install-buildgrid`")
    done = subprocess.run([str(BGD), "migrate", "apply", db_url], capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"bgd migrate apply failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-3000:]}")
    server = BuildGrid(workdir, execution_config(db_url, keepalive=keepalive))
    server.start()
    try:
        yield server
    finally:
        server.stop()
