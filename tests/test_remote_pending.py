"""Results a host recorded while its remote cache was down reach the remote later: the
pending queue (kata.remote.pending) in the store's state directory, drained by the next
run that reaches the remote (``RemoteCache.resume``) or ``kata remote push``; and a remote
that timed out is left alone for a while (kata.remote.backoff). A real BuildGrid; steps
on the FakeRuntime here (test_remote_cache.py runs the same through `kata run` and
containerd)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.realise import events as ev
from kata.realise.realiser import Realiser, RealiseOptions
from kata.remote.cache import RemoteCache
from kata.remote.config import RemoteConfig, parse_url
from kata.remote.pending import DIR_NAME, PendingUploads
from store import Store
from support.buildgrid import BuildGrid, _free_port

pytestmark = pytest.mark.integration

DAG = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/a.txt > dist/out.txt"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/out.txt", "echo ok > t"),
             depends_on=("build",), artifacts=("t",)),
    FakeStep("package", commands=("cat t dist/out.txt > pkg",), depends_on=("test",),
             artifacts=("pkg",)),
]


class Host:
    """A store, a repository and a RemoteCache with the store's state directory."""

    def __init__(self, root: Path, repo: Path, url: str, **config: float) -> None:
        self.repo = repo
        self.store = Store.open(root / "store")
        self.work = root / "work"
        self.runtime = FakeRuntime()
        self.events: list[ev.Event] = []
        self.warnings: list[str] = []
        self.url = url
        self.config = config
        self.remote = self.new_remote()

    def new_remote(self, **kw) -> RemoteCache:
        cfg = RemoteConfig(url=self.url, target=parse_url(self.url)[0], **self.config)
        self.remote = RemoteCache(cfg, warn=self.warnings.append,
                                  state_dir=self.store.state_dir, **kw)
        return self.remote

    def run(self, steps=DAG):  # noqa: ANN201
        """One run as `kata run` does it: plan, resume the queue, realise, close."""
        self.events = []
        graph = compile_steps(self.repo, steps)
        opts = RealiseOptions(repo_root=self.repo, work_root=self.work, max_parallel=2)
        realiser = Realiser(graph, store=self.store, runtime=self.runtime,
                            emit=self.events.append, options=opts, remote=self.remote)
        plan = realiser.plan()
        self.remote.resume(self.store)
        result = realiser.run(plan)
        self.remote.close()
        return result

    @property
    def queue(self) -> PendingUploads:
        return PendingUploads(Path(self.store.state_dir) / DIR_NAME)


def _repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("hello\n")
    return root


def test_results_built_while_the_remote_was_down_are_sent_by_the_next_run(tmp_path):
    """A builds with BuildGrid down: one warning, its three results queued. BuildGrid
    comes up; A's next run is a local no-op, yet it sends them (one FindMissingBlobs per
    result, nothing rebuilt) and empties the queue; B, with an empty store, hits all."""
    server = BuildGrid(tmp_path / "bgd")
    server.port = _free_port()  # nothing listens there yet
    a = Host(tmp_path / "a", _repo(tmp_path / "a" / "repo"), server.url)
    first = a.run()
    assert first.ok and sorted(a.runtime.started) == ["build", "package", "test"]
    assert len(a.warnings) == 1 and "unavailable" in a.warnings[0], a.warnings
    assert len(a.queue.names()) == 3
    server.start()
    try:
        a.new_remote()
        again = a.run()
        assert {r.cache for r in again.steps.values()} == {"HIT"}
        assert a.remote.stats["resumed"] == 3 and not a.queue.names()
        assert len(a.warnings) == 1  # none this time
        # and the remote serves them: B hits every step by its derivation hash
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(a.repo, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        hit = b.run()
        assert {r.cache for r in hit.steps.values()} == {"HIT"} and not b.runtime.started
        assert b.remote.stats["hits"] == 3 and not b.warnings
        b.store.close()
    finally:
        server.stop()
        a.store.close()


class _Dead:
    """An upload thread that never runs what it is given (the process died first)."""

    def submit(self, *args, **kw):  # noqa: ANN002, ANN003, ANN201
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_an_upload_is_queued_before_it_is_tried(tmp_path):
    """Write-ahead: a run that ends before its background uploads (killed) leaves them
    queued; what can never go is dropped by the drain (a record the store no longer
    holds, a record that is not a shared step record); what is not a whole entry is
    deleted or skipped, never sent."""
    server = BuildGrid(tmp_path / "bgd")
    server.start()
    try:
        a = Host(tmp_path / "a", _repo(tmp_path / "a" / "repo"), server.url)
        a.remote._uploader = _Dead()  # type: ignore[assignment]
        assert a.run().ok and a.remote.stats["uploads"] == 0 and not a.warnings
        assert len(a.queue.names()) == 3
        # what a drain must not send
        gone = a.queue.add(("1" * 64,))
        real = a.store.get_realisation(a.queue.entries()[0].keys[0])
        a.store.put_realisation("2" * 64, dataclasses.replace(real, scope="quarantine:fork"))
        a.queue.add(("2" * 64,))
        (a.queue.directory / ("3" * 64 + ".json")).write_text('{"format": "kata-remote-p')
        (a.queue.directory / ".tmp-half").write_text("{")
        assert len(a.queue.names()) == 6 and gone in a.queue.names()
        drv, resolved = next(e.keys for e in a.queue.entries() if len(e.keys) == 2)
        counts = a.new_remote().push_pending(a.store)
        assert (counts.sent, counts.dropped, counts.left) == (3, 2, 0), counts
        assert a.queue.names() == [] and a.remote.stats["uploads"] == 3
        a.remote.close()
        # an early-cutoff alias the remote could not take then: the derivation hash is
        # filed over the result the remote holds under the resolved hash; one whose
        # result neither the remote nor this store holds is dropped
        a.queue.add(("f" * 64,), alias_of=resolved)
        a.queue.add(("e" * 64,), alias_of="d" * 64)
        counts = a.new_remote().push_pending(a.store)
        assert (counts.sent, counts.dropped) == (1, 1), counts
        found = a.remote.lookup("f" * 64)
        assert found is not None
        assert found.realisation.outputs == a.store.get_realisation(drv).outputs
        a.remote.close()
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(a.repo, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        assert {r.cache for r in b.run().steps.values()} == {"HIT"} and not b.runtime.started
        assert b.new_remote().lookup("2" * 64) is None  # the scoped record stayed here
        b.remote.close()
        b.store.close()
    finally:
        server.stop()
        a.store.close()


def test_a_hung_remote_costs_its_connect_timeout_then_is_left_alone(tmp_path):
    """A remote that accepts connections and never answers: the run's first call,
    GetCapabilities, gets ``connect_timeout`` (not the 30 s per-call ``timeout``), and the
    timeout is remembered in the state directory: the runs that follow do not connect at
    all, and their one warning line says until when. ``kata remote push``'s view
    (``backoff=False``) asks anyway; once the remote answers the back-off is gone.
    ``backoff: 0`` remembers nothing."""
    from support.listeners import HungListener

    hung = HungListener()
    url = f"grpc://127.0.0.1:{hung.port}"
    a = Host(tmp_path / "a", _repo(tmp_path / "a" / "repo"), url, timeout=30.0,
             connect_timeout=0.5)
    try:
        started = time.monotonic()
        assert a.run().ok
        took = time.monotonic() - started
        assert len(a.warnings) == 1 and "GetCapabilities: DEADLINE_EXCEEDED" in a.warnings[0]
        assert "not asked again until " in a.warnings[0] and "remote.backoff" in a.warnings[0]
        assert "kata remote push" in a.warnings[0], a.warnings
        assert hung.count == 1 and len(a.queue.names()) == 3
        # the next runs: no connection, one warning naming the back-off
        for _ in range(3):
            a.new_remote()
            assert a.run().ok
        assert hung.count == 1, hung.count
        assert len(a.warnings) == 4 and all("timed out in an earlier run" in w and
                                            "not asked again until" in w
                                            for w in a.warnings[1:]), a.warnings
        # `kata remote push` asks anyway (and fails: the queue stays)
        push = a.new_remote(backoff=False)
        assert not push.check() and hung.count == 2 and len(a.queue.names()) == 3
        # ... and its warning does not tell the user to run what they just ran
        assert "not asked again until" in a.warnings[-1], a.warnings
        assert "kata remote push" not in a.warnings[-1], a.warnings
        push.close()
        # BuildGrid on the same address: the back-off still holds for runs...
        hung.close()
        server = BuildGrid(tmp_path / "bgd")
        server.port = hung.port
        server.start()
        try:
            a.new_remote()
            assert a.run().ok and a.remote.stats["resumed"] == 0
            assert "timed out in an earlier run" in a.warnings[-1]
            # ...until a push (or the back-off's end): it sends the queue and clears it
            push = a.new_remote(backoff=False)
            assert push.check()
            counts = push.push_pending(a.store, wait=True)
            push.close()
            assert (counts.sent, counts.left) == (3, 0) and not a.queue.names()
            warned = len(a.warnings)
            a.new_remote()
            (a.repo / "src" / "a.txt").write_text("hello again\n")
            assert a.run().ok and a.remote.stats["uploads"] == 3
            assert len(a.warnings) == warned
        finally:
            server.stop()
    finally:
        hung.close()
        a.store.close()
    # the slow part of the first run was the 0.5 s connect timeout, not the 30 s timeout
    assert took < 20, took


def test_backoff_zero_asks_the_remote_every_run(tmp_path):
    from support.listeners import HungListener

    with HungListener() as hung:
        url = f"grpc://127.0.0.1:{hung.port}"
        a = Host(tmp_path / "a", _repo(tmp_path / "a" / "repo"), url, connect_timeout=0.3,
                 backoff=0.0)
        try:
            for n in (1, 2):
                a.new_remote()
                assert a.run().ok and hung.count == n
            assert "not asked again" not in a.warnings[-1] and len(a.warnings) == 2
        finally:
            a.store.close()
