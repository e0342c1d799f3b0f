"""The planner as a pure function: graph, targets, skips and a lookup in; the plan out."""

from __future__ import annotations

import pytest

from fakes import FakeStep, compile_steps
from kata.errors import KataError
from kata.realise.lookup import Looked
from kata.realise.plan import DAMAGED, NOT_STORED, make_plan, plan_entries, select_targets
from store import Realisation

REC = Realisation(outputs="sha256:" + "0" * 64)
STEPS = [
    FakeStep("build", commands=("true",), secrets=("BUILD_TOKEN",)),
    FakeStep("test", commands=("true",), depends_on=("build",)),
    FakeStep("deploy", commands=("true",), depends_on=("test",), secrets=("DEPLOY_KEY",)),
    FakeStep("docs", commands=("true",)),
]


@pytest.fixture
def graph(tmp_path):
    return compile_steps(tmp_path, STEPS)


def lookup_of(graph, hits=(), damaged=()):
    by_hash = {graph.nodes[n].drv_hash: n for n in graph.order}

    def lookup(key):
        name = by_hash[key]
        return Looked(key=key, record=REC if name in hits else None, damaged=name in damaged)
    return lookup


def test_a_hit_needs_none_of_its_dependencies_and_no_secret(tmp_path):
    chain = compile_steps(tmp_path, [
        FakeStep("build", commands=("true",)),
        FakeStep("test", commands=("true",), depends_on=("build",)),
    ])
    plan = make_plan(chain, targets=("test",), skip={}, use_cache=True,
                     lookup=lookup_of(chain, hits={"test"}))
    assert plan.order == ("test",) and list(plan.hits) == ["test"]
    assert plan.secrets == ()


def test_a_step_after_one_that_always_runs_is_no_hit_before_it_passed(graph):
    # build declares a secret (never cached): test's stored result is not taken up front
    # (build may fail, or make other outputs); it is looked up by its resolved hash once
    # build passed, and skipped if build fails
    plan = make_plan(graph, targets=("test",), skip={}, use_cache=True,
                     lookup=lookup_of(graph, hits={"test"}))
    assert plan.to_run == ("build", "test") and list(plan.hits) == []
    assert plan.steps["test"].why == "waits for build (never cached) to pass"
    assert plan.secrets == ("BUILD_TOKEN",)
    # deploy waits for the nearest step that always runs upstream of it: build, via test
    everything = make_plan(graph, targets=None, skip={}, use_cache=True,
                           lookup=lookup_of(graph, hits={"test", "docs"}))
    assert list(everything.hits) == ["docs"]
    assert everything.steps["deploy"].why == "declares secrets (cache: true caches it)"


def test_misses_pull_in_dependencies_and_their_secrets(graph):
    plan = make_plan(graph, targets=None, skip={}, use_cache=True,
                     lookup=lookup_of(graph, hits={"docs"}, damaged={"test"}))
    assert plan.to_run == ("build", "test", "deploy")
    assert plan.secrets == ("BUILD_TOKEN", "DEPLOY_KEY")
    assert plan.steps["test"].why == "waits for build (never cached) to pass"  # not looked up
    assert plan.steps["build"].why == "declares secrets (cache: true caches it)"
    docs = make_plan(graph, targets=("docs",), skip={}, use_cache=True,
                     lookup=lookup_of(graph, damaged={"docs"}))
    assert docs.steps["docs"].why == DAMAGED
    entries = {e.step: e for e in plan_entries(graph, plan)}
    assert entries["docs"].hit and not entries["test"].hit


def test_skips_propagate_and_need_no_secret(graph):
    plan = make_plan(graph, targets=None, skip={"test": "only: branch == 'main'"},
                     use_cache=True, lookup=lookup_of(graph))
    assert plan.skipped == {"test": "only: branch == 'main'",
                            "deploy": "dependency test skipped"}
    assert plan.to_run == ("build", "docs") and plan.secrets == ("BUILD_TOKEN",)


def test_no_cache_looks_nothing_up(graph):
    def lookup(key):
        raise AssertionError("looked up")
    plan = make_plan(graph, targets=("docs",), skip={}, use_cache=False, lookup=lookup)
    assert plan.steps["docs"].why == "--no-cache"


def test_early_cutoff_note_in_the_dry_run(tmp_path):
    chain = compile_steps(tmp_path, [
        FakeStep("build", commands=("true",)),
        FakeStep("test", commands=("true",), depends_on=("build",)),
    ])
    plan = make_plan(chain, targets=("test",), skip={}, use_cache=True, lookup=lookup_of(chain))
    entries = {e.step: e for e in plan_entries(chain, plan)}
    assert entries["test"].why == NOT_STORED + "; may still hit once build rebuilt (early cutoff)"


def test_targets(graph):
    assert select_targets(graph) is None
    assert select_targets(graph, labels=("//te*",)) == ("test",)
    with pytest.raises(KataError) as err:
        select_targets(graph, steps=("tset",))
    assert err.value.reason == "cli.unknown_step" and "did you mean test?" in err.value.message
    with pytest.raises(KataError) as err:
        make_plan(graph, targets=("nope",), skip={}, use_cache=True, lookup=lookup_of(graph))
    assert err.value.reason == "target.unknown"
