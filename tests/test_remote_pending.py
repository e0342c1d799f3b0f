"""Results a host recorded while its remote cache was down reach the remote later: the
pending queue (kata.remote.pending) in the store's state directory, drained by the next
run that reaches the remote (``RemoteCache.resume``) or ``kata remote push``; and a remote
that timed out is left alone for a while (kata.remote.backoff). A real BuildGrid; steps
on the FakeRuntime here (test_remote_cache.py runs the same through `kata run` and
containerd)."""

from __future__ import annotations

import dataclasses
import shutil
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
        counts = a.new_remote().push_pending(a.store)
        assert (counts.sent, counts.dropped, counts.left) == (3, 2, 0), counts
        assert a.queue.names() == [] and a.remote.stats["uploads"] == 3
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
