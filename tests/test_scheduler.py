"""The DAG walk alone: ordering, parallelism, fail_fast, skipping, timeouts, Ctrl-C."""

from __future__ import annotations

import _thread
import threading

import pytest

from kata.realise.scheduler import Cancel, ForcedInterrupt, schedule

DIAMOND = {"build": (), "test": ("build",), "lint": ("build",), "package": ("test", "lint")}
ORDER = ("build", "test", "lint", "package")


class Recorder:
    def __init__(self, fail=(), block=(), release: threading.Event | None = None) -> None:
        self.fail = set(fail)
        self.block = set(block)  # these wait until cancelled
        self.release = release
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancel_reasons: dict[str, str] = {}
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()

    def __call__(self, name: str, cancel: Cancel) -> bool:
        with self.lock:
            self.started.append(name)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if name in self.block:
                cancel.wait()
                self.cancel_reasons[name] = cancel.reason
                return False
            if self.release is not None:
                self.release.wait(5)
            return name not in self.fail
        finally:
            with self.lock:
                self.running -= 1
                self.finished.append(name)


def test_dependencies_run_before_dependents():
    work = Recorder()
    result = schedule(ORDER, DIAMOND, work, max_parallel=4, fail_fast=True)
    assert result.ok and result.stop_reason == ""
    pos = {n: i for i, n in enumerate(work.started)}
    for name, deps in DIAMOND.items():
        for d in deps:
            assert work.finished.index(d) < pos[name]


def test_max_parallel_caps_running_steps():
    names = tuple(f"s{i}" for i in range(8))
    work = Recorder()
    result = schedule(names, {}, work, max_parallel=3, fail_fast=True)
    assert result.ok
    assert work.max_running <= 3
    assert sorted(work.started) == sorted(names)


def test_independent_steps_overlap():
    # each step waits until all 4 are running: only possible if they run in parallel
    barrier = threading.Barrier(4, timeout=10)

    def work(name: str, cancel: Cancel) -> bool:
        barrier.wait()
        return True

    names = ("a", "b", "c", "d")
    assert schedule(names, {}, work, max_parallel=4, fail_fast=True).ok


def test_fail_fast_cancels_running_and_skips_the_rest():
    # build fails while 'slow' (independent) runs: slow is cancelled, test/lint/package skipped
    deps = {**DIAMOND, "slow": ()}
    order = ("build", "slow", "test", "lint", "package")
    skipped: dict[str, str] = {}
    work = Recorder(fail={"build"}, block={"slow"})
    result = schedule(order, deps, work, max_parallel=4, fail_fast=True,
                      on_skip=lambda n, r: skipped.setdefault(n, r))
    assert result.status == {"build": "failed", "slow": "cancelled", "test": "skipped",
                             "lint": "skipped", "package": "skipped"}
    assert "build" in work.cancel_reasons["slow"]
    assert set(skipped) == {"test", "lint", "package"}
    assert "test" not in work.started


def test_without_fail_fast_independent_branches_go_on():
    deps = {"a": (), "a2": ("a",), "a3": ("a2",), "b": (), "b2": ("b",)}
    order = ("a", "b", "a2", "b2", "a3")
    work = Recorder(fail={"a"})
    result = schedule(order, deps, work, max_parallel=2, fail_fast=False)
    assert result.status == {"a": "failed", "a2": "skipped", "a3": "skipped",
                             "b": "passed", "b2": "passed"}
    assert result.stop_reason == ""


def test_pipeline_timeout_cancels_running_and_skips_waiting():
    work = Recorder(block={"build"})
    result = schedule(ORDER, DIAMOND, work, max_parallel=2, fail_fast=False, timeout=0.3)
    assert result.stop_reason == "pipeline timeout"
    assert result.status["build"] == "cancelled"
    assert work.cancel_reasons["build"] == "pipeline timeout"
    assert {result.status[n] for n in ("test", "lint", "package")} == {"skipped"}


def test_ctrl_c_cancels_cleanly():
    started = threading.Event()

    def work(name: str, cancel: Cancel) -> bool:
        if name == "build":
            started.set()
            _thread.interrupt_main()  # what Ctrl-C does to the main thread
            cancel.wait(10)
            return not cancel.is_set()
        return True

    result = schedule(ORDER, DIAMOND, work, max_parallel=2, fail_fast=True)
    assert result.interrupted
    assert result.status["build"] == "cancelled"
    assert result.status["package"] == "skipped"


def test_second_ctrl_c_forces():
    never = threading.Event()

    def work(name: str, cancel: Cancel) -> bool:
        _thread.interrupt_main()
        cancel.wait(10)
        _thread.interrupt_main()  # the user presses Ctrl-C again while we clean up
        never.wait(1)
        return False

    with pytest.raises(ForcedInterrupt):
        schedule(("only",), {}, work, max_parallel=1, fail_fast=True)


def test_an_exception_in_work_stops_the_walk_and_propagates():
    def work(name: str, cancel: Cancel) -> bool:
        if name == "build":
            raise RuntimeError("bug")
        return True

    with pytest.raises(RuntimeError):
        schedule(ORDER, DIAMOND, work, max_parallel=2, fail_fast=False)


def test_dependencies_outside_the_walk_count_as_done():
    work = Recorder()
    result = schedule(("test",), {"test": ("build",)}, work, max_parallel=1, fail_fast=True)
    assert result.status == {"test": "passed"}


def test_on_start_names_the_steps_started_in_one_go():
    deps = {"a": (), "b": (), "c": ("a", "b"), "d": ("c",), "e": ("c",)}
    for max_parallel, expected in ((4, [("a", "b"), ("c",), ("d", "e")]),
                                   (1, [("a",), ("b",), ("c",), ("d",), ("e",)])):
        batches: list[tuple[str, ...]] = []
        result = schedule(list(deps), deps, lambda name, cancel: True,
                          max_parallel=max_parallel, fail_fast=True, on_start=batches.append)
        assert result.ok and batches == expected


def test_requeue_reruns_a_dependency_then_the_step_and_keeps_the_others_waiting():
    from kata.realise.scheduler import Requeue

    started: list[str] = []
    asked = set()

    def work(name: str, cancel: Cancel) -> bool:
        started.append(name)
        if name == "package" and "package" not in asked:
            asked.add("package")
            raise Requeue(("lint", "outside"))  # one in the walk, one a hit outside it
        return True

    deps = {**DIAMOND, "outside": ()}
    result = schedule(ORDER, deps, work, max_parallel=1, fail_fast=True)
    assert result.ok and result.status["package"] == "passed"
    assert started == ["build", "test", "lint", "package", "lint", "outside", "package"]
    assert result.status["outside"] == "passed"


def test_an_allowed_failure_skips_its_dependents_and_cancels_nothing():
    from kata.realise.scheduler import ALLOWED

    skipped: dict[str, str] = {}
    release = threading.Event()

    def work(name: str, cancel: Cancel):
        if name == "test":
            release.set()
            return ALLOWED
        if name == "lint":
            release.wait(5)  # still running when test fails
            return not cancel.is_set()
        return True

    result = schedule(ORDER, DIAMOND, work, max_parallel=4, fail_fast=True,
                      on_skip=lambda n, why: skipped.__setitem__(n, why))
    assert result.status == {"build": "passed", "test": "allowed", "lint": "passed",
                             "package": "skipped"}
    assert skipped == {"package": "dependency test failed (allowed to fail)"}
    assert result.stop_reason == ""
