import sys

from kata.client import run_if_served

run_if_served(sys.argv[1:])  # before the CLI's imports: a non-root client needs none of them

from kata.cli import main  # noqa: E402

main()
