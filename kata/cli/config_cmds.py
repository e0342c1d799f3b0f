"""`kata` commands: config."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(version)


@click.command()
def version() -> None:
    """Print version, Python version and platform."""
    import platform

    from kata import __version__

    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    click.echo(f"kata-ci v{__version__} (python {platform.python_version()}, linux/{machine})")
