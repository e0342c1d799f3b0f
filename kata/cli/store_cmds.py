"""`kata` commands: store and cache.

``kata store gc|verify|stats|path`` and ``kata cache list|clear|stats``. Which store
is used is decided in one place, :func:`store_location` / :func:`open_store`, so the
realiser opens the same store the CLI shows.
"""

from __future__ import annotations

import contextlib
import os

import click

from kata import resources
from kata.errors import KataError
from kata.locations import ROOT_STORE, store_location  # noqa: F401 - here since the start
from kata.report import human_size  # noqa: F401 - the one size format, used here and by image ls
from kata.model import Duration


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(store)
    cli.add_command(cache)


# ---------------------------------------------------------------- which store

#: what the user can fix when a store cannot be opened: exit 2 naming the path (a full
#: disk or an I/O error stays exit 1, an operation that failed)
_USER_FIXABLE = {
    "store.read_only": "this command writes to the store: mount it read-write, or name a "
                       "store on a writable filesystem with --store DIR (kata runs, logs, why, "
                       "export, graph, run --dry-run, cache list, store stats, store "
                       "verify and web can read it as it is)",
    "store.permission": "give this user access to it, or name another store with "
                        "--store DIR",
    "store.not_a_directory": "name a directory with --store DIR (or $KATA_STORE)",
    "store.version": "name a Kata store with --store DIR (or $KATA_STORE), or an empty "
                     "directory for a new one",
    "store.missing": "run a pipeline first (kata run), or name the store with --store DIR",
    "store.state_on_network_fs": "set XDG_STATE_HOME to a local directory",
}


def open_store(ctx: click.Context | None = None, *, read_only: bool = False):
    """Open the store the command line names (``ctx.obj["store_path"]``).

    ``read_only``: the command only reads, so a store this process cannot write (a
    read-only mount, another user's) is opened read-only (``Store.open(read_only=True)``)
    rather than refused. KataError, exit 2, naming the store and what to do, when it
    cannot be opened for a reason the user can fix (``_USER_FIXABLE``)."""
    from store import Store
    from store.errors import StoreError

    explicit = None
    if ctx is not None and isinstance(ctx.find_root().obj, dict):
        explicit = ctx.find_root().obj.get("store_path")
    location = store_location(explicit)
    try:
        if location == ROOT_STORE and os.geteuid() == 0 and not os.path.exists(location):
            # OWNERSHIP: root's default store is root's alone (0700): it holds every
            # pipeline's inputs and outputs; group kata reaches it through kata's server
            os.makedirs(os.path.dirname(location), mode=0o755, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(location, 0o700)
        try:
            store = Store.open(location)
        except StoreError as err:
            if not (read_only and err.reason in ("store.read_only", "store.permission")):
                raise
            store = Store.open(location, read_only=True)
    except StoreError as err:
        fix = _USER_FIXABLE.get(err.reason)
        if fix is None:
            raise
        raise KataError(err.reason, f"{err.message}: {fix}", obj=location) from err
    except PermissionError as err:  # creating root's default store's parent
        raise KataError("store.permission", f"cannot create the store at {location}: {err}: "
                        f"{_USER_FIXABLE['store.permission']}", obj=location) from err
    for notice in store.notices:
        click.echo(f"kata: {notice}", err=True)
    return store


def existing_state_dir(ctx: click.Context | None = None) -> str | None:
    """The local state directory of the store the command line names, without opening
    (or creating) the store; None while it does not exist."""
    from store.core import default_state_dir

    explicit = None
    if ctx is not None and isinstance(ctx.find_root().obj, dict):
        explicit = ctx.find_root().obj.get("store_path")
    root = store_location(explicit)
    if not os.path.isdir(root):
        return None
    try:
        state = default_state_dir(root)
    except OSError:  # the store's own errors come when it is opened
        return None
    return state if os.path.isdir(state) else None


def loaded_dir(ctx: click.Context | None = None) -> str | None:
    """Where loaded pipelines are kept (``kata.loaded``): ``<state dir>/loaded`` of the
    store the command line names; None (no cache) while that state dir does not exist
    (the store is created later in the command; a config is never kept outside it)."""
    from kata.loaded import DIR_NAME

    state = existing_state_dir(ctx)
    return os.path.join(state, DIR_NAME) if state is not None else None


# ---------------------------------------------------------------- small parsers

def parse_size(text: str) -> int:
    """``500MB``, ``2GiB``, ``1.5G``, ``1024`` -> bytes (``kata.resources.parse_size``:
    K/M/G decimal, Ki/Mi/Gi binary)."""
    try:
        return resources.parse_size(text)
    except ValueError:
        raise KataError("cli.bad_size", f"not a size: {text!r} (try 500MB or 2GiB)",
                        obj=text) from None


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
    with open_store(ctx, read_only=not (repair or reindex)) as s:
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
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.pass_context
def stats(ctx: click.Context, json_out: bool) -> None:
    """Objects, size, realisations, runs and hit rate."""
    from kata.realise.history import cache_entries

    with open_store(ctx, read_only=True) as s:
        st = s.stats()
        st["entries"] = len(cache_entries(s).entries)
    if json_out:
        from kata.cli.history_cmds import echo_json

        echo_json({"store": st["root"], "index": st["state_dir"],
                   "network_fs": st["network_fs"], "objects": st["objects"],
                   "size": st["size"], "realisations": st["realisations"],
                   "entries": st["entries"], "runs": st["runs"], "unpacked": st["unpacked"],
                   "hits": st["hits"], "misses": st["misses"], "hit_rate": _hit_rate(st)})
        return
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

def _hit_rate(st: dict) -> float | None:
    """Hits over lookups, 0..1 (None before the first lookup)."""
    hits, misses = st["hits"], st["misses"]
    return round(hits / (hits + misses), 4) if hits + misses else None


def _cache_line(st: dict) -> str:
    """The overview's line: ``Entries: 12 | Size: 48MB | Hit rate: 94%``; entries are
    cached results, each counted once (``st["entries"]``)."""
    rate = _hit_rate(st)
    shown = "n/a" if rate is None else f"{round(100 * rate)}%"
    return f"Entries: {st['entries']} | Size: {human_size(st['size'])} | Hit rate: {shown}"


@click.group()
def cache() -> None:
    """Manage the local cache: list, clear, stats."""


@cache.command("list")
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.pass_context
def cache_list(ctx: click.Context, json_out: bool) -> None:
    """List cached results, newest first, each once: the step (or cache directory), its
    pipeline, when, how long it ran, its output tree and the run that produced it."""
    from kata.cli.history_cmds import echo_json, table
    from kata.realise.history import cache_entries, local_time

    with open_store(ctx, read_only=True) as s:
        listing = cache_entries(s)
    if json_out:
        echo_json({"entries": [e.to_json() for e in listing.entries],
                   "records": listing.records, "internal": listing.internal,
                   "unreadable": listing.unreadable})
        return
    if not listing.entries:
        click.echo("No cache entries.")
        return
    rows = [(e.key.removeprefix("sha256:")[:12], local_time(e.created), e.pipeline or "-",
             e.step or "-", e.kind, f"exit {e.exit_status}", f"{e.duration:.1f}s",
             e.outputs.removeprefix("sha256:")[:12], e.run or "-", e.scope or "shared")
            for e in listing.entries]
    for line in table(("KEY", "CREATED", "PIPELINE", "STEP", "KIND", "EXIT", "RAN",
                       "OUTPUTS", "RUN", "SCOPE"), rows):
        click.echo(line)
    n = len(listing.entries)
    click.echo(f"{n} entr{'y' if n == 1 else 'ies'} ({listing.records} records; "
               f"{listing.internal} internal" +
               (f", {listing.unreadable} unreadable" if listing.unreadable else "") + ")")


@cache.command("clear")
@click.pass_context
def cache_clear(ctx: click.Context) -> None:
    """Forget every cached step result and free what only they used."""
    from kata.realise.history import cache_entries

    with open_store(ctx) as s:
        entries = len(cache_entries(s).entries)
        names = [name for name, _, _ in s.iter_realisations()]
        for name in names:
            s.delete_realisation(name)
        report = s.gc(grace=0, keep_runs=0)
        s.index.reset_counters()
    click.echo(f"Cleared {entries} entries ({human_size(report.freed_bytes)}).")


@cache.command("stats")
@click.option("--json", "json_out", is_flag=True, help="One JSON document (docs/json.md).")
@click.pass_context
def cache_stats(ctx: click.Context, json_out: bool) -> None:
    """Entries (cached results, each once), size and hit rate."""
    from kata.realise.history import cache_entries

    with open_store(ctx, read_only=True) as s:
        st = s.stats()
        st["entries"] = len(cache_entries(s).entries)
    if json_out:
        from kata.cli.history_cmds import echo_json

        echo_json({"entries": st["entries"], "size": st["size"], "hits": st["hits"],
                   "misses": st["misses"], "hit_rate": _hit_rate(st)})
        return
    click.echo(_cache_line(st))
