"""What a service costs a step: a pod (shared netns, /etc/hosts, readiness) vs plain steps.

    python3 bench/services_bench.py [N]

Starts a private embedded containerd, imports the busybox test image, then times N
(default 20) runs each of: a `true` step alone (network default); the same step with
one service that is ready once started (no probe); with one service probed by TCP
(the server listens at once); by a command exec'd in it. The physical limit of a pod
of two containers is two sequential plain steps (each container costs one create,
start, delete): the ratio printed is pod time / (2 × plain step time). Also: the cost
of one in-netns TCP probe (thread + setns + connect) against a plain connect.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kata.runtimes.base import Readiness, ServiceSpec, StepSpec  # noqa: E402
from kata.runtimes.containerd import ContainerdRuntime  # noqa: E402
from kata.runtimes.containerd.pod import in_netns, tcp_probe  # noqa: E402
from support.daemon import embedded_containerd  # noqa: E402
from support.images import busybox_image, write_oci_archive  # noqa: E402
from timing import timed  # noqa: E402

SERVE = "trap 'exit 0' TERM; nc -ll -p 5432 -e echo hi & wait"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with embedded_containerd("sb") as paths:
        rt = ContainerdRuntime.connect(address=paths.address, state_dir=str(paths.root.parent),
                                       stop_grace=2)
        try:
            with tempfile.TemporaryDirectory() as d:
                rt.import_image(write_oci_archive(busybox_image(), Path(d) / "bb.tar"))
            digest = rt.resolve_image(busybox_image().ref)
            sink = lambda *_a: None  # noqa: E731

            def step(services=()):  # noqa: ANN001, ANN202
                def go() -> None:
                    status = rt.run(StepSpec(image=digest, argv=("true",), network="default",
                                             services=tuple(services)),
                                    sink, threading.Event(), sink)
                    assert status == 0
                return go

            plain = step()
            started = step([ServiceSpec(name="s", image=digest, argv=("sh", "-c", SERVE))])
            tcp = step([ServiceSpec(name="s", image=digest, argv=("sh", "-c", SERVE),
                                    ready=Readiness(kind="tcp", target="5432"))])
            cmd = step([ServiceSpec(name="s", image=digest, argv=("sh", "-c", SERVE),
                                    ready=Readiness(kind="command", target="true"))])
            plain()  # warm: unpack, bridge
            t_plain = med(timed(plain, n))
            rows = [("step alone", t_plain)]
            for name, fn in (("+1 service, started=ready", started),
                             ("+1 service, tcp probe", tcp),
                             ("+1 service, command probe", cmd)):
                rows.append((name, med(timed(fn, n))))
            print(f"N = {n} runs each, medians, network default")
            for name, t in rows:
                ratio = t / (2 * t_plain)
                print(f"  {name:28s} {t * 1e3:7.1f} ms   vs 2 plain steps "
                      f"({2 * t_plain * 1e3:.1f} ms): {ratio:.2f}x")
            srv = socket.create_server(("127.0.0.1", 0))
            port = srv.getsockname()[1]
            stop = threading.Event()

            def accept() -> None:
                srv.settimeout(0.1)
                while not stop.is_set():
                    try:
                        srv.accept()[0].close()
                    except OSError:
                        pass
            threading.Thread(target=accept, daemon=True).start()
            k = 200
            bare = med(timed(lambda: tcp_probe(port), k))
            ns = "/proc/self/ns/net"  # setns into our own netns: the full mechanism
            viathread = med(timed(lambda: in_netns(ns, lambda: tcp_probe(port)), k))
            stop.set()
            srv.close()
            print(f"  tcp probe: plain connect {bare * 1e6:.0f} us, thread+setns+connect "
                  f"{viathread * 1e6:.0f} us: {viathread / bare:.2f}x the plain connect")
        finally:
            left = rt.leftovers()
            rt.close()
            assert left == {k: [] for k in left}, left


if __name__ == "__main__":
    main()
