"""`kata worker` pointed at a server that will never take it (a cache-only BuildGrid: no
Bots service; an instance the server lacks) says so in one line and exits 2, as any bad
setting does, instead of retrying for ever with a log line every 5 s. Real BuildGrid."""

from __future__ import annotations

import subprocess

import pytest

from support.buildgrid import BuildGridConfig, buildgrid
from support.cli import KataProcess

pytestmark = pytest.mark.integration


def test_a_worker_the_scheduler_can_never_take_exits_2(tmp_path, containerd_daemon):
    kata = KataProcess(tmp_path, store=tmp_path / "store", address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        for args in (("--instance", "main"),      # cache-only: no Bots service
                     ("--instance", "nosuch")):   # an instance it does not have
            try:
                done = subprocess.run([*kata.base, "worker", "--executor", bg.url, *args,
                                       "--name", "wx", "--poll", "5"], cwd=tmp_path,
                                      env=kata.env, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired as err:
                raise AssertionError(f"the worker retried for ever: {err.stderr!r}") from None
            assert done.returncode == 2, done.stderr
            errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
            assert len(errors) == 1 and "refuses this worker" in errors[0], done.stderr
            assert "--instance" in errors[0] and "Traceback" not in done.stderr
