"""`kata remote push`: send the results earlier runs could not send to the remote cache
(``kata.remote.pending``), ignoring a remembered timeout (``kata.remote.backoff``)."""

from __future__ import annotations

import click

from kata.errors import KataError


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(remote)


@click.group()
def remote() -> None:
    """The remote cache (REAPI; docs/remote.md)."""


@remote.command()
@click.option("--remote-cache", "remote_cache", metavar="grpc[s]://HOST:PORT",
              help="The remote cache (default: remote.cache in /etc/kata/config.yaml).")
@click.option("--remote-instance", "remote_instance", metavar="NAME",
              help="The remote's instance name (default: remote.instance, else \"\").")
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.pass_context
def push(ctx: click.Context, remote_cache: str | None, remote_instance: str | None,
         json_out: bool) -> None:
    """Send the step results earlier runs could not send to the remote cache (it was down,
    slow or unreachable, or the run ended first), and say how many went. Asks the remote
    even during a back-off (and ends it when the remote answers). Exit 1 when the remote
    fails (what is left stays queued for the next run or push)."""
    from kata.cli.history_cmds import echo_json
    from kata.cli.store_cmds import open_store
    from kata.remote.cache import PushCounts, RemoteCache
    from kata.remote.config import load_remote_config

    config = load_remote_config(remote_cache, remote_instance)
    if config is None:
        raise KataError("remote.no_remote", "no remote cache to push to: give --remote-cache "
                        "grpc://HOST:PORT or set remote.cache in the host config "
                        "(/etc/kata/config.yaml; docs/remote.md)")
    warnings: list[str] = []
    with open_store(ctx) as store:
        cache = RemoteCache(config, state_dir=store.state_dir, backoff=False,
                            warn=warnings.append)
        try:
            counts = cache.push_pending(store, wait=True) if cache.check() else \
                PushCounts(left=cache.pending())
        finally:
            cache.close()
    if json_out:
        echo_json({"remote": config.url, "instance": config.instance, "sent": counts.sent,
                   "dropped": counts.dropped, "left": counts.left,
                   "error": cache.down_reason or None})
    else:
        for line in warnings:
            click.echo(f"kata: warning: {line}", err=True)
        where = config.url + (f" (instance {config.instance})" if config.instance else "")
        line = f"pushed {counts.sent} result(s) to {where}"
        if counts.dropped:
            line += (f"; {counts.dropped} dropped (no longer in the local store, or the remote "
                     "refuses this host's results)")
        if counts.left:
            line += f"; {counts.left} still pending"
        click.echo(line)
    if counts.left or cache.down_reason:  # the remote failed, even with nothing queued
        raise SystemExit(1)
