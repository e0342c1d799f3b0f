"""``python -m kata`` and the ``kata`` console script.

Before the command line is imported: a non-root client hands its command to kata's server
(``kata.client``), and a fully cached ``kata run`` is replayed from its no-op record
(``kata.realise.noop``) when nothing it depends on changed. Everything else is the CLI.
"""

import os
import sys


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:  # Ctrl-C while still importing: one line, never a traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _main() -> None:
    import signal

    # SIGTERM (a CI runner's timeout, `kill`) and SIGHUP (a closed terminal) stop kata as
    # Ctrl-C does, from the start: cleaned up, "interrupted", exit 130; never the default
    # action's silent death halfway (the scheduler, the pulls and the cleanups that hold
    # signals back set their own handlers over these, as they do over SIGINT's)
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, signal.default_int_handler)
    argv = sys.argv[1:]
    if os.geteuid() != 0:  # root runs everything itself (kata.client.target)
        from kata.client import run_if_served

        run_if_served(argv)  # a non-root client needs none of the CLI's imports
    import gc

    gc.disable()  # the replay builds only acyclic values; it ends the process
    from kata.realise.noop import replay

    try:
        status = replay(argv)
    except BrokenPipeError:  # as the CLI: `kata run | head` ends quietly
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if status is not None:
        sys.stdout.flush()
        sys.exit(status)
    gc.enable()
    from kata.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
