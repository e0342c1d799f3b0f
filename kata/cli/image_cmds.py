"""`kata` commands: image (import, pull, ls, rm) and daemon (status, stop)."""

from __future__ import annotations

import os

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


def _tags(ctx: click.Context):  # noqa: ANN202
    """The tag record `kata run` resolves from (see kata.runtimes.tags)."""
    from kata.cli.run_cmds import image_tags
    from kata.cli.store_cmds import open_store

    with open_store(ctx) as store:
        return image_tags(store.state_dir)


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
        records = rt.import_image(archive, name)
    _tags(ctx).record({rec.name: rec.digest for rec in records})
    for rec in records:
        click.echo(f"imported {rec.name} {rec.digest}")


@image.command("pull")
@click.argument("ref")
@click.pass_context
def image_pull(ctx: click.Context, ref: str) -> None:
    """Pull an image (linux/amd64) from its registry or a configured mirror; on a terminal
    with a progress bar (layers, bytes)."""
    import sys

    from kata.cli.run_cmds import pull_events
    from kata.report.live import pull_view

    with _runtime(ctx, offline=False) as rt, pull_view(sys.stdout) as view:
        if view is not None:
            rt.progress = pull_events(view)
        rec = rt.pull_image(ref)
    _tags(ctx).record({ref: rec.digest})  # refreshes what `kata run` resolves the tag to
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
    from kata.runtimes.containerd.reference import is_digest

    tags = _tags(ctx)
    with _runtime(ctx) as rt:
        for ref in refs:
            removed = rt.remove_image(ref)
            tags.forget(refs=removed, digests=[ref] if is_digest(ref) else ())
            for name in removed:
                click.echo(f"removed {name}")


@click.group()
def daemon() -> None:
    """Kata's server (for group kata) and its own embedded containerd."""


def _paths():  # noqa: ANN202
    from kata.runtimes.containerd.config import load_runtime_config
    from kata.runtimes.containerd.daemon import daemon_paths

    return daemon_paths(load_runtime_config().state_dir)


@daemon.command("serve")
@click.option("--socket", "sock", type=click.Path(dir_okay=False),
              help="Where to listen (default: $KATA_SERVER_SOCKET, else /run/kata/kata.sock).")
@click.option("--group", default="kata", show_default=True,
              help="The group whose members may use it (root-equivalent: SECURITY.md).")
def daemon_serve_cmd(sock: str | None, group: str) -> None:
    """Run kata for the members of a group (as root, in the foreground: a systemd unit).

    A non-root kata finds the socket (root:GROUP 0660) and hands it its command."""
    from pathlib import Path

    from kata.server import serve

    serve(Path(sock).absolute() if sock else None, group=group)


@daemon.command("status")
def daemon_status_cmd() -> None:
    """Say whether kata's server and kata's containerd run, whether this user may use
    them, and where they keep things. Tells the truth as any user."""
    from kata.runtimes.containerd.daemon import daemon_status
    from kata.server import server_status, socket_path

    server = server_status(socket_path())
    click.echo(f"kata server: {server['state']}")
    click.echo(f"  socket: {server['socket']}" + (f" ({server['owner']})" if server["owner"] else ""))
    click.echo(f"  you: {server['access']}")
    status = daemon_status(_paths())
    state = f"running (pid {status['pid']})" if status["running"] else "not running"
    click.echo(f"kata containerd: {state}")
    if status["running"] and not status["usable"]:
        click.echo("  you: cannot use its socket directly (root's); kata reaches it as root"
                   + (" through kata's server" if os.geteuid() else ""))
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
