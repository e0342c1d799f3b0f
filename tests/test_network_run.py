"""Step networking on a real containerd: default (CNI bridge + NAT), none, host.

The test runs a TCP server on the host side of the bridge (its gateway address, a free
port) or on the host's loopback, and steps try to reach it.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from kata.runtimes.base import StepSpec

pytestmark = pytest.mark.integration


class TokenServer:
    """Answers every connection with a token line; bound to (host, a free port)."""

    def __init__(self, host: str) -> None:
        self.token = secrets.token_hex(6)
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(self.token.encode() + b"\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def run(rt, digest: str, script: str, network: str) -> tuple[int, list[bytes]]:
    lines: list[bytes] = []
    status = rt.run(StepSpec(image=digest, argv=("sh", "-c", script), network=network),  # type: ignore[arg-type]
                    lambda _s, line: lines.append(line), threading.Event())
    return status, lines


def bridge_gateway(rt, digest: str) -> str:
    """The host's address on kata's bridge (made by the first step of mode default)."""
    status, _ = run(rt, digest, "true", "default")
    assert status == 0
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", rt.network.bridge],
                         capture_output=True, text=True, check=True).stdout
    addr = out.split("inet ")[1].split()[0]
    return str(ipaddress.ip_interface(addr).ip)


@pytest.fixture
def gateway_server(clean_runtime, busybox_digest) -> Iterator[TokenServer]:
    server = TokenServer(bridge_gateway(clean_runtime, busybox_digest))
    yield server
    server.close()


def test_default_reaches_a_server_on_the_bridge(clean_runtime, busybox_digest, gateway_server):
    s = gateway_server
    status, lines = run(clean_runtime, busybox_digest,
                        f"nc -w 5 {s.host} {s.port} </dev/null",
                        "default")
    assert status == 0, lines
    assert lines[0] == s.token.encode()


def test_default_has_loopback(clean_runtime, busybox_digest):
    script = "nc -ll -p 9000 -e echo on-lo & sleep 0.3; nc 127.0.0.1 9000 </dev/null; kill %1"
    status, lines = run(clean_runtime, busybox_digest, script, "default")
    assert status == 0 and lines == [b"on-lo"]


def test_none_cannot_reach_it(clean_runtime, busybox_digest, gateway_server):
    s = gateway_server
    status, lines = run(clean_runtime, busybox_digest,
                        f"nc -w 2 {s.host} {s.port} </dev/null", "none")
    assert status != 0
    assert s.token.encode() not in lines


def test_host_reaches_the_hosts_loopback(clean_runtime, busybox_digest):
    server = TokenServer("127.0.0.1")
    try:
        status, lines = run(clean_runtime, busybox_digest,
                            f"nc -w 5 127.0.0.1 {server.port} </dev/null", "host")
        assert status == 0 and lines == [server.token.encode()]
        status, lines = run(clean_runtime, busybox_digest,
                            f"nc -w 2 127.0.0.1 {server.port} </dev/null", "default")
        assert status != 0 and server.token.encode() not in lines  # not the host's loopback
    finally:
        server.close()


def test_parallel_default_steps_listen_on_the_same_port(clean_runtime, busybox_digest):
    tokens = [secrets.token_hex(4) for _ in range(2)]

    def one(token: str) -> tuple[int, list[bytes]]:
        script = (f"nc -ll -p 8080 -e echo {token} & sleep 1; "
                  "nc 127.0.0.1 8080 </dev/null; kill %1")
        return run(clean_runtime, busybox_digest, script, "default")

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, tokens))
    for token, (status, lines) in zip(tokens, results):
        assert status == 0 and lines == [token.encode()]


def test_a_finished_steps_namespace_is_reused_clean_and_released_on_drain(clean_runtime,
                                                                           busybox_digest):
    """The next "default" step of the runtime gets the namespace a finished step had (a CNI
    setup saved), with nothing of that step left in it: its listener died with it, and it
    could not change the namespace (no CAP_NET_ADMIN). Draining tears the idle ones down."""
    first = ("readlink /proc/self/ns/net; nc -ll -p 9000 -e echo left-over & sleep 0.2; "
             "ip link set lo down 2>/dev/null && echo lo-down; ip route del default 2>/dev/null "
             "&& echo route-deleted; true")
    status, lines = run(clean_runtime, busybox_digest, first, "default")
    assert status == 0 and len(lines) == 1, lines  # neither change was allowed
    ns = lines[0]
    deadline = time.monotonic() + 10  # the step's release runs in the background
    while clean_runtime.netns_pool.idle == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert clean_runtime.netns_pool.idle == 1
    second = ("readlink /proc/self/ns/net; nc -w 1 127.0.0.1 9000 </dev/null 2>/dev/null || echo nobody; "
              "ip route | grep -c ^default")
    status, lines = run(clean_runtime, busybox_digest, second, "default")
    assert status == 0 and lines == [ns, b"nobody", b"1"], lines
    while clean_runtime.netns_pool.idle == 0 and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    # idle in a live pool is held on purpose, not a leftover (another runtime of this
    # process, e.g. a test's second one, must not count it)
    assert clean_runtime.netns_pool.idle == 1 and clean_runtime.network.leftovers() == []
    clean_runtime.drain()
    assert clean_runtime.netns_pool.idle == 0 and clean_runtime.network.leftovers() == []
