"""Ctrl-C or SIGTERM during a slow image pull ends `kata run` within seconds, exit 130.

Found by a new user: Ctrl-C during a 175 MB pull waited 30+ s for the pull to finish, since
the pull was shared by the steps waiting on the image and ignored their cancel. Here a real
docker-registry serves a 48 MiB image through a proxy on 127.0.0.1 that trickles its
answers; three steps wait on one pull (two on the image, one on it as a service image).
The signal comes mid-download; the run must end within a generous bound (a behaviour
bound, not a benchmark), leave no lease, ingest, snapshot, mount or process, and the next
run (the proxy no longer throttling) pulls the image and passes. Real containerd, the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from kata.runtimes.containerd.client import content_pb2
from support.cli import ROOT
from support.images import busybox_layer, files_layer, make_image
from support.registry import docker_registry, push_image

pytestmark = pytest.mark.integration

BOUND = 10.0  # seconds from the signal to the exit: "a couple of seconds", generously


class TrickleProxy:
    """A TCP proxy on 127.0.0.1:<free port> to ``upstream``; answers pass on at ``rate``
    bytes a second per connection while ``throttled`` is set. ``sent`` counts the bytes
    passed to clients."""

    def __init__(self, upstream: tuple[str, int], rate: int) -> None:
        self.upstream, self.rate = upstream, rate
        self.throttled = threading.Event()
        self.throttled.set()
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        piece = max(1, self.rate // 20)
        try:
            while data := src.recv(piece if slow and self.throttled.is_set() else 1 << 16):
                dst.sendall(data)
                if slow:
                    self.sent += len(data)
                    if self.throttled.is_set():
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()


def _pipeline(ref: str, small: str) -> dict:
    return {"pipeline": "slow-pull", "settings": {"max_parallel": 3}, "steps": [
        {"name": "a", "image": ref, "inputs": [], "commands": ["echo STARTED-a"]},
        {"name": "b", "image": ref, "inputs": [], "commands": ["echo STARTED-b"]},
        {"name": "c", "image": small, "inputs": [], "commands": ["echo STARTED-c"],
         "services": [{"name": "big", "image": ref, "commands": ["sleep 30"]}]}]}


def _kata(repo, env, address):  # noqa: ANN001, ANN202
    return subprocess.Popen([sys.executable, "-m", "kata", "--containerd", address, "run"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_pull_ends_the_run_at_once_and_the_next_run_pulls(
        tmp_path, containerd_daemon, runtime, signo):
    big = make_image([busybox_layer(), files_layer({"/big": os.urandom(48 << 20)})],
                     "kata.local/big:1")
    small = make_image([busybox_layer(), files_layer({"/small": os.urandom(16)})],
                       "kata.local/small:1")
    with docker_registry(tmp_path / "reg") as url:
        push_image(url, "kata/big", "1", big)
        push_image(url, "kata/small", "1", small)
        port = int(url.rsplit(":", 1)[1])
        proxy = TrickleProxy(("127.0.0.1", port), rate=1 << 20)  # 48 s for the big layer
        try:
            host = f"127.0.0.1:{proxy.port}"
            repo = tmp_path / "repo"
            repo.mkdir()
            (repo / ".kata-ci.yaml").write_text(json.dumps(_pipeline(
                f"{host}/kata/big@{big.digest}", f"{host}/kata/small@{small.digest}")))
            env = {**os.environ, "KATA_STORE": str(tmp_path / "store"),
                   "PYTHONPATH": str(ROOT)}
            proc = _kata(repo, env, containerd_daemon.address)
            try:
                deadline = time.monotonic() + 120
                while proxy.sent < (8 << 20) and time.monotonic() < deadline:  # mid-layer
                    if proc.poll() is not None:
                        pytest.fail("the run ended before the signal:\n" + "".join(proc.communicate()))
                    time.sleep(0.1)
                assert proxy.sent >= 8 << 20, proxy.sent
                proc.send_signal(signo)
                signalled = time.monotonic()
                out, err = proc.communicate(timeout=120)
                took = time.monotonic() - signalled
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 130, out + err
            assert took < BOUND, f"{took:.1f} s after the signal\n{out}{err}"
            assert "STARTED" not in out and "Traceback" not in err, out + err

            left = runtime.leftovers()
            assert left == {k: [] for k in left}, left
            c = runtime.client
            ingests = c.call(c.content.ListStatuses, content_pb2.ListStatusesRequest(),
                             "list ingests").statuses
            assert [s.ref for s in ingests] == []
            assert runtime.stored_digest(f"{host}/kata/big@{big.digest}") is None

            proxy.throttled.clear()  # the next run pulls at full speed and passes
            again = _kata(repo, env, containerd_daemon.address)
            out, err = again.communicate(timeout=300)
            assert again.returncode == 0, out + err
            assert "STARTED-a" in out and "STARTED-c" in out, out
        finally:
            proxy.close()
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left


def test_a_stopped_pull_sends_its_last_progress_report(tmp_path, runtime):
    """A pull that ended without its image (stopped: no step waits for it any more; or
    failed) sent no last report: the live view kept its progress bar for the rest of the
    run, and --json consumers never saw the pull end. It now ends with ``done`` and
    ``stopped`` set; a pull that succeeds ends with ``done`` alone."""
    from kata.errors import KataError
    from kata.runtimes.containerd.pulls import PULL_STOPPED, PullStop

    image = make_image([busybox_layer(), files_layer({"/x": os.urandom(64)})],
                       "kata.local/stopped:1")
    with docker_registry(tmp_path / "reg") as url:
        push_image(url, "kata/stopped", "1", image)
        ref = f"{url.removeprefix('http://')}/kata/stopped@{image.digest}"
        reports = []
        runtime.progress = reports.append
        try:
            stop = PullStop()
            stop.set()
            with pytest.raises(KataError) as err:
                runtime.pull_image(ref, stop)
            assert err.value.reason == PULL_STOPPED
            assert reports and reports[-1].done and reports[-1].stopped, reports
            assert sum(r.done for r in reports) == 1, reports
            reports.clear()
            runtime.pull_image(ref, PullStop())
            assert reports[-1].done and not reports[-1].stopped, reports
        finally:
            runtime.progress = None
