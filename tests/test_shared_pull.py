"""SharedPull (kata/runtimes/containerd/pulls.py) with values: who waits, who stops it.

The real pull, registry and containerd are in tests/test_pull_cancel.py."""

from __future__ import annotations

import threading

import pytest

from kata.errors import KataError
from kata.runtimes.containerd.pulls import PULL_STOPPED, PullStop, SharedPull


def _blocking_pull(started: threading.Event, release: threading.Event):  # noqa: ANN202
    def pull(stop: PullStop) -> None:
        started.set()
        while not release.wait(0.01):
            stop.check("sha256:x")
    return pull


def _shared(pull) -> tuple[SharedPull, list]:  # noqa: ANN001
    ended: list[SharedPull] = []
    shared = SharedPull("img", pull, ended.append)
    return shared, ended


def test_the_pull_is_stopped_only_when_its_last_waiter_left():
    started, release = threading.Event(), threading.Event()
    shared, ended = _shared(_blocking_pull(started, release))
    assert shared.join() and shared.join()
    shared.start()
    assert started.wait(5)
    first, second = threading.Event(), threading.Event()
    first.set()
    assert shared.wait(first) is False  # the first step leaves at once ...
    assert not shared.stop.is_set()  # ... and the other still waits: the pull goes on
    second.set()
    assert shared.wait(second) is False
    assert shared.stop.is_set()
    shared.finish(5)
    assert ended == [shared] and not shared.thread.is_alive()
    assert not shared.join()  # a step arriving now starts a pull of its own


def test_every_waiter_gets_the_pull_s_result_or_its_error():
    done, release = threading.Event(), threading.Event()
    release.set()
    ok, _ = _shared(_blocking_pull(done, release))
    assert ok.join() and ok.join()
    ok.start()
    assert ok.wait(threading.Event()) and ok.wait(None)

    def failing(stop: PullStop) -> None:
        raise KataError("image.registry_unreachable", "down", obj="x", exit_code=1)

    bad, _ = _shared(failing)
    assert bad.join() and bad.join()
    bad.start()
    for _ in range(2):
        with pytest.raises(KataError) as err:
            bad.wait(threading.Event())
        assert err.value.reason == "image.registry_unreachable"


def test_a_stopped_pull_raises_pull_stopped_at_its_next_check():
    stop = PullStop()
    stop.check("sha256:x")
    stop.set()
    with pytest.raises(KataError) as err:
        stop.check("sha256:x")
    assert err.value.reason == PULL_STOPPED


def test_each_waiter_gets_its_own_exception_chained_from_the_pulls():
    """One exception object raised in every waiter's thread: each raise added that
    thread's frames to the one traceback (and a handler that annotates or chains it
    changed what the other steps saw). Each waiter now gets a fresh one of the same
    type and fields, raised ``from`` the pull's."""
    original = KataError("image.registry_unreachable", "down", obj="x", exit_code=1)

    def failing(stop: PullStop) -> None:
        raise original

    bad, _ = _shared(failing)
    assert bad.join() and bad.join()
    bad.start()
    got = []
    for _ in range(2):
        with pytest.raises(KataError) as info:
            bad.wait(threading.Event())
        got.append(info.value)
    assert got[0] is not got[1] and original not in got
    for err in got:
        assert err.__cause__ is original
        assert (err.reason, err.message, err.obj, err.exit_code, str(err)) == \
            ("image.registry_unreachable", "down", "x", 1, "down")
