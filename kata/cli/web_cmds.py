"""`kata web`: the dashboard over the store's records (kata.web)."""

from __future__ import annotations

from pathlib import Path

import click

from kata.errors import KataError


def register(cli: click.Group) -> None:
    """Add this module's commands to the root group."""
    cli.add_command(web)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress  # here: every kata command imports this module

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in file ``path`` (surrounding blanks dropped): KataError web.bad_token
    (exit 2) when unreadable, empty or shorter than 16 characters."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise KataError("web.bad_token", f"cannot read the token file {path}: "
                        f"{getattr(err, 'strerror', None) or err}", obj=path, exit_code=2) from err
    if len(token) < 16 or any(c.isspace() for c in token):
        raise KataError("web.bad_token", f"the token in {path} must be at least 16 characters "
                        "without blanks (e.g. `openssl rand -hex 24 > FILE`)", obj=path,
                        exit_code=2)
    return token


def check_tls(cert_file: str | None, key_file: str | None) -> None:
    """Check that ``cert_file`` (a PEM certificate chain, the server's first) and
    ``key_file`` (its unencrypted PEM private key) load as one pair, as uvicorn will load
    them (``ssl.SSLContext.load_cert_chain``): KataError web.bad_tls (exit 2) naming the
    file and the fix when only one is given, either is unreadable, or they do not match.
    Nothing to check when neither is given."""
    import ssl  # here: every kata command imports this module

    if cert_file is None and key_file is None:
        return
    if cert_file is None or key_file is None:
        given = "--tls-cert" if cert_file is not None else "--tls-key"
        missing = "--tls-key" if cert_file is not None else "--tls-cert"
        raise KataError("web.bad_tls", f"{given} needs {missing} too: the certificate and "
                        "its private key, both PEM files", obj=given, exit_code=2)
    for path in (cert_file, key_file):
        try:
            Path(path).read_bytes()
        except OSError as err:
            raise KataError("web.bad_tls", f"cannot read {path}: {err.strerror or err}",
                            obj=path, exit_code=2) from err
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # a key with a passphrase would prompt on the terminal: refuse it instead
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as err:
        raise KataError("web.bad_tls", f"{cert_file} and {key_file} are not a PEM "
                        f"certificate and its unencrypted private key ({err.reason or err}): "
                        "give the server's certificate (its chain after it) and the key it "
                        "was issued for", obj=cert_file, exit_code=2) from err


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8420, show_default=True,
              help="Port to listen on (0: any free port; the URL is printed).")
@click.option("--token", "token_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Require the token in FILE: `Authorization: Bearer TOKEN`, or a browser "
              "logs in once at /login (a cookie).")
@click.option("--tls-cert", "cert_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Serve https with this PEM certificate (its chain after it); needs "
              "--tls-key.")
@click.option("--tls-key", "key_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The unencrypted PEM private key of --tls-cert.")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, token_file: str | None,
        cert_file: str | None, key_file: str | None) -> None:
    """Serve the dashboard: runs, a run's graph, timeline and logs, runs in progress, and
    cache trends, read from the store (docs/web.md)."""
    import socket

    import uvicorn

    from kata.cli.store_cmds import existing_state_dir, open_store
    from kata.web.app import create_app

    if not is_loopback(host) and token_file is None:
        raise click.UsageError(f"--host {host} serves other machines: give --token FILE too "
                               "(without it kata web listens on 127.0.0.1 only)")
    token = read_token(token_file) if token_file is not None else None
    check_tls(cert_file, key_file)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections queue from now on: the printed URL answers
    except OSError as err:
        sock.close()
        raise KataError("web.bind", f"cannot listen on {host}:{port}: {err.strerror or err}",
                        obj=f"{host}:{port}", exit_code=1) from err
    # it only reads: a store this user cannot write (a read-only mount, another user's)
    # is read through a private index, as `kata runs` reads it
    store = open_store(ctx, read_only=True)
    try:
        # the runs in progress are in the store's own state dir, not the private one a
        # read-only store was given (readable or not: then none are listed)
        live_dir = existing_state_dir(ctx) if store.read_only else store.state_dir
        app = create_app(store, token=token, state_dir=live_dir or store.state_dir)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if cert_file is not None else "http"
        click.echo(f"kata web: serving {scheme}://{shown}:{bound}/ (store {store.root}); "
                   "Ctrl-C stops", err=True)
        if cert_file is None and not is_loopback(host):
            click.echo("warning: other machines reach this over plain http, where the token "
                       "crosses the network in the clear: give --tls-cert and --tls-key, or "
                       "put an https reverse proxy in front", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=2,
                                               ssl_certfile=cert_file, ssl_keyfile=key_file))
        server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()
