"""Services on a real containerd: a pod per step, readiness, failures, logs, cleanup.

The servers are busybox's ``nc`` and ``httpd``, and a perl TCP server in the Debian minbase
image made with mmdebstrap (minbase has no python3 for ``http.server``; adding it needs
a Debian mirror, and the tests run offline). Ports inside a pod's own network namespace may be fixed: no two pods share one.
Every test ends with kata's namespace holding nothing but images (clean_runtime).
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from kata.errors import KataError
from kata.runtimes.base import CANCEL_EXIT, Readiness, ServiceSpec, StepSpec
from support.images import busybox_layer, make_image, write_oci_archive
from support.procs import kill_once_started

pytestmark = pytest.mark.integration

# a shell as PID 1 with a TERM trap stops at once (a bare PID 1 ignores SIGTERM)
SERVE = "trap 'exit 0' TERM; {} & wait"


class Out:
    """Step and service output, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.step: list[bytes] = []
        self.services: dict[str, list[bytes]] = {}

    def sink(self, stream: str, line: bytes) -> None:
        with self.lock:
            self.step.append(line)

    def service_sink(self, name: str, stream: str, line: bytes) -> None:
        with self.lock:
            self.services.setdefault(name, []).append(line)


def run(rt, digest: str, script: str, services: tuple[ServiceSpec, ...], *,
        network: str = "default", cancel: threading.Event | None = None) -> tuple[int, Out]:
    out = Out()
    status = rt.run(StepSpec(image=digest, argv=("sh", "-c", script), network=network,  # type: ignore[arg-type]
                             services=services),
                    out.sink, cancel or threading.Event(), out.service_sink)
    return status, out


def nc_service(digest: str, name: str, port: int, reply: str, *, delay: float = 0.5,
               ready: Readiness | None = None) -> ServiceSpec:
    cmd = f"echo {name} starting; sleep {delay}; " + SERVE.format(
        f"nc -ll -p {port} -e echo {reply}")
    return ServiceSpec(name=name, image=digest, argv=("sh", "-c", cmd),
                       ready=ready or Readiness(kind="tcp", target=str(port), timeout=20))


def test_tcp_readiness_then_reachable_on_localhost_and_by_name(clean_runtime, busybox_digest):
    token = secrets.token_hex(4)
    svc = nc_service(busybox_digest, "db", 5432, token)
    # no retry in the step: the service must already be listening when the step starts
    status, out = run(clean_runtime, busybox_digest,
                      "nc 127.0.0.1 5432 </dev/null; nc db 5432 </dev/null; cat /etc/hosts",
                      (svc,))
    assert status == 0, out.step
    assert out.step[:2] == [token.encode()] * 2
    assert any(b"db" in line.split() and line.startswith(b"127.0.0.1") for line in out.step)
    assert out.services["db"][0] == b"db starting"  # its own sink, not the step's
    assert b"db starting" not in out.step


def test_http_readiness(clean_runtime, busybox_digest):
    serve = ("mkdir -p /www; sleep 0.7; echo healthy > /www/health; "
             + SERVE.format("httpd -f -p 8080 -h /www"))
    svc = ServiceSpec(name="web", image=busybox_digest, argv=("sh", "-c", serve),
                      ready=Readiness(kind="http", target="http://web:8080/health", timeout=20))
    status, out = run(clean_runtime, busybox_digest,
                      "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc localhost 8080", (svc,))
    assert status == 0, out.step
    assert out.step[0].startswith(b"HTTP/1.") and b" 200" in out.step[0]
    assert out.step[-1] == b"healthy"


def test_command_readiness_runs_inside_the_service(clean_runtime, busybox_digest):
    # ready only once /tmp/ready exists in the *service's* filesystem
    serve = ("nc -ll -p 7000 -e cat /tmp/ready & sleep 1; echo ready-now > /tmp/ready; "
             "trap 'exit 0' TERM; wait")
    svc = ServiceSpec(name="q", image=busybox_digest, argv=("sh", "-c", serve),
                      ready=Readiness(kind="command", target="test -s /tmp/ready", timeout=20))
    status, out = run(clean_runtime, busybox_digest, "nc q 7000 </dev/null", (svc,))
    assert status == 0, out.step
    assert out.step == [b"ready-now"]  # the file existed when the step asked


def test_default_readiness_is_the_first_exposed_port(clean_runtime, tmp_path):
    token = secrets.token_hex(4)
    cmd = ("sh", "-c", "sleep 0.7; " + SERVE.format(f"nc -ll -p 6379 -e echo {token}"))
    img = make_image([busybox_layer()], f"kata.local/exposed-{token}:1", cmd=cmd,
                     exposed_ports=("6379/tcp", "9999/tcp"))
    clean_runtime.import_image(write_oci_archive(img, tmp_path / "img.tar"))
    digest = clean_runtime.resolve_image(img.ref)
    try:
        svc = ServiceSpec(name="cache", image=digest)  # the image's Cmd, no ready:
        status, out = run(clean_runtime, digest, "nc cache 6379 </dev/null", (svc,))
        assert status == 0, out.step
        assert out.step == [token.encode()]
    finally:
        clean_runtime.remove_image(img.ref)


def test_without_exposed_ports_started_is_ready(clean_runtime, busybox_digest):
    svc = ServiceSpec(name="idle", image=busybox_digest,
                      argv=("sh", "-c", "echo idle up; " + SERVE.format("sleep 600")))
    status, out = run(clean_runtime, busybox_digest, "echo step ran", (svc,))
    assert status == 0 and out.step == [b"step ran"]


def test_a_service_that_exits_fails_the_step_with_its_last_lines(clean_runtime, busybox_digest):
    crash = ServiceSpec(name="postgres", image=busybox_digest,
                        argv=("sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 "
                              "19 20 21 22 23 24 25; do echo line $i; done; "
                              "echo 'FATAL: bad config' >&2; exit 3"),
                        ready=Readiness(kind="tcp", target="5432", timeout=30))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "echo must not run", (crash,))
    err = info.value
    assert err.reason == "service.exited" and err.obj == "postgres"
    assert "postgres" in err.message and "FATAL: bad config" in err.message
    assert "line 25" in err.message and "line 2\n" not in err.message  # the *last* lines


def test_a_service_never_ready_fails_after_its_timeout(clean_runtime, busybox_digest):
    stuck = ServiceSpec(name="broker", image=busybox_digest,
                        argv=("sh", "-c", "echo waiting for nothing; " + SERVE.format("sleep 600")),
                        ready=Readiness(kind="tcp", target="5672", timeout=1.0))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "echo must not run", (stuck,))
    assert info.value.reason == "service.not_ready" and info.value.obj == "broker"
    assert "broker" in info.value.message and "waiting for nothing" in info.value.message


def test_a_service_listening_on_another_port_says_which(clean_runtime, busybox_digest):
    """Found on redis-py: `ready: {tcp: 6380}` for a redis-server on 6379 said only "was not
    ready after 5s (tcp 6380)"; the ports it does listen on name the typo."""
    wrong = ServiceSpec(name="redis", image=busybox_digest,
                        argv=("sh", "-c", SERVE.format("nc -ll -p 6379 -e echo pong")),
                        ready=Readiness(kind="tcp", target="6380", timeout=1.5))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "echo must not run", (wrong,))
    assert info.value.reason == "service.not_ready"
    assert "(tcp 6380; the pod listens on tcp 6379)" in info.value.message, info.value.message
    silent = ServiceSpec(name="broker", image=busybox_digest,
                         argv=("sh", "-c", SERVE.format("sleep 600")),
                         ready=Readiness(kind="tcp", target="5672", timeout=1.0))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "echo must not run", (silent,))
    assert "(tcp 5672; nothing in the pod listens on TCP)" in info.value.message


def test_an_http_service_listening_on_another_port_says_which(clean_runtime, busybox_digest):
    """Found by a review: the tcp readiness timeout names the pod's listening ports, but
    an http one on the wrong port (``http://web:8081/health`` for httpd on 8080), the
    same typo, still said only "(http http://web:8081/health)"."""
    web = ServiceSpec(name="web", image=busybox_digest,
                      argv=("sh", "-c", "mkdir -p /www && echo ok > /www/health && "
                            + SERVE.format("httpd -f -p 8080 -h /www")),
                      ready=Readiness(kind="http", target="http://web:8081/health", timeout=1.5))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "echo must not run", (web,))
    assert info.value.reason == "service.not_ready"
    assert "(http http://web:8081/health; the pod listens on tcp 8080)" in info.value.message, \
        info.value.message


def test_listening_tcp_ports_from_proc_net():
    from kata.runtimes.containerd.pod import listening_tcp_ports

    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
           "   0: 00000000:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"
           "   1: 0100007F:1F90 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000 0\n")
    tcp6 = ("  sl  local_address                         remote_address    st\n"
            "   0: 00000000000000000000000000000000:1538 00000000000000000000000000000000:0000 0A\n"
            "   1: 00000000000000000000000000000000:18EB 00000000000000000000000000000000:0000 0A\n")
    assert listening_tcp_ports(tcp, tcp6) == [5432, 6379]


def test_a_failed_command_probe_is_not_ready(clean_runtime, busybox_digest):
    svc = ServiceSpec(name="never", image=busybox_digest, argv=("sh", "-c", SERVE.format("sleep 600")),
                      ready=Readiness(kind="command", target="exit 1", timeout=1.0))
    with pytest.raises(KataError) as info:
        run(clean_runtime, busybox_digest, "true", (svc,))
    assert info.value.reason == "service.not_ready"


def test_cancel_while_waiting_for_readiness(clean_runtime, busybox_digest):
    svc = ServiceSpec(name="slow", image=busybox_digest, argv=("sh", "-c", SERVE.format("sleep 600")),
                      ready=Readiness(kind="tcp", target="1234", timeout=600))
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    try:
        status, out = run(clean_runtime, busybox_digest, "echo no", (svc,), cancel=cancel)
    finally:
        timer.cancel()
    assert status == CANCEL_EXIT and out.step == []


def test_the_step_status_is_returned_and_services_stop_after_it(clean_runtime, busybox_digest):
    svc = nc_service(busybox_digest, "s", 4000, "x", delay=0)
    status, _ = run(clean_runtime, busybox_digest, "exit 7", (svc,))
    assert status == 7


@pytest.mark.parametrize("network", ["none", "host"])
def test_pods_in_other_network_modes(clean_runtime, busybox_digest, network):
    token = secrets.token_hex(4)
    port = 80  # the pod's own netns
    if network == "host":
        import socket

        with socket.socket() as s:  # a free port of the host
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    svc = nc_service(busybox_digest, "svc", port, token, delay=0.2)
    status, out = run(clean_runtime, busybox_digest, f"nc svc {port} </dev/null", (svc,),
                      network=network)
    assert status == 0, out.step
    assert out.step == [token.encode()]


def test_two_pods_with_the_same_port_in_parallel(clean_runtime, busybox_digest):
    tokens = [secrets.token_hex(4) for _ in range(2)]

    def one(token: str) -> tuple[int, Out]:
        svc = nc_service(busybox_digest, "web", 8080, token, delay=0.3)
        # both services listen while both steps run: the step waits so they overlap
        return run(clean_runtime, busybox_digest, "sleep 1; nc web 8080 </dev/null", (svc,))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, tokens))
    for token, (status, out) in zip(tokens, results):
        assert status == 0, out.step
        assert out.step == [token.encode()]


PERL_SERVER = r"""
use IO::Socket::INET;
$| = 1;
$SIG{TERM} = sub { exit 0 };
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => 5000, Listen => 5,
                              ReuseAddr => 1) or die "listen: $!";
print "perl server up\n";
while (my $c = $s->accept) { print $c "debian says hi\n"; close $c; }
"""


def test_a_real_server_from_a_debian_image(clean_runtime, busybox_digest, debian_digest):
    # Debian minbase (mmdebstrap) has no python3, but perl-base: a TCP server in perl,
    # probed with the declared tcp readiness, used from a bash step by name over /dev/tcp
    svc = ServiceSpec(name="api", image=debian_digest, argv=("perl", "-e", PERL_SERVER),
                      ready=Readiness(kind="tcp", target="5000"))
    out = Out()
    status = clean_runtime.run(
        StepSpec(image=debian_digest, argv=("bash", "-c", "exec 3<>/dev/tcp/api/5000; cat <&3"),
                 network="default", services=(svc,)),
        out.sink, threading.Event(), out.service_sink)
    assert status == 0, out.step
    assert out.step == [b"debian says hi"]
    assert out.services["api"] == [b"perl server up"]


def test_a_sigkilled_kata_leaves_a_pod_that_the_next_connect_sweeps(
        containerd_daemon, busybox_digest, runtime, tmp_path):
    import textwrap
    from pathlib import Path

    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys, threading
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.base import ServiceSpec, StepSpec
        rt = ContainerdRuntime.connect(address={containerd_daemon.address!r},
                                       state_dir={str(containerd_daemon.root.parent)!r})
        def sink(stream, line):
            open({str(marker)!r}, "w").write("x")
        svc = ServiceSpec(name="s", image={busybox_digest!r}, argv=("sleep", "1000"))
        rt.run(StepSpec(image={busybox_digest!r}, argv=("sh", "-c", "echo up; sleep 1000"),
                        network="none", services=(svc,)),
               sink, threading.Event(), lambda *a: None)
    """)
    kill_once_started(script, marker)
    left = runtime.leftovers()
    # the step and its service, and the anchors of the killed kata's shared shims
    own = [c for c in left["containers"] if not c.startswith("kata-anchor-")]
    assert len(own) == 2 and len([t for t in left["tasks"] if t in own]) == 2 and left["netns"]
    from kata.runtimes.containerd import ContainerdRuntime

    with ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent)) as rt:
        assert rt.leftovers() == {k: [] for k in left}
    assert not any(Path("/run/netns").glob(left["netns"][0]))


def test_a_service_that_dies_during_the_step_says_so_in_its_log(clean_runtime, busybox_digest):
    # one connection, then it exits: the step kills it by using it
    svc = ServiceSpec(name="flaky", image=busybox_digest,
                      argv=("sh", "-c", "nc -l -p 7000 -e echo hi; echo bye; exit 4"))
    script = ("until nc flaky 7000 </dev/null 2>/dev/null; do sleep 0.05; done; "
              "sleep 1; echo step done")
    status, out = run(clean_runtime, busybox_digest, script, (svc,))
    assert status == 0 and out.step == [b"hi", b"step done"]  # the step decides
    assert out.services["flaky"][-2:] == [
        b"bye", b"kata: service flaky exited while the step ran (exit status 4)"]
