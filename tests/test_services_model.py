"""Services in the config, the derivation and the pod's probes (no containerd)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from kata.compile import compile_pipeline
from kata.derivation import Derivation, ServiceDrv
from kata.errors import KataError
from kata.loader import load_text
from kata.model import Duration, Ready

BASE = """\
pipeline: p
steps:
  - name: it
    image: alpine:3.19
    inputs: [x]
    commands: [go test]
    services:
      - name: db
        image: postgres:16-alpine
{extra}
"""


def load(extra: str = ""):
    return load_text(BASE.format(extra=textwrap.indent(textwrap.dedent(extra), " " * 8)),
                     file="c.yaml")


def service(extra: str = ""):
    return load(extra).steps[0].services[0]


def drv_hash(extra: str, repo: Path) -> str:
    g = compile_pipeline(load(extra), repo_root=repo,
                         resolver=lambda ref: "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest())
    return g.nodes["it"].drv_hash


@pytest.mark.parametrize("text, ready", [
    ("ready: {tcp: 5432}", Ready(kind="tcp", target="5432")),
    ("ready: {http: 'http://localhost:8080/health', timeout: 90s}",
     Ready(kind="http", target="http://localhost:8080/health", timeout=Duration(millis=90_000))),
    ("ready: {command: pg_isready, timeout: 5}",
     Ready(kind="command", target="pg_isready", timeout=Duration(millis=5000))),
])
def test_ready_forms(text, ready) -> None:
    assert service(text).ready == ready


def test_defaults_and_other_fields() -> None:
    s = service()
    assert s.ready is None and s.entrypoint == () and s.secrets == () and s.commands == ()
    s = service("entrypoint: [redis-server, --port, '7000']\nsecrets: [DB_PASSWORD]\n")
    assert s.entrypoint == ("redis-server", "--port", "7000") and s.secrets == ("DB_PASSWORD",)


@pytest.mark.parametrize("text, reason", [
    ("ready: {tcp: 5432, http: 'http://x/'}", "config.value"),
    ("ready: {timeout: 5s}", "config.value"),
    ("ready: {tcp: 70000}", "config.value"),
    ("ready: {tcp: db}", "config.type"),
    ("ready: {http: 'localhost:80/'}", "config.value"),
    ("ready: {http: 'http://localhost:99999/'}", "config.value"),
    ("ready: {command: ''}", "config.value"),
    ("ready: {tcp: 1, timeout: 0s}", "config.value"),
    ("ready: {udp: 53}", "config.unknown_key"),
    ("commands: [x]\nentrypoint: [y]", "config.value"),
    ("secrets: ['not a name']", "config.value"),
])
def test_bad_service_fields(text, reason) -> None:
    with pytest.raises(KataError) as info:
        service(text)
    assert info.value.reason == reason
    assert info.value.position is not None


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "x").write_text("x\n")
    return root


def test_what_a_service_is_made_of_is_in_the_key(repo) -> None:
    base = drv_hash("", repo)
    variants = ["ready: {tcp: 5432}", "ready: {tcp: 5433}", "ready: {tcp: 5432, timeout: 5s}",
                "ready: {command: pg_isready}", "entrypoint: [postgres]", "commands: [postgres]",
                "env: {A: '1'}", "secrets: [DB_PASSWORD]"]
    hashes = [drv_hash(v, repo) for v in variants]
    assert len({base, *hashes}) == len(variants) + 1


def test_service_derivation_round_trips(repo) -> None:
    g = compile_pipeline(load("ready: {http: 'http://db/'}\nentrypoint: [a, b]\nsecrets: [Z, A]"),
                         repo_root=repo, resolver=lambda ref: "sha256:" + "1" * 64)
    d = g.nodes["it"].derivation
    (s,) = d.services
    assert s.ready == ("http", "http://db/", 60_000) and s.secrets == ("A", "Z")
    import msgpack

    _, body = msgpack.unpackb(d.encode())
    assert Derivation.from_obj(body) == d
    # a record written before ready/entrypoint/secrets existed still decodes
    old = {"commands": [], "env": [], "image": None, "name": "db"}
    assert ServiceDrv.from_obj(old) == ServiceDrv(name="db", image=None)


# -- probes ------------------------------------------------------------------------------

def test_default_readiness_is_the_first_exposed_tcp_port() -> None:
    from kata.runtimes.base import Readiness, ServiceSpec
    from kata.runtimes.containerd.images import RunImage
    from kata.runtimes.containerd.pod import default_readiness

    def img(*ports: str) -> RunImage:
        return RunImage(manifest="m", chain_id="c", env=(), workdir="/", user="",
                        exposed_ports=ports)

    svc = ServiceSpec(name="s", image="sha256:" + "0" * 64)
    assert default_readiness(svc, img("53/udp", "8080/tcp", "9000/tcp")) == \
        Readiness(kind="tcp", target="8080")
    assert default_readiness(svc, img()) is None
    declared = Readiness(kind="command", target="true")
    from dataclasses import replace

    assert default_readiness(replace(svc, ready=declared), img("1/tcp")) is declared


def test_tcp_and_http_probes_in_the_current_netns() -> None:
    from kata.runtimes.containerd.pod import http_probe, in_netns, tcp_probe

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        assert in_netns(None, lambda: tcp_probe(port))
        assert in_netns(None, lambda: http_probe(f"http://db:{port}/health"))
        assert not in_netns(None, lambda: http_probe(f"http://db:{port}/other"))
        assert not http_probe("http://db:99999/")
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not tcp_probe(closed)


def test_joining_a_missing_netns_is_an_error() -> None:
    from kata.runtimes.containerd.pod import in_netns

    with pytest.raises(KataError) as info:
        in_netns("/nonexistent/netns", lambda: True)
    assert info.value.reason == "runtime.network_failed"


def test_a_service_user_is_loaded_and_hashed_only_when_given(tmp_path):
    """Issue 14: `user:` on a service enters the key; a service without one keeps its hash."""
    from kata.compile import compile_pipeline
    from kata.derivation import ServiceDrv
    from kata.loader import load_text

    base = ("steps:\n  - name: t\n    image: alpine\n    services:\n"
            "      - name: db\n        image: postgres:16\n")
    digest = "sha256:" + "d" * 64
    plain = compile_pipeline(load_text(base), resolver=lambda r: digest, repo_root=tmp_path)
    mine = compile_pipeline(load_text(base + "        user: '999:999'\n"),
                            resolver=lambda r: digest, repo_root=tmp_path)
    assert mine.pipeline.steps[0].services[0].user == "999:999"
    assert None not in (plain.nodes["t"].drv_hash, mine.nodes["t"].drv_hash)
    assert plain.nodes["t"].drv_hash != mine.nodes["t"].drv_hash
    assert "user" not in ServiceDrv(name="db", image=digest).to_obj()
    svc = mine.nodes["t"].derivation.services[0]
    assert ServiceDrv.from_obj(svc.to_obj()) == svc


def test_service_names_differing_only_by_case_are_one_host_name() -> None:
    """Found by a review: services `db` and `DB` in one step loaded, yet a name is the
    service's host name and host names are case-insensitive (RFC 4343): `db` reached
    whichever /etc/hosts listed first."""
    from kata.errors import KataError
    from kata.loader import load_text

    with pytest.raises(KataError) as info:
        load_text("steps:\n  - name: a\n    image: x\n    services:\n"
                  "      - {name: db, image: y}\n      - {name: DB, image: y}\n", file="c.yaml")
    assert info.value.reason == "config.duplicate_key"
    assert "'DB' is the host name of service 'db' too" in info.value.message
    assert (info.value.position.line, info.value.position.column) == (6, 16)
