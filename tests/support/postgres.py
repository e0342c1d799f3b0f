"""A throwaway PostgreSQL 15 cluster for BuildGrid's scheduler (issue 13).

    with postgres_cluster() as url:   # "postgresql+psycopg2://kata@127.0.0.1:PORT/buildgrid"
        url.crash(); url.start()      # pg_ctl stop -m immediate (as a SIGKILLed server
                                      # leaves it: recovery at the next start), then start

Debian's ``postgresql`` package (installed by .ci/install) ships the server binaries under
/usr/lib/postgresql/15/bin. ``initdb`` refuses to run as root, so the cluster belongs to the
``postgres`` system user the package creates: a data directory of its own in a temporary
directory, trust authentication, listening on 127.0.0.1 at a free port and on a unix socket
inside that directory only. Stopped (``pg_ctl stop -m immediate``) and removed on exit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .registry import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # created by Debian's postgresql-common


def _as_postgres(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    user = pwd.getpwnam(PG_USER)

    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)

    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, preexec_fn=drop if os.geteuid() == 0 else None, env=env,
                          check=True, capture_output=True, timeout=120, **kwargs)


class ClusterUrl(str):
    """The cluster's connection URL, with ``crash()`` and ``start()`` to take the server
    away under its clients and bring it back (same port, same data)."""

    data: Path
    log: Path

    def crash(self) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop"])

    def start(self) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                      "-w", "-t", "60", "start"])


@contextmanager
def postgres_cluster(database: str = "buildgrid") -> Iterator[str]:
    """Start a PostgreSQL 15 cluster; yield a connection URL for ``database`` (created)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            raise RuntimeError(f"{PG_BIN / tool} is missing: apt install postgresql-15 "
                               "(.ci/install)")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise RuntimeError("the postgres system user is missing: apt install postgresql")
    # short path: the unix socket's name must fit in sun_path (108 bytes)
    root = Path(tempfile.mkdtemp(prefix="kt-pg-", dir="/tmp"))
    user = pwd.getpwnam(PG_USER)
    os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    port = free_port()
    started = False
    try:
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "kata", "--auth=trust",
                      "-E", "UTF8", "--no-sync"])
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{root}'\nfsync = off\n"
                       "synchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\n")
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                      "-w", "-t", "60", "start"])
        started = True
        deadline = time.monotonic() + 30
        while True:  # "started" can precede accepting connections on a loaded machine
            done = subprocess.run(["psql", "-h", str(root), "-p", str(port), "-U", "kata",
                                   "-d", "postgres", "-c", f"CREATE DATABASE {database}"],
                                  capture_output=True, timeout=30)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections: {done.stderr!r}")
            time.sleep(0.2)
        # psycopg2 named: SQLAlchemy 2.1 defaults to psycopg 3, whose connections lack the
        # poll() that BuildGrid 0.4's LISTEN/NOTIFY loop calls (operation updates stall)
        url = ClusterUrl(f"postgresql+psycopg2://kata@127.0.0.1:{port}/{database}")
        url.data, url.log = data, root / "log"
        yield url
    finally:
        if started:
            try:
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"])
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(root, ignore_errors=True)
