"""`kata worker` pointed at a server that will never take it (a cache-only BuildGrid: no
Bots service; an instance the server lacks) says so in one line and exits 2, as any bad
setting does, instead of retrying for ever with a log line every 5 s. Real BuildGrid."""

from __future__ import annotations

import subprocess

import pytest

from support.buildgrid import BuildGridConfig, buildgrid
from support.buildgrid_exec import buildgrid_execution
from support.cli import KataProcess
from support.postgres import postgres_cluster

pytestmark = pytest.mark.integration


def test_a_worker_the_scheduler_can_never_take_exits_2_naming_its_fix(
        tmp_path, containerd_daemon):
    """A fresh admin's mistakes at a worker's first contact (docs/remote.md, "Workers"):
    each error is one line, exit 2, saying which setting is wrong and what to put there,
    not a list of every setting that could be (found following the docs: a cache-only
    BuildGrid's UNIMPLEMENTED read "check --executor, --instance and the token")."""
    kata = KataProcess(tmp_path, store=tmp_path / "store", address=containerd_daemon.address)

    def refusal(url: str, *args: str) -> str:
        try:
            done = subprocess.run([*kata.base, "worker", "--executor", url, *args,
                                   "--name", "wx", "--poll", "5"], cwd=tmp_path,
                                  env=kata.env, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"the worker retried for ever: {err.stderr!r}") from None
        assert done.returncode == 2, done.stderr
        errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "refuses this worker" in errors[0], done.stderr
        assert "Traceback" not in done.stderr
        return errors[0]

    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        for instance in ("main", "nosuch"):  # cache-only: no Bots service for any name
            cache_only = refusal(bg.url, "--instance", instance)
            assert "no Bots service" in cache_only and "!execution" in cache_only, cache_only
            assert "--executor" in cache_only and "token" not in cache_only, cache_only
    with postgres_cluster() as db, buildgrid_execution(tmp_path / "exec", db) as grid:
        unknown = refusal(grid.url, "--instance", "nosuch")  # it serves only ""
        assert "does not know the instance 'nosuch'" in unknown, unknown
        assert "--instance" in unknown and "token" not in unknown, unknown


def test_a_worker_speaking_tls_to_a_plaintext_scheduler_exits_2_saying_grpc(
        tmp_path, containerd_daemon):
    """grpcs:// to a plaintext BuildGrid: the handshake can never succeed, so the worker
    says to use grpc:// and exits 2 at once, without gRPC's own C-core log lines (it used
    to retry every 5 s for ever, each retry with an `ssl_transport_security.cc` line)."""
    kata = KataProcess(tmp_path, store=tmp_path / "store", address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd", BuildGridConfig()) as bg:
        url = bg.url.replace("grpc://", "grpcs://")
        # as from a shell: this test process's own import of kata.remote set it
        env = {k: v for k, v in kata.env.items() if k != "GRPC_VERBOSITY"}
        try:
            done = subprocess.run([*kata.base, "worker", "--executor", url, "--name", "wx",
                                   "--poll", "5"], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"the worker retried for ever: {err.stderr!r}") from None
        assert done.returncode == 2, done.stderr
        errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "use grpc://" in errors[0], done.stderr
        assert "ssl_transport_security" not in done.stderr, done.stderr


def test_a_worker_waiting_for_a_scheduler_that_does_not_answer_says_what_to_check(tmp_path):
    """A wrong --executor port looks like a scheduler not started yet, which the worker
    waits for (docs/remote.md): its first retry line says what to check if it never
    answers, where it used to repeat gRPC's "Connection refused" only."""
    from support.registry import free_port

    kata = KataProcess(tmp_path, store=tmp_path / "store")
    url = f"grpc://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([*kata.base, "worker", "--executor", url, "--name", "wx",
                             "--state-dir", str(tmp_path / "w")], cwd=tmp_path, env=kata.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "retrying" in line:
                break
    finally:
        proc.terminate()
        proc.wait(60)
        # the worker's own containerd outlives it (as `kata daemon`): stopped here, as
        # test_remote_exec.Worker.close does, or every suite run left one running
        from kata.runtimes.containerd.daemon import daemon_paths, stop_daemon

        stop_daemon(daemon_paths(tmp_path / "w"))
        subprocess.run(["umount", "-R", "-l", str(tmp_path / "w")], capture_output=True)
    assert "waiting for it" in lines[-1] and "--executor" in lines[-1], lines
