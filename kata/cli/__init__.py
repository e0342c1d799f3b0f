"""The ``kata`` command line.

Each command family lives in its own module and registers itself on the root
group; heavy imports (grpc, rich) stay inside the commands that need them so a
fully cached run starts fast. Every ``KataError``/``StoreError`` becomes one
line on stderr and its exit code (2 for bad usage or config); nothing a user
can type ends in a traceback.
"""

from __future__ import annotations

import gc
import sys

import click

from kata import __version__
from kata.errors import KataError

from . import config_cmds, doctor_cmds, history_cmds, image_cmds, run_cmds, store_cmds


class KataGroup(click.Group):
    """The root group: an unknown command that is a subcommand of a group (``kata gc``,
    ``kata pull``) is answered with the full command (``kata store gc``), as a user of
    ``docker system prune`` or ``git gc`` types it first."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # noqa: ANN201
        name = args[0] if args else ""
        if name and self.get_command(ctx, name) is None and not name.startswith("-"):
            homes = [f"kata {group} {name}" for group, cmd in sorted(self.commands.items())
                     if isinstance(cmd, click.Group) and not cmd.hidden
                     and name in cmd.commands and not cmd.commands[name].hidden]
            if homes:
                raise click.UsageError(f"no command {name!r}: did you mean "
                                       f"{' or '.join(f'`{h}`' for h in homes)}?", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=KataGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--file", "config_file", type=click.Path(dir_okay=False),
              help="Pipeline config (default: .kata-ci.yaml at the repository root).")
@click.option("--store", "store_path", type=click.Path(file_okay=False), envvar="KATA_STORE",
              help="Store location (default: $KATA_STORE, else /var/lib/kata/store for root).")
@click.option("--containerd", "containerd_address", envvar="KATA_CONTAINERD_ADDRESS",
              help="containerd socket (default: the system one if it answers, else kata's own).")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, store_path: str | None,
        containerd_address: str | None) -> None:
    """Kata CI: container-native pipelines with a content-addressed store."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    ctx.obj["store_path"] = store_path
    ctx.obj["containerd_address"] = containerd_address


for _module in (config_cmds, store_cmds, image_cmds, run_cmds, history_cmds, doctor_cmds):
    _module.register(cli)

from . import hooks_cmds, remote_cmds, web_cmds, worker_cmds  # noqa: E402

hooks_cmds.register(cli)
remote_cmds.register(cli)
web_cmds.register(cli)
worker_cmds.register(cli)


def _report(reason: str, message: str, code: int) -> int:
    click.echo(f"error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kata`` console script."""
    from store.errors import StoreError

    # A short-lived process that builds a few hundred thousand long-lived objects (a
    # 1,000-step graph, its records): with the default gen-0 threshold (700 allocations)
    # the cyclic collector walked them over and over (6% of a cached run). Cycles are
    # still collected, 50x less often.
    gc.set_threshold(35_000, 10, 10)

    from kata.client import run_if_served

    try:
        # not root: a command kata's server runs goes there (SECURITY.md, "Group kata")
        run_if_served(sys.argv[1:] if argv is None else argv)
        cli.main(args=argv, prog_name="kata", standalone_mode=False)
    except KataError as err:
        sys.exit(_report(err.reason, str(err), err.exit_code))
    except StoreError as err:
        sys.exit(_report(err.reason, err.message, 1))
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2 if isinstance(err, click.UsageError) else err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as err:  # a full disk, a vanished directory: said, never a traceback
        where = f" ({err.filename})" if err.filename else ""
        sys.exit(_report("os.error", f"{err.strerror or err}{where}", 1))
    sys.exit(0)


__all__ = ["cli", "main", "__version__"]
