"""``kata worker``: run the steps a remote executor leases to this machine (issue 13).

    kata worker --executor grpc://HOST:PORT [--instance NAME] [--slots N] [--name BOT]
                [--state-dir DIR] [--logstream grpc://HOST:PORT] [--blob-cache MIB]

It runs until SIGTERM or SIGINT (what it was running is stopped and its leases go back
to the scheduler). See ``kata.executor.worker`` and docs/remote.md.

    kata logstream --listen HOST:PORT

serves the Log Stream API (``kata.executor.logstream``) for a scheduler that creates log
streams but serves none (BuildGrid 0.4: its ``logstream: {url: …}`` option), so workers
can stream a step's output to ``kata run`` while it runs. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import functools
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import click

from kata.errors import KataError


def register(cli: click.Group) -> None:
    cli.add_command(worker)
    cli.add_command(logstream_server)


@click.command()
@click.option("--executor", "url", required=True, metavar="URL",
              help="The REAPI scheduler's Bots service: grpc://HOST:PORT (grpcs:// for TLS).")
@click.option("--instance", default=None, metavar="NAME",
              help="The REAPI instance name (default: the host config's remote.instance, "
              "else the unnamed instance).")
@click.option("--slots", default=1, type=click.IntRange(1, 256), metavar="N",
              help="Steps run at once (default 1).")
@click.option("--name", "bot_name", metavar="BOT",
              help="This worker's bot id, unique per scheduler (default: HOST-PID).")
@click.option("--state-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Where this worker's own containerd and input roots live (default: the "
              "host config's containerd.state_dir; with --containerd, that daemon).")
@click.option("--poll", default=20.0, type=click.FloatRange(1, 600), metavar="SECONDS",
              help="How long one UpdateBotSession waits for work (keep it below the "
              "scheduler's bot-session-keepalive-timeout; default 20).")
@click.option("--logstream", metavar="URL",
              help="Where the LogStream service of the scheduler's log streams is (the step's "
              "output goes there while it runs): grpc://HOST:PORT (default: the executor).")
@click.option("--blob-cache", default=64, type=click.IntRange(0, 1 << 20), metavar="MIB",
              help="Memory for the blobs this worker read or sent, so a step's input root "
              "is fetched only where it is new (a chain's is mostly the last step's "
              "output); 0: off (default 64).")
@click.pass_context
def worker(ctx: click.Context, url: str, instance: str | None, slots: int,
           bot_name: str | None, state_dir: str | None, poll: float,
           logstream: str | None, blob_cache: int) -> None:
    """Run steps leased by a remote executor (the Remote Workers API) in containers. The
    host config's remote: section gives the TLS files, token file and instance, as for
    `kata run --remote-executor` (docs/remote.md); its worker: section what an action may
    do here (worker.allow_host_network, default false: SECURITY.md)."""
    from kata.executor.worker import WORK_PREFIX, Worker, default_name, sweep_dead_workdirs
    from procs import pid_tag
    from procs.leftovers import force_rmtree
    from kata.remote.config import load_remote_config, parse_url
    from kata.runtimes.containerd import ContainerdRuntime

    parse_url(url, where="--executor")  # a bad URL is exit 2 before anything starts
    if logstream is not None:
        parse_url(logstream, where="--logstream")
    # the flags over the host config's remote: section (its TLS files and token come too;
    # an unreadable one is exit 2 here)
    remote = load_remote_config(url, instance, key="executor")
    assert remote is not None
    from kata.executor.admit import WorkerPolicy

    policy = WorkerPolicy.from_host_config()  # its worker: section; a bad one is exit 2
    instance = remote.instance
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kata worker: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    obj = ctx.find_root().obj or {}
    address = obj.get("containerd_address")
    restart: Callable[[], object] | None = None  # starts its own containerd again
    if address is None and state_dir is not None:
        # --state-dir names this worker's own containerd: it wins over the host config's
        # containerd.address (which connect() would take, with this dir's mount roots)
        from kata.runtimes.containerd.daemon import daemon_paths, ensure_daemon

        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o711)
        except OSError as err:
            raise KataError("worker.bad_state_dir", f"--state-dir {state_dir}: cannot create "
                            f"it: {err.strerror or err}", obj=state_dir, exit_code=2) from None
        address = ensure_daemon(daemon_paths(state_dir))
        restart = functools.partial(ensure_daemon, daemon_paths(state_dir))
    runtime = ContainerdRuntime.connect(address=address, state_dir=state_dir)
    # an Action names its image's registry: public addresses and declared registries only,
    # unless the host config says otherwise (admit.WorkerPolicy, SECURITY.md)
    runtime.confined_pulls = not policy.allow_private_registries
    stop = threading.Event()
    got: list[int] = []  # the signal that stopped it (said in its last line)

    def on_signal(signo: int, _frame: object) -> None:
        got.append(signo)
        stop.set()

    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, on_signal)
    name = bot_name or default_name()
    own_root = state_dir is None
    if own_root:  # what killed workers left in the temp directory goes first
        sweep_dead_workdirs(Path(tempfile.gettempdir()), WORK_PREFIX)
    work_root = Path(state_dir) / "worker" if state_dir else Path(
        tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{pid_tag()}-"))
    click.echo(f"kata worker {name}: {slots} slot(s), executor {url}"
               f"{' instance ' + instance if instance else ''}, containerd "
               f"{runtime.client.address}", err=True)
    click.echo(f"kata worker {name}: network: host "
               f"{'allowed' if policy.allow_host_network else 'refused'}, image pulls from "
               f"{'any address' if policy.allow_private_registries else 'public or declared registries only'}"
               " (the host config's worker: section)", err=True)
    try:
        Worker(remote, runtime, name=name, slots=slots,
               work_root=work_root, poll=poll, logstream=logstream,
               containerd=runtime.client.address, blob_cache=blob_cache << 20,
               restart_containerd=restart, policy=policy).serve(stop)
    finally:
        runtime.close()
        if own_root:
            force_rmtree(str(work_root))
    if got:  # a clean stop: its leases handed back, its steps' containers removed
        click.echo(f"kata worker {name}: stopped on {signal.Signals(got[0]).name}", err=True)


@click.command(name="logstream")
@click.option("--listen", default="127.0.0.1:50052", show_default=True, metavar="HOST:PORT",
              help="Where to serve the Log Stream API and its ByteStream (port 0: any free "
              "port, printed on stderr).")
@click.option("--keep", default=300.0, type=click.FloatRange(1, 86400), metavar="SECONDS",
              show_default=True, help="How long a finished stream stays readable.")
def logstream_server(listen: str, keep: float) -> None:
    """Serve live step output (the Log Stream API) for a remote executor's workers."""
    from kata.executor.logstream import serve

    _check_listen(listen)
    stop = threading.Event()
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, lambda *_: stop.set())
    try:
        server, port = serve(listen, keep_finished=keep)
    except RuntimeError as err:
        raise click.UsageError(f"--listen: {err}") from None
    click.echo(f"kata logstream: serving on port {port}", err=True)
    try:
        stop.wait()
    finally:
        server.stop(1.0).wait(2.0)


def _check_listen(listen: str) -> None:
    """Refuse a ``--listen`` that is not HOST:PORT, names no host, or cannot be bound, with
    the operating system's reason (UsageError, exit 2), before gRPC tries it and prints its
    core's log line."""
    import socket

    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise click.UsageError(f"--listen: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:50052; "
                               "port 0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
    except OSError as err:
        raise click.UsageError(f"--listen: cannot listen on {listen}: "
                               f"{err.strerror or err}") from None
