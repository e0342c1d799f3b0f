"""`kata runs`: the recorded runs, newest first, as a table or ``--json``."""

from __future__ import annotations

import json

import click

from kata.cli.config_cmds import config_file_option


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(runs)


def echo_json(doc: dict) -> None:
    """One ``--json`` document: ``{"version": 1, ...}`` on one line."""
    from kata.realise.events import JSON_VERSION

    click.echo(json.dumps({"version": JSON_VERSION, **doc}, ensure_ascii=False))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header first; no trailing blanks. Each
    cell as ``terminal_safe`` shows it: a pipeline's name is its config's (a pushed
    branch's), a ref's may hold C1 controls (git refuses only ASCII ones)."""
    from kata.report.text import terminal_safe

    rows = [tuple(map(terminal_safe, r)) for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


@click.command()
@click.option("--pipeline", metavar="NAME",
              help="Only this pipeline's runs (default: the config's here, else every one).")
@click.option("--all", "all_pipelines", is_flag=True, help="Runs of every pipeline.")
@click.option("-n", "--limit", type=click.IntRange(1), default=20, show_default=True,
              help="How many runs.")
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@config_file_option
@click.pass_context
def runs(ctx: click.Context, pipeline: str | None, all_pipelines: bool, limit: int,
         json_out: bool) -> None:
    """List recorded runs: id, pipeline, ref, trust, event, status, steps, started,
    duration (TRUST: untrusted for a run whose records went to its quarantine;
    CANCELLED: steps stopped while running, by Ctrl-C or a timeout, not among FAILED)."""
    from kata.keys import trusted_scope
    from kata.cli.run_cmds import _pipeline_name
    from kata.cli.store_cmds import open_store
    from kata.realise.history import local_time, runs as list_runs

    if pipeline is None and not all_pipelines:
        pipeline = _pipeline_name(ctx)
    with open_store(ctx, read_only=True) as store:
        found = list_runs(store, pipeline=pipeline, limit=limit)
    if json_out:
        echo_json({"pipeline": pipeline, "runs": [r.to_json() for r in found]})
        return
    if not found:
        click.echo("No runs recorded" + (f" for pipeline {pipeline!r}." if pipeline else "."))
        return
    rows = [(r.id, r.pipeline, r.ref.removeprefix("refs/heads/").removeprefix("refs/") or "-",
             "trusted" if trusted_scope(r.scope) else "untrusted", r.event,
             r.status + (f" ({r.retried} retried)" if r.retried else ""),
             f"{r.ran}/{r.cached}/{r.failed}/{r.cancelled}", local_time(r.started),
             f"{r.duration:.1f}s") for r in found]
    for line in table(("RUN", "PIPELINE", "REF", "TRUST", "EVENT", "STATUS",
                       "RAN/CACHED/FAILED/CANCELLED", "STARTED", "DURATION"), rows):
        click.echo(line)
