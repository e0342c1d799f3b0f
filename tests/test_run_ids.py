"""Run ids: ``YYYYmmdd-HHMMSS-<6 hex>`` in UTC, whatever the host's time zone (two hosts
sharing a store, or one host across a DST change, named runs by their own clocks)."""

from __future__ import annotations

import re
import time

import pytest

from fakes import FakeRuntime, FakeStep, compile_steps
from kata.realise.noop import new_run_id
from kata.realise.realiser import Realiser, RealiseOptions
from store import Store
from store.runs import Run


@pytest.fixture
def far_zone(monkeypatch):
    """A zone 5:45 off UTC (no whole-hour offset can match it by chance)."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    assert time.strftime("%H%M", time.localtime(0)) == "0530"  # 1970: +5:30, the zone is real
    yield
    monkeypatch.undo()
    time.tzset()


def _utc_stamps(before: float, after: float) -> set[str]:
    return {time.strftime("%Y%m%d-%H%M%S", time.gmtime(t))
            for t in range(int(before), int(after) + 2)}


def test_new_run_ids_are_utc(far_zone) -> None:
    before = time.time()
    run_id = new_run_id()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    assert run_id[:15] in _utc_stamps(before, time.time())


def test_the_realisers_run_ids_are_utc(far_zone, tmp_path) -> None:
    (tmp_path / "repo").mkdir()
    graph = compile_steps(tmp_path / "repo", [FakeStep("a", commands=("true",))])
    with Store.open(tmp_path / "store") as store:
        before = time.time()
        realiser = Realiser(graph, store=store, runtime=FakeRuntime(), emit=lambda e: None,
                            options=RealiseOptions(repo_root=tmp_path / "repo",
                                                   work_root=tmp_path / "work"))
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", realiser.run_id)
        assert realiser.run_id[:15] in _utc_stamps(before, time.time())


def test_old_local_time_ids_keep_their_order_and_lookup(tmp_path) -> None:
    """A store's runs are ordered by their start time (record names are ``<started
    ns>-<id>``), never by the id's text: an old run named in local time ahead of UTC sorts
    by when it ran, and is still found by its id."""
    with Store.open(tmp_path / "store") as s:
        s.put_run(Run(id="20261130-235900-aaaaaa", pipeline="p", started=1000.0, wall=1.0,
                      status="passed"))  # local time, hours ahead of the UTC id below
        s.put_run(Run(id="20261130-200000-bbbbbb", pipeline="p", started=2000.0, wall=1.0,
                      status="passed"))
        assert [r.id for r in s.iter_runs()] == ["20261130-200000-bbbbbb",
                                                 "20261130-235900-aaaaaa"]
        assert [r.id for r in s.run_summaries()] == ["20261130-200000-bbbbbb",
                                                     "20261130-235900-aaaaaa"]
        assert s.get_run("20261130-235900-aaaaaa").started == 1000.0
