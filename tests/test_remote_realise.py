"""The realiser with a remote cache (a real BuildGrid) over the FakeRuntime: remote hits
that stay remote until needed, and a remote that dies between the plan and the run: the
hits it can no longer hand over are rebuilt locally, in the same run, after one warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.realise import events as ev
from kata.realise.realiser import REMOTE_LOST, Realiser, RealiseOptions
from kata.remote.cache import RemoteCache
from kata.remote.config import RemoteConfig, parse_url
from store import Store
from support.buildgrid import buildgrid

pytestmark = pytest.mark.integration

DAG = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/a.txt > dist/out.txt"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/out.txt", "echo ok > t"),
             depends_on=("build",), artifacts=("t",)),
    FakeStep("lint", commands=("test -s dist/out.txt",), depends_on=("build",)),
    FakeStep("package", commands=("cat t dist/out.txt > pkg",), depends_on=("test", "lint"),
             artifacts=("pkg",)),
]


class Host:
    def __init__(self, root: Path, repo: Path, url: str) -> None:
        self.repo = repo
        self.store = Store.open(root / "store")
        self.work = root / "work"
        self.runtime = FakeRuntime()
        self.events: list[ev.Event] = []
        self.warnings: list[str] = []
        self.remote = RemoteCache(RemoteConfig(url=url, target=parse_url(url)[0], timeout=5),
                                  warn=self.warnings.append)

    def realiser(self, steps, **options) -> Realiser:
        self.events = []
        graph = compile_steps(self.repo, steps)
        opts = RealiseOptions(repo_root=self.repo, work_root=self.work, max_parallel=2,
                              **options)
        return Realiser(graph, store=self.store, runtime=self.runtime, emit=self.events.append,
                        options=opts, remote=self.remote)

    def close(self) -> None:
        self.remote.close()
        self.store.close()


def _host_a_ran(tmp_path: Path, url: str, graph=DAG) -> tuple[Host, Path]:  # noqa: ANN001
    """Host A (closed: its uploads done, its bundle filed) after running ``graph`` (DAG)
    against the remote at ``url``, and A's repository for other hosts to copy."""
    repo_a = tmp_path / "a" / "repo"
    (repo_a / "src").mkdir(parents=True)
    (repo_a / "src" / "a.txt").write_text("hello\n")
    a = Host(tmp_path / "a", repo_a, url)
    assert a.realiser(graph).run().ok
    a.close()
    return a, repo_a

def _host_b_adds_ship(tmp_path: Path, repo_a: Path, url: str):  # noqa: ANN202
    """Host B, on a copy of A's repository, runs DAG plus ``ship`` (after ``package``)
    against the remote at ``url``; B and its run's result."""
    repo_b = tmp_path / "b" / "repo"
    shutil.copytree(repo_a, repo_b)
    b = Host(tmp_path / "b", repo_b, url)
    changed = DAG + [FakeStep("ship", commands=("cat pkg",), depends_on=("package",))]
    return b, b.realiser(changed).run()



def test_remote_lost_between_plan_and_run_rebuilds_locally(tmp_path):
    repo_a = tmp_path / "a" / "repo"
    (repo_a / "src").mkdir(parents=True)
    (repo_a / "src" / "a.txt").write_text("hello\n")
    with buildgrid(tmp_path / "bgd") as server:
        a = Host(tmp_path / "a", repo_a, server.url)
        assert a.realiser(DAG).run().ok
        assert a.remote.stats["uploads"] == 4 and not a.warnings
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        # on B, package changed: it must run, so it needs test's and lint's stacks
        changed = DAG[:3] + [FakeStep("package", commands=("cat t dist/out.txt > pkg",
                                                           "echo changed"),
                                      depends_on=("test", "lint"), artifacts=("pkg",))]
        realiser = b.realiser(changed)
        plan = realiser.plan()
        assert set(plan.hits) == {"build", "test", "lint"}
        assert not any(b.store.has_blob(h.found.record.outputs) for h in plan.hits.values()
                       if h.found.record.outputs != realiser.records.empty_tree())
        server.kill()  # gone before anything was fetched
        result = realiser.run(plan)
    assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
    lost = {e.step for e in b.events if isinstance(e, ev.CacheChecked) and e.reason == REMOTE_LOST}
    assert "test" in lost and "build" in lost
    # the plain view says why a step it called a HIT is now a MISS (docs/remote.md)
    from kata.report.plain import line as format_event

    shown = [format_event(e) for e in b.events
             if isinstance(e, ev.CacheChecked) and e.reason == REMOTE_LOST]
    assert "[CACHE] test: MISS (remote cache unavailable, rebuilding)" in shown, shown
    assert sorted(b.runtime.started) == ["build", "lint", "package", "test"]
    assert len(b.warnings) == 1
    # what was rebuilt is recorded locally: the next run hits everything without a remote
    b.remote = None  # type: ignore[assignment]
    again = b.realiser(changed).run()
    assert {r.cache for r in again.steps.values()} == {"HIT"}
    a.close()
    b.store.close()


def test_a_second_host_reads_the_whole_graph_from_one_bundle(tmp_path):
    """A's run files a bundle (kata.remote.bundle) when its remote closes; B, with an empty
    store, answers every lookup with ONE GetActionResult, fetches nothing for hits whose
    dependents all hit, and a later fetch of those hits (what --out does) brings their
    trees and logs from the bundle's records into B's store."""
    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        assert a.remote.stats["uploads"] == 4 and a.remote.stats["bundled"] == 4
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        realiser = b.realiser(DAG)
        result = realiser.run()
        assert {r.cache for r in result.steps.values()} == {"HIT"}
        assert b.remote.stats["asked"] == 1 and b.remote.stats["bundled"] == 4
        assert b.remote.stats["fetched_trees"] == 0 and not b.runtime.started
        realiser.localise_all(None)
        assert b.remote.stats["fetched_trees"] >= 3 and not b.warnings
        b.close()  # B uploaded nothing: it files no bundle
        assert b.remote.stats["uploads"] == 0
        # the bundle's records are what B's store now holds: hits without the remote
        b.remote = None  # type: ignore[assignment]
        b.store = Store.open(tmp_path / "b" / "store")
        again = b.realiser(DAG).run()
        assert {r.cache for r in again.steps.values()} == {"HIT"}
        assert not b.runtime.started
        pkg = again.steps["package"]
        assert b.store.has_blob(b.store.get_realisation(pkg.key).outputs)
        b.store.close()


def test_a_host_holding_some_steps_still_reads_the_graphs_bundle(tmp_path):
    """The bundle is named by every cacheable derivation hash of the graph, not by the
    ones a host happens to miss: C, whose store already holds ``build`` (lookups go local
    first, so that key is not asked), still answers the rest with ONE GetActionResult."""
    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        repo_c = tmp_path / "c" / "repo"
        shutil.copytree(repo_a, repo_c)
        c = Host(tmp_path / "c", repo_c, server.url)
        remote, c.remote = c.remote, None  # type: ignore[assignment]
        assert c.realiser(DAG[:1]).run().ok  # build, locally, with no remote
        c.remote, c.runtime = remote, FakeRuntime()
        result = c.realiser(DAG).run()
        assert {r.cache for r in result.steps.values()} == {"HIT"}
        assert c.remote.stats["asked"] == 1 and c.remote.stats["bundled"] == 4
        assert not c.runtime.started and not c.warnings
        c.close()


def test_a_prefetch_has_one_deadline_for_all_its_keys():
    """A remote that answers each lookup within the per-call timeout but too slowly for the
    whole batch (a server behind on its queue) is left after the batch's deadline
    (timeout + 5 ms per key) with one warning, and every key misses. The slow server is a
    gRPC stand-in (BuildGrid cannot be made slow on purpose); the real server's degrade
    cases are test_remote_cache.py's kill and test_remote_units.py's hung socket."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from kata.remote._api.build.bazel.remote.execution.v2 import (
        remote_execution_pb2 as re_pb2, remote_execution_pb2_grpc as re_grpc)

    class SlowCache(re_grpc.ActionCacheServicer):
        def GetActionResult(self, request, context):  # noqa: N802 - the gRPC name
            time.sleep(0.5)  # well within the 1 s per call
            context.abort(grpc.StatusCode.NOT_FOUND, "not here")

    server = grpc.server(ThreadPoolExecutor(max_workers=32))
    re_grpc.add_ActionCacheServicer_to_server(SlowCache(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    url = f"grpc://127.0.0.1:{port}"
    warned: list[str] = []
    remote = RemoteCache(RemoteConfig(url=url, target=parse_url(url)[0], timeout=1),
                         warn=warned.append)
    remote._ready = True  # no Capabilities service on the stand-in
    try:
        started = time.monotonic()
        remote.prefetch([f"{i:064x}" for i in range(200)])  # ~6 s of answers, 16 at once
        took = time.monotonic() - started
        assert all(remote.lookup(f"{i:064x}") is None for i in range(200))
        assert len(warned) == 1 and "DEADLINE_EXCEEDED" in warned[0], warned
        assert took < 1 + 200 * 0.005 + 1.5, took  # the deadline, not the ~6 s of answers
    finally:
        remote.close()
        server.stop(0)


def test_fetching_a_remote_hit_after_the_remote_went_away_names_the_step_and_remote(tmp_path):
    """What --out does after the run (Realiser.localise_all): a remote hit whose remote is
    gone is a clear error (exit 2) naming the step and the remote, not a missing object."""
    from kata.errors import KataError

    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        realiser = b.realiser(DAG)
        result = realiser.run()
        assert {r.cache for r in result.steps.values()} == {"HIT"}
        server.kill()
        with pytest.raises(KataError) as err:
            realiser.localise_all(["package"])
    assert err.value.reason == "remote.fetch_failed" and err.value.exit_code == 2
    assert "step package" in err.value.message and server.url in err.value.message
    assert len(b.warnings) == 1
    b.close()


def test_a_remote_hit_fetched_within_a_dependents_stack_is_recorded_here(tmp_path):
    """B changes only ``package``, which needs ``test``'s and ``lint``'s stacks: those
    hold ``build``'s tree too, so ``build`` is recorded in B's store as well (its log
    fetched), and a run without the remote hits every step and builds nothing."""
    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        changed = DAG[:3] + [FakeStep("package", commands=("cat t dist/out.txt > pkg",
                                                           "echo changed"),
                                      depends_on=("test", "lint"), artifacts=("pkg",))]
        result = b.realiser(changed).run()
        assert result.ok and b.runtime.started == ["package"]
        b.close()
    b.remote = None  # type: ignore[assignment]
    b.store = Store.open(tmp_path / "b" / "store")
    b.runtime = FakeRuntime()
    again = b.realiser(changed).run()
    assert {r.cache for r in again.steps.values()} == {"HIT"} and not b.runtime.started
    build = again.steps["build"]
    assert b.store.has_blob(b.store.get_realisation(build.key).log)
    b.store.close()


def test_two_steps_needing_one_lost_remote_hit_both_wait_for_its_rebuild(tmp_path):
    """test and lint start together and both need build, a remote hit; the remote is gone.
    One of them finds the fetch failing and re-queues build; the other must wait for that
    rebuild too, not go on with build's trees missing (it raised KeyError: 'build')."""
    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        changed = [DAG[0],
                   FakeStep("test", commands=("grep -q hello dist/out.txt", "echo ok2 > t"),
                            depends_on=("build",), artifacts=("t",)),
                   FakeStep("lint", commands=("test -s dist/out.txt", "echo linted2"),
                            depends_on=("build",)),
                   DAG[3]]
        realiser = b.realiser(changed)
        plan = realiser.plan()
        assert set(plan.hits) == {"build"}, plan.hits
        server.kill()
        result = realiser.run(plan)
    assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
    lost = [e.step for e in b.events if isinstance(e, ev.CacheChecked) and e.reason == REMOTE_LOST]
    assert lost == ["build"], lost
    assert sorted(b.runtime.started) == ["build", "lint", "package", "test"]
    assert len(b.warnings) == 1, b.warnings
    b.close()


def test_a_remote_restarted_empty_mid_run_gets_the_stack_trees_again(tmp_path):
    """A's build is uploaded; the team's cache (memory CAS, as docs/remote.md runs it) is
    restarted, empty, while A's later steps run; their uploads name build's tree in their
    stacks. The run must send that tree again, not take it as sent because it sent it
    before the restart: else B, needing package's stack, finds it gone and rebuilds."""
    from support.buildgrid import BuildGridConfig, memory_cas

    repo_a = tmp_path / "a" / "repo"
    (repo_a / "src").mkdir(parents=True)
    (repo_a / "src" / "a.txt").write_text("hello\n")
    with buildgrid(tmp_path / "bgd", BuildGridConfig(storages=memory_cas("64M"))) as server:
        a = Host(tmp_path / "a", repo_a, server.url)
        assert a.realiser(DAG[:1]).run().ok  # build, uploaded
        a.remote.flush()
        server.stop()
        server.start()  # the same port, nothing held
        assert a.realiser(DAG).run().ok  # one remote, one run's memory of what it sent
        a.close()
        assert not a.warnings, a.warnings

        b, result = _host_b_adds_ship(tmp_path, repo_a, server.url)
    assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
    lost = [e.step for e in b.events if isinstance(e, ev.CacheChecked) and e.reason == REMOTE_LOST]
    assert lost == [] and not b.warnings, (lost, b.warnings)
    # build's own entry went with the restart (A's second run hit it locally): B builds it
    assert sorted(b.runtime.started) == ["build", "ship"], b.runtime.started
    b.close()


def test_a_lost_hit_whose_own_dependencies_were_never_decided_is_rebuilt(tmp_path):
    """B adds ``ship`` after ``package``: package is a remote hit, so the plan decides
    nothing below it. The remote has lost a blob of build's tree (an eviction), so
    package's stack cannot be fetched: package is rebuilt, then test and lint (the remote
    is left), and test needs build, which no one had decided: it must be decided then
    (here: rebuilt), not read as a stack that is not there (it raised KeyError: 'build')."""
    import hashlib

    with buildgrid(tmp_path / "bgd") as server:
        a, repo_a = _host_a_ran(tmp_path, server.url)
        hexd = hashlib.sha256(b"hello\n").hexdigest()  # build's dist/out.txt
        lost = [p for p in (server.workdir / "cas").rglob("*") if p.is_file() and hexd[2:] in p.name]
        assert lost
        for p in lost:
            p.unlink()
        b, result = _host_b_adds_ship(tmp_path, repo_a, server.url)
    assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
    # build is rebuilt here; the hits above it are rebuilt too, or (when the remote is
    # still in use) found again by their resolved hashes and fetched, build now local
    assert {"build", "ship"} <= set(b.runtime.started) <= {"build", "lint", "package",
                                                           "ship", "test"}, b.runtime.started
    assert len(b.warnings) <= 1, b.warnings
    b.close()


def _evict(server, content: bytes) -> None:
    """Drop the blob of ``content`` from BuildGrid's disk CAS (what an LRU eviction does)."""
    import hashlib

    hexd = hashlib.sha256(content).hexdigest()
    lost = [p for p in (server.workdir / "cas").rglob("*") if p.is_file() and hexd[2:] in p.name]
    assert lost, f"blob {hexd} is not in the CAS"
    for p in lost:
        p.unlink()


def test_an_evicted_hit_is_rebuilt_while_the_remote_stays_in_use(tmp_path):
    """Two independent hits, ``build`` and ``docs``, each needed by a step B changed. The
    remote's LRU evicts a blob of build's tree once B has looked up: build alone is a miss (said once, naming
    the eviction) and rebuilt here; docs is still fetched from the remote, not rebuilt;
    B's results are uploaded; no warning (the remote never went away). The step re-queued
    behind the rebuilt build says MISS once."""
    from collections import Counter

    from kata.realise.realiser import REMOTE_EVICTED
    from kata.report.plain import line as format_event

    graph = [DAG[0],
             FakeStep("docs", commands=("mkdir -p d", "echo docs made on A > d/doc.txt"),
                      artifacts=("d/",)),
             FakeStep("test", commands=("grep -q hello dist/out.txt", "echo ok > t"),
                      depends_on=("build",), artifacts=("t",)),
             FakeStep("pub", commands=("cat d/doc.txt > p",), depends_on=("docs",),
                      artifacts=("p",))]
    changed = graph[:2] + [
        FakeStep("test", commands=("grep -q hello dist/out.txt", "echo changed > t"),
                 depends_on=("build",), artifacts=("t",)),
        FakeStep("pub", commands=("cat d/doc.txt > p", "echo changed"), depends_on=("docs",),
                 artifacts=("p",))]
    with buildgrid(tmp_path / "bgd") as server:
        _a, repo_a = _host_a_ran(tmp_path, server.url, graph)
        repo_b = tmp_path / "b" / "repo"
        shutil.copytree(repo_a, repo_b)
        b = Host(tmp_path / "b", repo_b, server.url)
        realiser = b.realiser(changed)
        plan = realiser.plan()
        assert set(plan.hits) == {"build", "docs"}, plan.hits
        # evicted after B's lookups (BuildGrid answers no entry whose blobs it lacks)
        _evict(server, b"hello\n")  # build's dist/out.txt
        result = realiser.run(plan)
        assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
        assert sorted(b.runtime.started) == ["build", "pub", "test"], b.runtime.started
        assert not b.warnings, b.warnings
        assert b.remote.enabled and b.remote.stats["fetched_trees"] >= 1
        misses = [e for e in b.events if isinstance(e, ev.CacheChecked) and not e.hit]
        assert Counter(e.step for e in misses) == {"build": 1, "test": 1, "pub": 1}, misses
        shown = [format_event(e) for e in misses if e.step == "build"]
        assert shown == [f"[CACHE] build: MISS ({REMOTE_EVICTED})"], shown
        b.close()
        assert b.remote.stats["uploads"] == 3, b.remote.stats  # build (again), test, pub
        # C, a third host, hits the rebuilt build from the remote again
        c = Host(tmp_path / "c", repo_b, server.url)
        again = c.realiser(changed[:1] + changed[2:3])
        got = again.run()
        assert got.ok and not c.runtime.started and not c.warnings
        again.localise_all(None)
        c.close()


class _CachedStep(FakeStep):
    """A step with an explicit ``cache: true`` (a step with secrets is cached only so)."""

    def to_yaml(self) -> dict:
        return {**super().to_yaml(), "cache": True}


def test_a_step_with_a_secret_is_never_looked_up_in_the_remote(tmp_path):
    """Kata never uploads a step that declares a secret, nor one below it: an entry under
    such a step's key can only have been planted by someone else. It is never used (the
    local store only), and the dry run says where it looked."""
    steps = [_CachedStep("sec", commands=("echo signed > s",), secrets=("TOKEN",),
                         artifacts=("s",)),
             FakeStep("after", commands=("cat s > a",), depends_on=("sec",), artifacts=("a",)),
             FakeStep("free", commands=("echo free > f",), artifacts=("f",))]
    repo = tmp_path / "b" / "repo"
    repo.mkdir(parents=True)
    with buildgrid(tmp_path / "bgd") as server:
        # a poisoner runs steps of its own and files one of its results under the keys
        # of B's secret step and of its dependent
        p = Host(tmp_path / "p", repo, server.url)
        evil = [FakeStep("evil", commands=("echo forged > s", "echo forged > a"),
                         artifacts=("s", "a"))]
        p.remote = None  # type: ignore[assignment]
        assert p.realiser(evil).run().ok
        forged = p.store.get_realisation(
            compile_steps(repo, evil).nodes["evil"].drv_hash)  # type: ignore[arg-type]
        assert forged is not None
        p.remote = RemoteCache(RemoteConfig(url=server.url, target=parse_url(server.url)[0],
                                            timeout=5), warn=p.warnings.append)
        b = Host(tmp_path / "b", repo, server.url)
        graph = compile_steps(repo, steps)
        planted = [graph.nodes[n].drv_hash for n in ("sec", "after")]
        p.remote.upload_now(p.store, planted, forged)  # type: ignore[arg-type]
        p.close()
        assert not p.warnings, p.warnings
        probe = RemoteCache(RemoteConfig(url=server.url, target=parse_url(server.url)[0],
                                         timeout=5), warn=b.warnings.append)
        assert all(probe.lookup(k) is not None for k in planted)  # the entries are there
        probe.close()

        dry = {e.step: e for e in b.realiser(steps, secrets={"TOKEN": "s3cr3t-value"}).dry_run()}
        assert not dry["sec"].hit and dry["sec"].why == "not in the store", dry["sec"]
        assert not dry["after"].hit and dry["after"].why.split(";")[0] == "not in the store", \
            dry["after"]
        assert dry["free"].why == "not in the store or the remote cache", dry["free"]

        result = b.realiser(steps, secrets={"TOKEN": "s3cr3t-value"}).run()
        assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
        assert sorted(b.runtime.started) == ["after", "free", "sec"], b.runtime.started
        assert not any(isinstance(e, ev.CacheChecked) and e.remote for e in b.events)
        misses = {e.step: e.reason for e in b.events if isinstance(e, ev.CacheChecked)}
        assert misses == {"sec": "not in the store", "after": "not in the store",
                          "free": "not in the store or the remote cache"}, misses
        b.close()


def test_a_tampered_hit_is_rebuilt_and_said_to_be_corrupt_not_unavailable(tmp_path):
    """A blob of a hit changed in the remote's CAS (a disk that rotted, someone with
    access to the server's storage): BuildGrid serves it, Kata refuses it by its digest.
    The warning said the remote was "unavailable" and sent the user to `kata doctor`,
    which then found nothing wrong; it now says the entry was corrupt or tampered, that
    what needed it is rebuilt locally, and what to do about the remote. The step's line
    says so too, and nothing of the bad bytes reaches the store."""
    from kata.realise.realiser import REMOTE_CORRUPT
    from kata.report.plain import line as format_event
    from store.verify import verify

    with buildgrid(tmp_path / "bgd") as server:
        _a, repo_a = _host_a_ran(tmp_path, server.url)
        hexd = __import__("hashlib").sha256(b"hello\n").hexdigest()  # build's dist/out.txt
        blobs = [p for p in (server.workdir / "cas").rglob("*")
                 if p.is_file() and hexd[2:] in p.name]
        assert blobs, "the blob is not in the CAS"
        for p in blobs:
            p.write_bytes(b"HELLO\n")  # the same size: only its digest tells
        b, result = _host_b_adds_ship(tmp_path, repo_a, server.url)
        assert result.ok, {n: (r.status, r.message) for n, r in result.steps.items()}
        assert len(b.warnings) == 1, b.warnings
        warning = b.warnings[0]
        assert "unavailable" not in warning and "corrupt or tampered" in warning, warning
        assert "rebuilt locally" in warning and "empty its CAS" in warning, warning
        shown = [format_event(e) for e in b.events
                 if isinstance(e, ev.CacheChecked) and e.reason == REMOTE_CORRUPT]
        assert shown, [format_event(e) for e in b.events if isinstance(e, ev.CacheChecked)]
        assert "build" in b.runtime.started
        report = verify(b.store)
        assert report.ok, report
        b.close()
