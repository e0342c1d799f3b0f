"""`kata hooks install|run`: git hooks that run the pipeline (kata/hooks.py)."""

from __future__ import annotations

import sys

import click

from kata.cli.config_cmds import config_file_option


def register(cli: click.Group) -> None:
    cli.add_command(hooks)


def _kata_args(ctx: click.Context) -> list[str]:
    """The root options a hook passes on to kata (store, containerd, config file)."""
    obj = ctx.find_root().obj or {}
    args: list[str] = []
    if obj.get("store_path"):
        from kata.cli.store_cmds import store_location

        args += ["--store", store_location(obj["store_path"])]
    if obj.get("containerd_address"):
        args += ["--containerd", obj["containerd_address"]]
    if obj.get("config_file"):
        args += ["--file", obj["config_file"]]
    return args


@click.group()
def hooks() -> None:
    """Git hooks that run the pipeline on push."""


@hooks.command()
@click.option("--force", is_flag=True, help="Replace a hook that kata did not install.")
@click.option("--repo", default=".", type=click.Path(file_okay=False),
              help="The repository (default: the current directory).")
@config_file_option
@click.pass_context
def install(ctx: click.Context, force: bool, repo: str) -> None:
    """Install pre-push (working repository: a failing pipeline blocks the push) or
    post-receive (bare repository: every push runs the pipeline in a clean checkout and
    records the run). --store/--containerd given to kata are baked into the hook; else
    the hook takes them from its environment."""
    from kata.hooks import install as do_install

    path = do_install(repo, _kata_args(ctx), force=force)
    click.echo(f"installed {path}")


@hooks.command(name="run", hidden=True)
@click.argument("hook")
@click.argument("args", nargs=-1)
@click.pass_context
def run_(ctx: click.Context, hook: str, args: tuple[str, ...]) -> None:
    """What an installed hook runs (reads the pushed refs from stdin)."""
    from kata.hooks import run_hook

    status = run_hook(hook, sys.stdin, _kata_args(ctx))
    if status:
        raise SystemExit(status)
