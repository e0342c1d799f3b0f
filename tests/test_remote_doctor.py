"""`kata doctor` on a configured remote cache: a real cache-only BuildGrid answers
Capabilities (ok; a warning for an instance it does not serve, and for a port nobody
answers); a token file that cannot be read fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata.remote.config import RemoteConfig, parse_url
from kata.remote.doctor import check_remote
from support.buildgrid import _free_port, buildgrid

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def _config(url: str, **kw) -> RemoteConfig:
    return RemoteConfig(url=url, target=parse_url(url)[0], timeout=5, **kw)


def _doctor(tmp_path: Path, host_config: str) -> dict[str, dict]:
    """`kata doctor --json` with ``host_config`` as the host config: its checks by name."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(host_config)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(tmp_path / "store"),
           "KATA_CONFIG": str(cfg)}
    r = subprocess.run([sys.executable, "-m", "kata", "doctor", "--json"], env=env,
                       capture_output=True, text=True, timeout=120)
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_doctor_asks_the_remote_for_its_capabilities(tmp_path):
    with buildgrid(tmp_path / "bgd") as server:
        ok = check_remote(_config(server.url))
        assert ok.status == "ok" and server.url in ok.detail, ok
        assert "action cache updates enabled" in ok.detail
        wrong = check_remote(_config(server.url, instance="nope"))
        assert wrong.status == "warn" and "INVALID_ARGUMENT" in wrong.detail, wrong
        assert "instance name" in wrong.fix

        checks = _doctor(tmp_path, f"remote:\n  cache: {server.url}\n")
    assert checks["remote-cache"]["status"] == "ok", checks["remote-cache"]
    assert "remote-executor" not in checks


def test_doctor_on_a_remote_that_is_down_or_unusable(tmp_path):
    url = f"grpc://127.0.0.1:{_free_port()}"
    down = check_remote(_config(url))
    assert down.status == "warn" and "UNAVAILABLE" in down.detail and down.fix, down
    bad = check_remote(_config(url, token_file=tmp_path / "missing.token"))
    assert bad.status == "fail" and "missing.token" in bad.detail, bad


def test_doctor_says_an_executor_lacks_the_instance_rather_than_that_it_is_down(tmp_path):
    """A remote.instance the scheduler does not serve (here the cache's instance, which the
    section shares with the executor) is not "start the scheduler": it answered."""
    from support.buildgrid import BuildGridConfig

    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as server:
        check = _doctor(tmp_path, f"remote:\n  executor: {server.url}\n"
                        "  instance: other\n")["remote-executor"]
    assert check["status"] == "fail" and "INVALID_ARGUMENT" in check["detail"], check
    assert "instance name" in check["fix"] and "start the scheduler" not in check["fix"], check


def test_doctor_names_the_fix_for_a_tls_mismatch_and_for_a_hung_remote(tmp_path):
    """A remote that answers, but not in TLS the way the config says, or that accepts the
    connection and never answers, is not "start the server": the fix names what to do."""
    import socket

    from support.buildgrid import BuildGridConfig
    from test_remote_cas import _self_signed

    key, cert = _self_signed(tmp_path)
    with buildgrid(tmp_path / "tls", BuildGridConfig(tls_key=key, tls_cert=cert)) as server:
        unknown_ca = check_remote(_config(server.url, tls=True))  # system roots: not its CA
        assert unknown_ca.status == "warn" and "handshake" in unknown_ca.detail.lower()
        assert "tls.ca" in unknown_ca.fix and "start the server" not in unknown_ca.fix, unknown_ca
        trusted = check_remote(_config(server.url, tls=True, ca=cert))
        assert trusted.status == "ok", trusted
    with buildgrid(tmp_path / "plain") as server:
        url = server.url.replace("grpc://", "grpcs://")
        plaintext = check_remote(_config(url, tls=True))
        assert plaintext.status == "warn", plaintext
        assert "grpc://" in plaintext.fix and "start the server" not in plaintext.fix, plaintext
    with socket.socket() as hung:  # the kernel accepts connections; nothing ever answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"grpc://127.0.0.1:{hung.getsockname()[1]}"
        stuck = check_remote(RemoteConfig(url=url, target=parse_url(url)[0], timeout=1))
    assert stuck.status == "warn" and "DEADLINE_EXCEEDED" in stuck.detail, stuck
    assert "did not answer" in stuck.fix and "start the server" not in stuck.fix, stuck


def test_doctor_names_the_same_fixes_for_the_remote_executor(tmp_path):
    """The executor's check tells a TLS mismatch and a hung scheduler apart from a down one
    as the cache's does (one rule, ``kata.doctor.remote_fix``): "start the scheduler" was
    its answer to all three."""
    import socket

    with buildgrid(tmp_path / "plain") as server:
        url = server.url.replace("grpc://", "grpcs://")
        plaintext = _doctor(tmp_path, f"remote:\n  executor: {url}\n")["remote-executor"]
    assert plaintext["status"] == "fail", plaintext
    assert "grpc://" in plaintext["fix"] and "start the scheduler" not in plaintext["fix"]
    with socket.socket() as hung:  # the kernel accepts connections; nothing ever answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"grpc://127.0.0.1:{hung.getsockname()[1]}"
        stuck = _doctor(tmp_path, f"remote:\n  executor: {url}\n")["remote-executor"]
    assert stuck["status"] == "fail" and "DEADLINE_EXCEEDED" in stuck["detail"], stuck
    assert "did not answer in 5 s" in stuck["fix"] and "scheduler" in stuck["fix"], stuck
    assert "start the scheduler" not in stuck["fix"], stuck
    down = _doctor(tmp_path, f"remote:\n  executor: grpc://127.0.0.1:{_free_port()}\n")
    assert "start the scheduler" in down["remote-executor"]["fix"], down


def test_doctor_names_tls_for_a_plaintext_url_to_a_tls_server(tmp_path):
    """The other mismatch: grpc:// to a server that speaks TLS. It takes the connection and
    closes it ("Socket closed"), and doctor said "start the server" to a running one."""
    from support.buildgrid import BuildGridConfig
    from test_remote_cas import _self_signed

    key, cert = _self_signed(tmp_path)
    with buildgrid(tmp_path / "tls", BuildGridConfig(tls_key=key, tls_cert=cert)) as server:
        url = server.url.replace("grpcs://", "grpc://")
        cache = check_remote(_config(url))
        executor = _doctor(tmp_path, f"remote:\n  executor: {url}\n")["remote-executor"]
    for fix in (cache.fix, executor["fix"]):
        assert "grpcs://" in fix and "start the " not in fix, (cache, executor)


def test_the_executor_check_gives_the_tls_advice_once(tmp_path):
    """A TLS mismatch's advice came twice in `kata doctor`'s remote-executor check: in the
    detail (the gRPC error as kata.remote.cas.wrap words it for a run) and in the fix.
    The detail now says what failed, the fix what to do."""
    from support.buildgrid import BuildGridConfig
    from test_remote_cas import _self_signed

    key, cert = _self_signed(tmp_path)
    with buildgrid(tmp_path / "plain") as server:
        url = server.url.replace("grpc://", "grpcs://")
        plaintext = _doctor(tmp_path, f"remote:\n  executor: {url}\n")["remote-executor"]
    with buildgrid(tmp_path / "tls", BuildGridConfig(tls_key=key, tls_cert=cert)) as server:
        url = server.url.replace("grpcs://", "grpc://")
        tls = _doctor(tmp_path, f"remote:\n  executor: {url}\n")["remote-executor"]
    for check in (plaintext, tls):
        assert check["status"] == "fail", check
        assert "use grpc" in check["fix"], check  # "use grpc:// instead", "use grpcs://"
        assert "use grpc" not in check["detail"], check


def test_the_run_warning_names_a_doctor_command_that_checks_the_flags_remote(tmp_path):
    """`kata run --remote-cache URL` with that remote down warned "`kata doctor` says what
    to fix", yet `kata doctor` checked only the host config's remote (none: no remote
    check at all) and refused --remote-cache. The warning names `kata doctor
    --remote-cache URL`, which checks that remote."""
    from kata.remote.cache import RemoteCache

    url = f"grpc://127.0.0.1:{_free_port()}"
    lines: list[str] = []
    cache = RemoteCache(_config(url), warn=lines.append, backoff=False)
    try:
        assert cache.lookup("a" * 64) is None
    finally:
        cache.close()
    assert any(f"`kata doctor --remote-cache {url}` says what to fix" in ln for ln in lines), lines
    cfg = tmp_path / "config.yaml"
    cfg.write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(tmp_path / "store"),
           "KATA_CONFIG": str(cfg)}
    r = subprocess.run([sys.executable, "-m", "kata", "doctor", "--json", "--remote-cache", url],
                       env=env, capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["remote-cache"]["status"] == "warn" and url in checks["remote-cache"]["detail"]
