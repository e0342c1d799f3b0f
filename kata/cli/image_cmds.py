"""`kata` commands: image (import, pull, ls, rm) and daemon (status, stop)."""

from __future__ import annotations

import click

from kata.cli.store_cmds import human_size


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(image)
    cli.add_command(daemon)


def _runtime(ctx: click.Context, offline: bool | None = None):  # noqa: ANN202
    from kata.runtimes.containerd import ContainerdRuntime

    address = (ctx.find_root().obj or {}).get("containerd_address")
    return ContainerdRuntime.connect(address=address, offline=offline)


@click.group()
def image() -> None:
    """Manage kata's local image store (containerd namespace `kata`)."""


@image.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Image name to store it under (default: the archive's own).")
@click.pass_context
def image_import(ctx: click.Context, archive: str, name: str | None) -> None:
    """Import an OCI image-layout or `docker save` archive."""
    with _runtime(ctx) as rt:
        for rec in rt.import_image(archive, name):
            click.echo(f"imported {rec.name} {rec.digest}")


@image.command("pull")
@click.argument("ref")
@click.pass_context
def image_pull(ctx: click.Context, ref: str) -> None:
    """Pull an image (linux/amd64) from its registry or a configured mirror."""
    with _runtime(ctx, offline=False) as rt:
        rec = rt.pull_image(ref)
        click.echo(f"pulled {rec.name} {rec.digest}")


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Names only.")
@click.pass_context
def image_ls(ctx: click.Context, quiet: bool) -> None:
    """List the images kata has."""
    with _runtime(ctx) as rt:
        records = rt.list_images()
    if quiet:
        for rec in records:
            click.echo(rec.name)
        return
    width = max([len(r.name) for r in records] + [4])
    click.echo(f"{'NAME':<{width}}  {'DIGEST':<19}  SIZE")
    for rec in records:
        click.echo(f"{rec.name:<{width}}  {rec.digest[:19]:<19}  {human_size(rec.size)}")


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def image_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove images (by name, or by digest: every name on it)."""
    with _runtime(ctx) as rt:
        for ref in refs:
            for name in rt.remove_image(ref):
                click.echo(f"removed {name}")


@click.group()
def daemon() -> None:
    """Kata's own embedded containerd."""


def _paths():  # noqa: ANN202
    from kata.runtimes.containerd.config import load_runtime_config
    from kata.runtimes.containerd.daemon import daemon_paths

    return daemon_paths(load_runtime_config().state_dir)


@daemon.command("status")
def daemon_status_cmd() -> None:
    """Say whether kata's containerd runs, and where it keeps things."""
    from kata.runtimes.containerd.daemon import daemon_status

    status = daemon_status(_paths())
    state = f"running (pid {status['pid']})" if status["running"] else "not running"
    click.echo(f"kata containerd: {state}")
    for key in ("socket", "root", "state", "config", "log"):
        click.echo(f"  {key}: {status[key]}")


@daemon.command("stop")
def daemon_stop_cmd() -> None:
    """Stop kata's containerd (running steps' containers keep running until swept)."""
    from kata.runtimes.containerd.daemon import stop_daemon

    if stop_daemon(_paths()):
        click.echo("kata containerd stopped")
    else:
        click.echo("kata containerd was not running")
