"""What a team's administrator gets wrong when setting up a remote cache or executor by
docs/remote.md, against a real BuildGrid: each mistake costs one message that names the
setting to change and what to change it to (found by following the docs from scratch)."""

from __future__ import annotations

import json

import pytest
import yaml

from support.buildgrid import BuildGridConfig, buildgrid
from support.cli import KataProcess
from support.images import BUSYBOX_REF, busybox_image, write_oci_archive

pytestmark = pytest.mark.integration


def _repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "admin", "steps": [
        {"name": "s", "image": BUSYBOX_REF, "inputs": ["x"], "commands": ["cat x"]}]}))
    return repo


def test_run_with_a_cache_only_server_as_executor_names_the_scheduler_it_needs(
        tmp_path, containerd_daemon):
    """`--remote-executor` at the cache-only BuildGrid of docs/remote.md (no Execution
    service): the step's failure says so and what to point at, as `kata doctor` does; it
    used to be the bare `UNIMPLEMENTED: Method not found!`."""
    kata = KataProcess(_repo(tmp_path), store=tmp_path / "store",
                       address=containerd_daemon.address)
    imported = kata("image", "import", str(write_oci_archive(busybox_image(),
                                                             tmp_path / "img.tar")))
    assert imported.returncode == 0, imported.stderr
    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        run = kata("run", "--json", "--remote-executor", bg.url, "--remote-instance", "main")
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [json.loads(x) for x in run.stdout.splitlines() if '"fail"' in x]
    message = failed[0]["message"]
    assert "no Execution service" in message and "!execution" in message, message
    assert "--remote-executor" in message, message


def test_a_refused_token_says_which_setting_in_the_runs_warning(tmp_path, containerd_daemon):
    """A BuildGrid with `authorization: jwt` and a host config whose token it refuses (none
    given, or one not signed with its secret): the run's one warning line names
    remote.token_file, as `kata doctor`'s fix does (it used to name only the status)."""
    from test_remote_cas import _self_signed

    key, cert = _self_signed(tmp_path)
    secret = tmp_path / "jwt.secret"
    secret.write_text("the-team-secret\n")
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-a-jwt\n")
    kata = KataProcess(_repo(tmp_path), store=tmp_path / "store",
                       address=containerd_daemon.address)
    kata("image", "import", str(write_oci_archive(busybox_image(), tmp_path / "img.tar")))
    config = BuildGridConfig(tls_key=key, tls_cert=cert, auth_secret=secret)
    with buildgrid(tmp_path / "bgd", config) as bg:
        url = bg.url
        host = tmp_path / "host.yaml"
        for token in ("", f"  token_file: {wrong}\n"):
            host.write_text(f"remote:\n  cache: {url}\n  tls: {{ca: {cert}}}\n{token}")
            run = kata("run", KATA_CONFIG=str(host))
            assert run.returncode == 0, run.stdout + run.stderr
            warnings = [x for x in run.stderr.splitlines() if "warning: remote cache" in x]
            assert len(warnings) == 1, run.stderr
            assert "UNAUTHENTICATED" in warnings[0] and "remote.token_file" in warnings[0], \
                warnings[0]


def test_host_config_mistakes_say_what_to_put_there(tmp_path):
    """`kata doctor` (the first thing an admin runs) on a host config with the mistakes
    made following docs/remote.md: exit 2 naming file:line:column and the fix. A private
    key given as `tls.ca` used to pass the loader and then read, on every run, "Failed to
    create security handshaker" with the fix "start the server or correct the URL"; a
    missing token file did not say what belongs there; `http://` (as bgd's --remote
    takes it) did not say grpc://."""
    from test_remote_cas import _self_signed

    key, cert = _self_signed(tmp_path)
    host = tmp_path / "host.yaml"
    kata = KataProcess(tmp_path, store=tmp_path / "store")

    def error(remote: str) -> str:
        host.write_text(f"remote:\n{remote}")
        done = kata("doctor", KATA_CONFIG=str(host))
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(f"error: {host}:"), done.stderr
        return done.stderr

    said = error(f"  cache: grpcs://127.0.0.1:1\n  tls: {{ca: {key}}}\n")
    assert "remote.tls.ca" in said and "CERTIFICATE" in said and "not a key" in said, said
    said = error(f"  cache: grpcs://127.0.0.1:1\n  tls: {{ca: {cert}, cert: {key}, key: {cert}}}\n")
    assert "remote.tls.cert" in said and "CERTIFICATE" in said, said
    said = error(f"  cache: grpcs://127.0.0.1:1\n  tls: {{ca: {cert}, cert: {cert}, key: {cert}}}\n")
    assert "remote.tls.key" in said and "PRIVATE KEY" in said, said
    said = error(f"  cache: grpc://127.0.0.1:1\n  token_file: {tmp_path / 'none.token'}\n")
    assert "remote.token_file" in said and "write the bearer token there" in said, said
    said = error("  cache: http://127.0.0.1:50051\n")
    assert "grpc://127.0.0.1:50051" in said, said
    said = error("  executor: https://sched.internal:443\n")
    assert "grpcs://sched.internal:443" in said, said
