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

    def realiser(self, steps) -> Realiser:
        self.events = []
        graph = compile_steps(self.repo, steps)
        opts = RealiseOptions(repo_root=self.repo, work_root=self.work, max_parallel=2)
        return Realiser(graph, store=self.store, runtime=self.runtime, emit=self.events.append,
                        options=opts, remote=self.remote)

    def close(self) -> None:
        self.remote.close()
        self.store.close()


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
    assert sorted(b.runtime.started) == ["build", "lint", "package", "test"]
    assert len(b.warnings) == 1
    # what was rebuilt is recorded locally: the next run hits everything without a remote
    b.remote = None  # type: ignore[assignment]
    again = b.realiser(changed).run()
    assert {r.cache for r in again.steps.values()} == {"HIT"}
    a.close()
    b.store.close()
