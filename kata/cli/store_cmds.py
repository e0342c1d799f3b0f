"""`kata` commands: store and cache.

``kata store gc|verify|stats|path`` and ``kata cache list|clear|stats``. Which store
is used is decided in one place, :func:`store_location` / :func:`open_store`, so the
realiser opens the same store the CLI shows.
"""

from __future__ import annotations

import os
import time

import click

from kata import resources
from kata.errors import KataError
from kata.model import Duration


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(store)
    cli.add_command(cache)


# ---------------------------------------------------------------- which store

def store_location(explicit: str | None = None) -> str:
    """``--store``, else $KATA_STORE, else /var/lib/kata/store for root, else the user's."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    env = os.environ.get("KATA_STORE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.geteuid() == 0:
        return "/var/lib/kata/store"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "kata", "store")


def open_store(ctx: click.Context | None = None):
    """Open the store the command line names (``ctx.obj["store_path"]``)."""
    from store import Store

    explicit = None
    if ctx is not None and isinstance(ctx.find_root().obj, dict):
        explicit = ctx.find_root().obj.get("store_path")
    return Store.open(store_location(explicit))


# ---------------------------------------------------------------- small parsers

def parse_size(text: str) -> int:
    """``500MB``, ``2GiB``, ``1.5G``, ``1024`` -> bytes (``kata.resources.parse_size``:
    K/M/G decimal, Ki/Mi/Gi binary)."""
    try:
        return resources.parse_size(text)
    except ValueError:
        raise KataError("cli.bad_size", f"not a size: {text!r} (try 500MB or 2GiB)",
                        obj=text) from None


def human_size(n: int) -> str:
    """Bytes for people, the one size format of the CLI (``cache stats``, ``store gc``,
    ``image ls``): ``48MB`` style, decimal units (B, KB, MB, GB, TB), whole numbers, one
    decimal below 10 (``1.5KB``)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1000
    return f"{n}B"


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):  # noqa: ANN001
        try:
            return parse_size(value) if isinstance(value, str) else value
        except KataError as err:
            self.fail(err.message, param, ctx)


class DurationType(click.ParamType):
    """A click parameter in ``kata.model.Duration``'s grammar (``2d``, ``1h30m``, ``0``),
    converted to seconds (float); a bad value is a usage error (exit 2)."""

    name = "DURATION"

    def convert(self, value, param, ctx):  # noqa: ANN001
        if not isinstance(value, str):
            return value
        try:
            return Duration.parse(value).seconds
        except ValueError as err:
            self.fail(str(err), param, ctx)


# ---------------------------------------------------------------- kata store

@click.group()
def store() -> None:
    """Inspect and maintain the content-addressed store."""


@store.command()
@click.option("--max-size", type=_SizeType(), help="Delete oldest-used entries until under SIZE.")
@click.option("--older-than", type=DurationType(), help="Only delete what was last used before DURATION ago.")
@click.option("--grace", type=DurationType(), default="1h", show_default=True,
              help="Never delete anything used this recently (builds running elsewhere).")
@click.option("--keep-runs", type=click.IntRange(0), default=10, show_default=True,
              help="Keep the realisations of the last N runs of each pipeline and branch.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@click.pass_context
def gc(ctx: click.Context, max_size: int | None, older_than: float | None, grace: float,
       keep_runs: int, dry_run: bool) -> None:
    """Delete unreferenced and least recently used entries."""
    with open_store(ctx) as s:
        report = s.gc(max_size=max_size, older_than=older_than, dry_run=dry_run,
                      keep_runs=keep_runs, grace=grace)
    verb = "Would delete" if dry_run else "Deleted"
    click.echo(f"{verb} {len(report.deleted_realisations)} realisations and "
               f"{len(report.deleted_objects)} objects ({human_size(report.freed_bytes)}); "
               f"kept {report.kept_realisations} realisations, {report.kept_objects} objects "
               f"({human_size(report.kept_bytes)})")


@store.command()
@click.option("--repair", is_flag=True, help="Quarantine corrupt objects and drop records pointing at them.")
@click.option("--reindex", is_flag=True, help="Rebuild the index from the store's files.")
@click.pass_context
def verify(ctx: click.Context, repair: bool, reindex: bool) -> None:
    """Re-hash every object and check every realisation."""
    with open_store(ctx) as s:
        report = s.verify(repair=repair, reindex=reindex)
    for digest in report.corrupt:
        click.echo(f"corrupt: {digest}")
    for key, digest in report.missing:
        click.echo(f"missing: {digest} (realisation {key})")
    for key in report.bad_records:
        click.echo(f"unreadable realisation: {key}")
    click.echo(f"Checked {report.objects} objects, {report.realisations} realisations: "
               f"{len(report.corrupt)} corrupt, {len(report.missing)} missing"
               + (f"; quarantined {len(report.quarantined)}, dropped {len(report.dropped)}"
                  if repair else "")
               + ("; index rebuilt" if reindex else ""))
    if not report.ok and not repair:
        raise KataError("store.verify_failed", "the store has problems; run "
                        "`kata store verify --repair` to quarantine them", exit_code=1)


@store.command()
@click.pass_context
def stats(ctx: click.Context) -> None:
    """Objects, size, realisations, runs and hit rate."""
    with open_store(ctx) as s:
        st = s.stats()
    click.echo(f"Store: {st['root']}{' (network filesystem)' if st['network_fs'] else ''}")
    click.echo(f"Index: {st['state_dir']}")
    click.echo(f"Objects: {st['objects']} | Size: {human_size(st['size'])} | "
               f"Realisations: {st['realisations']} | Runs: {st['runs']} | "
               f"Unpacked trees: {st['unpacked']}")
    click.echo(_cache_line(st))


@store.command()
@click.pass_context
def path(ctx: click.Context) -> None:
    """Print the store's location."""
    explicit = ctx.find_root().obj.get("store_path") if isinstance(ctx.find_root().obj, dict) else None
    click.echo(store_location(explicit))


# ---------------------------------------------------------------- kata cache

def _cache_line(st: dict) -> str:
    hits, misses = st["hits"], st["misses"]
    rate = f"{round(100 * hits / (hits + misses))}%" if hits + misses else "n/a"
    return f"Entries: {st['realisations']} | Size: {human_size(st['size'])} | Hit rate: {rate}"


@click.group()
def cache() -> None:
    """Manage the local cache: list, clear, stats."""


@cache.command("list")
@click.pass_context
def cache_list(ctx: click.Context) -> None:
    """List cached step results and cache directories, newest first, with the pipeline,
    the step and the scope each was written in."""
    from store import StoreError
    from store.realisations import Realisation

    with open_store(ctx) as s:
        rows = []
        for name, file_path, mtime in s.iter_realisations():
            try:
                with open(file_path, "rb") as fh:
                    real = Realisation.decode(fh.read(), what=name)
            except (StoreError, OSError):
                continue
            rows.append((real.created or mtime, name, real))
    if not rows:
        click.echo("No cache entries.")
        return
    for created, name, real in sorted(rows, key=lambda r: r[0], reverse=True):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created))
        what = "/".join(p for p in (real.pipeline, real.step) if p) or "-"
        click.echo(f"{name[:12]}  {when}  exit {real.exit_status}  {real.duration:.1f}s  "
                   f"{real.outputs[7:19]}  {real.kind or '-'}  {what}  "
                   f"scope {real.scope or 'shared'}")


@cache.command("clear")
@click.pass_context
def cache_clear(ctx: click.Context) -> None:
    """Forget every cached step result and free what only they used."""
    with open_store(ctx) as s:
        names = [name for name, _, _ in s.iter_realisations()]
        for name in names:
            s.delete_realisation(name)
        report = s.gc(grace=0, keep_runs=0)
        s.index.reset_counters()
    click.echo(f"Cleared {len(names)} entries ({human_size(report.freed_bytes)}).")


@cache.command("stats")
@click.pass_context
def cache_stats(ctx: click.Context) -> None:
    """Entries, size and hit rate."""
    with open_store(ctx) as s:
        click.echo(_cache_line(s.stats()))
