"""`when: failure()` / `always()` / `success()` (issue 14, item 4): the condition language's
status functions, what a status step waits for ("the steps before it"), how the scheduler
decides it (fail_fast, allowed failures, skips), and the realiser over the FakeRuntime."""

from __future__ import annotations

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.conditions import Context, parse, status_gate
from kata.errors import KataError
from kata.loader import load_text
from kata.realise import events as ev
from kata.realise.plan import condition_skips, status_steps, status_waits
from kata.realise.realiser import Realiser, RealiseOptions
from kata.realise.scheduler import schedule
from store import Store

MAIN = Context(event="push", branch="main")


@pytest.mark.parametrize("text, gate", [
    ("failure()", (False, True)), ("always()", (True, True)), ("success()", (True, False)),
    ("not failure()", (True, False)), ("failure() and branch == 'main'", (False, True)),
    ("failure() and branch == 'dev'", (False, False)),
    ("failure() or branch == 'main'", (True, True)), ("branch == 'main'", (True, False)),
])
def test_status_gate_decides_both_answers(text, gate):
    assert status_gate(parse(text.replace("'", '"')), MAIN) == gate


def test_status_functions_take_no_argument_and_name_the_column():
    with pytest.raises(KataError) as info:
        load_text('steps:\n  - name: t\n    image: alpine\n    when: "failure(1)"\n')
    assert info.value.reason == "config.condition"
    assert (info.value.position.line, info.value.position.column) == (4, 20)  # the "1"


def _pipeline(*whens: str | None):
    lines = ["steps:"]
    for i, when in enumerate(whens):
        lines += [f"  - name: s{i}", "    image: alpine"]
        if when:
            lines.append(f"    when: '{when}'")
    return load_text("\n".join(lines) + "\n")


def test_failure_and_always_are_never_cached_success_is_the_default():
    p = _pipeline(None, "failure()", "always()", "success()", "branch == \"main\"")
    assert [s.cacheable for s in p.steps] == [True, False, False, True, True]
    assert status_steps(p, MAIN) == {"s1": False, "s2": True}
    assert condition_skips(p, MAIN) == {}
    other = condition_skips(_pipeline("failure() and branch == \"x\""), MAIN)
    assert list(other) == ["s0"] and other["s0"].startswith("when: ")


def _graph(tmp_path, steps):
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    return compile_steps(repo, steps)


def test_a_status_step_waits_for_its_dependencies_and_every_step_above_it(tmp_path):
    graph = _graph(tmp_path, [
        FakeStep("build"), FakeStep("test", depends_on=("build",)),
        FakeStep("notify", when="failure()", depends_on=("test",)),
        FakeStep("lint"),  # below notify: not before it
        FakeStep("cleanup", when="always()"),
        FakeStep("report", depends_on=("cleanup",)),
        FakeStep("late", when="always()"),
    ])
    waits = status_waits(graph, {"notify": False, "cleanup": True, "late": True})
    assert set(waits["notify"]) == {"build", "test"}
    assert set(waits["cleanup"]) == {"build", "test", "notify", "lint"}
    # report waits for cleanup: late waits for it too, and cleanup never for late
    assert set(waits["late"]) == {"build", "test", "notify", "lint", "cleanup", "report"}


def test_a_step_above_that_depends_on_the_status_step_is_not_waited_for(tmp_path):
    graph = _graph(tmp_path, [
        FakeStep("publish", depends_on=("cleanup",)), FakeStep("build"),
        FakeStep("cleanup", when="always()")])
    assert status_waits(graph, {"cleanup": True}) == {"cleanup": ("build",)}


def test_instances_of_a_status_matrix_step_do_not_wait_for_each_other(tmp_path):
    graph = _graph(tmp_path, [FakeStep("build"),
                              FakeStep("dump", when="failure()", matrix={"V": ["a", "b"]})])
    statuses = {"dump (V=a)": False, "dump (V=b)": False}
    assert status_waits(graph, statuses) == {"dump (V=a)": ("build",), "dump (V=b)": ("build",)}


def test_a_dependent_of_a_skipped_status_step_says_so():
    deps = {"build": (), "cleanup": ("build",), "report": ("cleanup",)}
    result, started, skipped = _schedule(deps, statuses={"cleanup": False})
    assert started == ["build"]
    assert skipped == {"cleanup": "no step before it failed",
                       "report": "dependency cleanup skipped"}


def _schedule(deps, fail=(), allowed=(), statuses=None, fail_fast=True, order=None):
    started: list[str] = []
    skipped: dict[str, str] = {}

    def work(name, cancel):
        started.append(name)
        if name in allowed:
            return "allowed"
        return name not in fail

    result = schedule(order or list(deps), deps, work, max_parallel=1, fail_fast=fail_fast,
                      on_skip=skipped.__setitem__, statuses=statuses)
    return result, started, skipped


def test_failure_step_runs_after_a_failure_even_under_fail_fast():
    deps = {"build": (), "lint": (), "test": ("build",), "notify": ("build", "lint", "test")}
    result, started, skipped = _schedule(deps, fail={"build"}, statuses={"notify": False})
    assert started == ["build", "notify"]
    assert result.status["notify"] == "passed" and not result.ok
    assert skipped["lint"].startswith("fail_fast") and "test" in skipped


def test_failure_step_is_skipped_when_nothing_failed():
    deps = {"build": (), "notify": ("build",)}
    result, started, skipped = _schedule(deps, statuses={"notify": False})
    assert started == ["build"] and result.status["build"] == "passed"
    assert skipped == {"notify": "no step before it failed"}


def test_an_allowed_failure_is_no_failure_and_always_runs_anyway():
    deps = {"flaky": (), "after": ("flaky",), "notify": ("flaky", "after"),
            "cleanup": ("flaky", "after", "notify")}
    result, started, skipped = _schedule(deps, allowed={"flaky"},
                                         statuses={"notify": False, "cleanup": True})
    assert started == ["flaky", "cleanup"] and result.status["cleanup"] == "passed"
    assert skipped == {"after": "dependency flaky failed (allowed to fail)",
                       "notify": "no step before it failed"}


def test_a_step_skipped_for_a_failure_counts_and_a_failing_cleanup_fails_the_run():
    deps = {"build": (), "test": ("build",), "notify": ("test",), "cleanup": ("test", "notify")}
    result, started, _ = _schedule(deps, fail={"build", "cleanup"}, fail_fast=False,
                                   statuses={"notify": False, "cleanup": True})
    assert started == ["build", "notify", "cleanup"]
    assert result.status["cleanup"] == "failed" and not result.ok


def test_steps_downstream_of_a_status_step_run_after_it():
    deps = {"build": (), "cleanup": ("build",), "report": ("cleanup",)}
    result, started, _ = _schedule(deps, fail={"build"}, statuses={"cleanup": True})
    assert started == ["build", "cleanup", "report"]


def test_realiser_runs_cleanup_on_failure_never_caches_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    steps = [FakeStep("build", commands=("mkdir -p out", "echo b > out/b"), artifacts=("out/",)),
             FakeStep("test", commands=("test -f out/b", "exit 3"), depends_on=("build",)),
             FakeStep("cleanup", commands=("test -f out/b", "echo cleaning"),
                      depends_on=("build", "test"), when="failure()"),
             FakeStep("always", commands=("echo bye",), when="always()")]
    store = Store.open(tmp_path / "store")
    try:
        for round_ in range(2):
            graph = compile_steps(repo, steps)
            events: list[ev.Event] = []
            opts = RealiseOptions(repo_root=repo, work_root=tmp_path / "work", max_parallel=2,
                                  statuses=status_steps(graph.pipeline, MAIN))
            result = Realiser(graph, store=store, runtime=FakeRuntime(), emit=events.append,
                              options=opts).run()
            assert result.exit_code == 1
            status = {n: r.status for n, r in result.steps.items()}
            assert status == {"build": "passed", "test": "failed", "cleanup": "passed",
                              "always": "passed"}
            cache = {e.step: e.hit for e in events if isinstance(e, ev.CacheChecked)}
            assert cache == {"build": round_ == 1, "test": False, "cleanup": False,
                             "always": False}
    finally:
        store.close()


def test_fail_fast_does_not_cancel_a_running_status_step_a_timeout_stops_it():
    import threading

    started = threading.Event()

    def work(name, cancel):
        if name == "watch":  # an always() step with nothing before it: runs at once
            started.set()
            return not cancel.wait(0.5)
        started.wait(5)
        return name != "bad"

    deps = {"watch": (), "bad": (), "other": ("bad",)}
    result = schedule(list(deps), deps, work, max_parallel=2, fail_fast=True,
                      statuses={"watch": True})
    assert result.status == {"watch": "passed", "bad": "failed", "other": "skipped"}

    clock = [0.0]
    slow = schedule(["slow", "cleanup"], {"slow": (), "cleanup": ("slow",)},
                    lambda name, cancel: (clock.__setitem__(0, 100.0), cancel.wait(5))[1] and False,
                    max_parallel=1, fail_fast=True, timeout=10, clock=lambda: clock[0],
                    statuses={"cleanup": True})
    assert slow.stop_reason == "pipeline timeout"
    assert slow.status == {"slow": "cancelled", "cleanup": "skipped"}
