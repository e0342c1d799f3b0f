"""`kata doctor`: check this host's prerequisites and say what to fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(doctor)


@click.command()
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.option("--remote-cache", "remote_cache", metavar="grpc[s]://HOST:PORT",
              help="Check this remote cache (default: remote.cache in the host config), as "
                   "kata run --remote-cache uses it.")
@click.option("--remote-instance", "remote_instance", metavar="NAME",
              help="The remote's instance name (default: remote.instance, else \"\").")
@click.option("--worker-executor", "worker_executor", metavar="grpc[s]://HOST:PORT",
              help="Check this scheduler as `kata worker --executor URL` here would use it "
                   "(reachable, TLS and token, the instance, a Bots service).")
@click.pass_context
def doctor(ctx: click.Context, json_out: bool, remote_cache: str | None = None,
           remote_instance: str | None = None, worker_executor: str | None = None) -> None:
    """Check the kernel (overlay, cgroups), containerd, runc, the OCI runtime steps use
    (crun or runc), CNI, the store location and free space, and a configured remote
    cache or executor (and, with --worker-executor, the scheduler a `kata worker` here
    serves); exit 1 when kata cannot run steps here, saying what to fix."""
    from kata.cli.store_cmds import existing_state_dir, store_location
    from kata.doctor import EXECUTOR_PROBE_TIMEOUT, Host, diagnose
    from kata.executor.connection import probe
    from kata.remote.config import load_remote_config
    from kata.errors import KataError
    from kata.runtimes.containerd.config import load_runtime_config
    from kata.runtimes.containerd.daemon import (
        SYSTEM_SOCKET, daemon_paths, read_pid, socket_answers,
    )
    from kata.runtimes.containerd.network import CNI_PATH
    from kata.runtimes.containerd.spec import NOFILE_HARD, NOFILE_SOFT
    from kata.runtimes.sweepmarks import MARKER_EXPIRY, marker_dir, markers
    from kata.server import socket_path
    from kata.sockets import socket_access

    obj = ctx.find_root().obj or {}
    config = load_runtime_config()
    address = obj.get("containerd_address") or config.address
    server = socket_path()  # kata's server, for a non-root user in group kata
    own = daemon_paths(config.state_dir)  # kata's own containerd, where kata would start it
    state_dir = existing_state_dir(ctx) or ""
    host = Host(cni_path=Path(CNI_PATH), store=Path(store_location(obj.get("store_path"))),
                containerd_address=address.removeprefix("unix://") if address else None,
                system_socket=SYSTEM_SOCKET if config.state_dir is None else "",
                kata_socket=str(own.socket), kata_pid=read_pid(own), answers=socket_answers,
                server_socket=str(server), server_access=socket_access(server),
                oci_runtime=config.oci_runtime, step_runner=config.step_runner,
                owner_markers=tuple(markers(state_dir)) if state_dir else (),
                marker_dir=marker_dir(state_dir) if state_dir else "",
                marker_expiry=MARKER_EXPIRY,
                daemon_nofile=_daemon_nofile, nofile_ceiling=_nofile_ceiling(),
                nofile_spec=(NOFILE_SOFT, NOFILE_HARD))
    executor = load_remote_config(key="executor")  # bad settings: exit 2, at file:line
    if executor is not None:
        host = dataclasses.replace(host, remote_executor=executor.url,
                                   executor_probe=lambda: probe(
                                       executor, timeout=EXECUTOR_PROBE_TIMEOUT))
    if worker_executor is not None:  # with the host config's TLS files, token, instance
        from kata.executor.connection import probe_bots
        from kata.remote.config import parse_url

        parse_url(worker_executor, where="--worker-executor")  # a bad URL: exit 2
        bots = load_remote_config(worker_executor, remote_instance, key="executor")
        assert bots is not None
        host = dataclasses.replace(host, worker_executor=worker_executor,
                                   worker_probe=lambda: probe_bots(
                                       bots, timeout=EXECUTOR_PROBE_TIMEOUT))
    checks = diagnose(host)
    checks += _remote_checks(remote_cache, remote_instance)
    failed = [c for c in checks if c.status == "fail"]
    if json_out:
        from kata.cli.history_cmds import echo_json

        echo_json({"ok": not failed, "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            click.echo(f"[{c.status.upper()}]".ljust(7) + f"{c.name}: {c.detail}")
            if c.fix:
                click.echo(" " * 7 + f"fix: {c.fix}")
        warned = sum(1 for c in checks if c.status == "warn")
        if not failed:
            click.echo(f"kata can run pipelines here ({len(checks)} checks"
                       + (f", {warned} warning{'s' if warned != 1 else ''}" if warned else "")
                       + ").")
    if failed:
        raise KataError("doctor.failed", f"{len(failed)} prerequisite"
                        f"{'s' if len(failed) != 1 else ''} missing: "
                        f"{', '.join(c.name for c in failed)} (see the fixes above)",
                        exit_code=1)


def _remote_checks(url: str | None = None, instance: str | None = None) -> list:
    """The remote cache the flags or the host config name (kata.remote.doctor; none: no
    check, and grpc is not even imported). The executor has its own check (kata.doctor)."""
    from kata.remote.config import load_remote_config

    cache = load_remote_config(url, instance)  # bad settings: exit 2, at file:line
    if cache is None:
        return []
    from kata.remote.doctor import check_remote

    return [check_remote(cache)]


def _daemon_nofile(socket: str) -> tuple[int, int] | None:
    """(pid, hard RLIMIT_NOFILE) of the containerd listening on ``socket``, if readable."""
    from kata.runtimes.containerd.spec import hard_limits
    from kata.sockets import socket_peer_pid

    pid = socket_peer_pid(socket)
    limits = hard_limits(pid) if pid is not None else None
    return None if pid is None or limits is None else (pid, limits[0])


def _nofile_ceiling() -> int:
    """The hard RLIMIT_NOFILE a kata run holds here (after raising its own, as it does)."""
    import resource

    from kata.runtimes.containerd.spec import NOFILE_HARD, lift_open_files_limit

    lift_open_files_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NOFILE_HARD if hard == resource.RLIM_INFINITY else hard
