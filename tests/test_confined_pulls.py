"""An untrusted run's image pulls reach public addresses only (SECURITY.md, "Image pulls").

The pipeline an untrusted ref pushes names its images, and kata pulls them from the host's
own network namespace before any container exists. Without a rule, `image:
127.0.0.1:PORT/x` makes the server send requests to its own loopback services (SSRF). The
confined client refuses, before a byte is sent, every connection whose address is not
public (the registry itself, a redirect's target, a token realm), unless the administrator
declared the host under `registries:`. Each attack below is checked against a real
listening socket that must see no connection at all.
"""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kata.errors import KataError
from kata.model import ImageRef
from kata.runtimes.containerd.config import RegistryConfig, RuntimeConfig
from kata.runtimes.containerd.registry import RegistryClient, _public
from support.cli import KataProcess
from support.images import busybox_layer, files_layer, make_image
from support.listeners import LoopbackListener
from support.registry import docker_registry, push_image


@pytest.fixture
def listener() -> Iterator[LoopbackListener]:
    with LoopbackListener() as lst:
        yield lst


@contextmanager
def answering(status: int, headers: dict[str, str]) -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1 answering every GET with ``status`` and ``headers``
    (a redirect, an auth challenge); yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def refused(client: RegistryClient, ref: str) -> KataError:
    with pytest.raises(KataError) as info:
        client.fetch_manifest(ImageRef.parse(ref))
    assert info.value.reason == "image.refused", info.value
    assert info.value.exit_code == 2
    return info.value


@pytest.mark.parametrize("address, public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("::ffff:127.0.0.1", False), ("fd00::1", False), ("fe80::1%lo", False),
    ("224.0.0.1", False), ("8.8.8.8", True), ("2606:4700::1111", True),
])
def test_only_public_unicast_addresses_are_public(address, public):
    assert _public(address) is public


def test_a_loopback_registry_gets_no_connection(listener):
    client = RegistryClient(RuntimeConfig(), confined=True)
    err = refused(client, f"127.0.0.1:{listener.port}/kata/x:1")
    assert f"127.0.0.1:{listener.port}" in err.message and "registries:" in err.message
    assert listener.count == 0
    # the same request from a trusted run connects (the listener closes it at once)
    trusted = RegistryClient(RuntimeConfig())
    with pytest.raises(KataError):
        trusted.fetch_manifest(ImageRef.parse(f"127.0.0.1:{listener.port}/kata/x:1"))
    assert listener.count >= 1


def test_a_name_resolving_to_loopback_is_checked_where_it_connects(listener, monkeypatch):
    """The address is judged when the connection is made, not from an earlier lookup: a
    name that resolves to a public address first and to 127.0.0.1 next (DNS rebinding)."""
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"] + ["127.0.0.1"] * 10)

    def fake(host, port, *args, **kw):  # noqa: ANN001, ANN202
        if host == "registry.rebind.test":
            return real(next(answers), port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert socket.getaddrinfo("registry.rebind.test", 80)[0][4][0] == "93.184.216.34"
    config = RuntimeConfig(registries={f"registry.rebind.test:{listener.port}":
                                       RegistryConfig(plain_http=True)})
    # declared: the administrator's choice, connected as named
    assert RegistryClient(config, confined=True).confined
    undeclared = RegistryClient(RuntimeConfig(registries={
        "other.test": RegistryConfig()}), confined=True)
    err = refused(undeclared, f"registry.rebind.test:{listener.port}/kata/x:1")
    assert "127.0.0.1" in err.message
    assert listener.count == 0


@pytest.mark.parametrize("kind", ["redirect", "token realm"])
def test_a_declared_registry_cannot_send_the_client_to_loopback(listener, kind):
    """A registry the administrator allowed still cannot point the client elsewhere: a
    307 to, or a bearer realm on, an undeclared loopback address is refused."""
    target = f"http://127.0.0.1:{listener.port}/secret"
    headers = ({"Location": target} if kind == "redirect" else
               {"WWW-Authenticate": f'Bearer realm="{target}",service="x"'})
    with answering(307 if kind == "redirect" else 401, headers) as port:
        host = f"127.0.0.1:{port}"
        config = RuntimeConfig(registries={host: RegistryConfig(plain_http=True)})
        refused(RegistryClient(config, confined=True), f"{host}/kata/x:1")
    assert listener.count == 0


def test_a_proxy_is_refused_for_confined_pulls(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    with pytest.raises(KataError) as info:
        RegistryClient(RuntimeConfig(), confined=True)
    assert info.value.reason == "image.refused" and "proxy" in info.value.message


@pytest.mark.integration
def test_an_untrusted_run_cannot_pull_from_the_hosts_loopback(tmp_path, containerd_daemon,
                                                              runtime):
    """End to end with a real docker-registry on 127.0.0.1: an untrusted run naming it
    fails with exit 2 and the registry logs no request; once the administrator declares
    it, the untrusted run pulls and runs; a trusted run pulls without a declaration."""
    repo = tmp_path / "repo"
    repo.mkdir()
    host_config = tmp_path / "kata-config.yaml"
    host_config.write_text("{}\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        mark = secrets.token_hex(5)
        ref = f"{host}/kata/confined{mark}:1"
        push_image(url, f"kata/confined{mark}", "1",
                   make_image([busybox_layer(), files_layer({"/etc/mark": mark.encode()})], ref))
        (repo / ".kata-ci.yaml").write_text(json.dumps({
            "pipeline": "confined",
            "steps": [{"name": "probe", "image": ref, "commands": ["cat /etc/mark"]}]}))
        log = tmp_path / "registry.log"
        before = log.read_text().count("/v2/kata/confined")
        out = kata("run", "--untrusted", KATA_CONFIG=str(host_config))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "not a public address" in out.stderr and host in out.stderr, out.stderr
        assert log.read_text().count("/v2/kata/confined") == before  # nothing arrived

        host_config.write_text(json.dumps({"registries": {host: {"plain_http": True}}}))
        allowed = kata("run", "--untrusted", KATA_CONFIG=str(host_config))
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert f"probe | {mark}" in allowed.stdout

        (repo / ".kata-ci.yaml").write_text(json.dumps({
            "pipeline": "confined",
            "steps": [{"name": "probe2", "image": ref, "commands": ["cat /etc/mark"]}]}))
        host_config.write_text("{}\n")
        trusted = kata("run", "--pull", KATA_CONFIG=str(host_config))
        assert trusted.returncode == 0, trusted.stdout + trusted.stderr
        assert f"probe2 | {mark}" in trusted.stdout
