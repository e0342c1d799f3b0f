"""Run summaries: the index the store keeps as it records a run (what `kata runs` and
`kata web` list), rebuilt from the run records when it is missing, stale or behind."""

from __future__ import annotations

import os
import time

import msgpack
import pytest

from store import Store
from store.files import write_immutable
from store.runs import Run, StepRecord, record_name, summarise


def _run(i: int, **kw) -> Run:
    steps = (StepRecord(name="a", status="passed", cache="MISS", exit_status=0),
             StepRecord(name="b", status="passed", cache="HIT"),
             StepRecord(name="c", status="failed", cache="MISS", exit_status=1))
    return Run(id=f"r{i}", pipeline="p" if i % 2 else "q", branch="main", event="push",
               started=1_700_000_000.0 + i, wall=3.0, status="failed", steps=steps, **kw)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "store", state_dir=tmp_path / "state") as s:
        yield s


def _no_decoding(monkeypatch, s: Store) -> None:
    monkeypatch.setattr(s, "read_run", lambda name: pytest.fail(f"decoded {name}"))


def test_recording_a_run_indexes_its_summary(store, monkeypatch):
    runs = [_run(i) for i in range(5)]
    for r in runs:
        store.put_run(r)
    _no_decoding(monkeypatch, store)
    got = store.run_summaries()
    assert got == [summarise(r) for r in reversed(runs)]
    assert got[0].ran == 2 and got[0].cached == 1 and got[0].failed == 1
    assert got[0].ref == "refs/heads/main"
    assert [s.id for s in store.run_summaries(pipeline="p", limit=2)] == ["r3", "r1"]


def test_a_missing_index_is_rebuilt_from_the_records_once(store, monkeypatch):
    for i in range(3):
        store.put_run(_run(i))
    store.index.clear("rsum")  # an index from before summaries, or deleted
    assert [s.id for s in store.run_summaries()] == ["r2", "r1", "r0"]
    _no_decoding(monkeypatch, store)  # refilled as it was read
    assert [s.id for s in store.run_summaries()] == ["r2", "r1", "r0"]


def test_a_summary_of_another_version_is_recomputed(store, monkeypatch):
    run = _run(1)
    store.put_run(run)
    name = record_name(run)
    store.index.put_run_summaries({name: msgpack.packb([99, "stale"])})
    decoded = []
    real = store.read_run
    monkeypatch.setattr(store, "read_run", lambda n: decoded.append(n) or real(n))
    assert store.run_summaries() == [summarise(run)] and decoded == [name]
    assert store.run_summaries() == [summarise(run)] and decoded == [name]


def test_a_record_the_index_never_saw_is_listed(store, tmp_path):
    """Written by another host (its own index), or by a writer killed between the record
    and its index transaction."""
    store.put_run(_run(1))
    other = _run(2)
    write_immutable(store.tmp, os.path.join(store.root, "runs", record_name(other)),
                    other.encode())
    assert [s.id for s in store.run_summaries()] == ["r2", "r1"]
    with Store.open(store.root, state_dir=tmp_path / "state-b") as b:  # a fresh index
        assert [s.id for s in b.run_summaries()] == ["r2", "r1"]


def test_an_unreadable_record_is_passed_over_and_remembered(store, monkeypatch):
    store.put_run(_run(1))
    write_immutable(store.tmp, os.path.join(store.root, "runs", f"{time.time_ns():020d}-bad"),
                    b"\xc1 not msgpack")
    assert [s.id for s in store.run_summaries()] == ["r1"]
    _no_decoding(monkeypatch, store)
    assert [s.id for s in store.run_summaries()] == ["r1"]


def test_reindexing_drops_the_summaries_and_they_come_back(store):
    store.put_run(_run(1))
    store.verify(reindex=True)
    assert store.index.run_summaries([record_name(_run(1))]) == [None]
    assert [s.id for s in store.run_summaries()] == ["r1"]


def test_cancelled_steps_are_counted_apart_from_failed_ones(store, monkeypatch):
    """Last session's leftover: a summary counted a cancelled step (stopped by Ctrl-C or
    the pipeline timeout) as failed, where the run's done line says "1 cancelled". A
    summary of the previous version (no ``cancelled`` field, cancelled inside ``failed``)
    is recomputed from its record, not read as if nothing had been cancelled."""
    steps = (StepRecord(name="a", status="failed", cache="MISS", exit_status=1),
             StepRecord(name="b", status="cancelled", cache="MISS", exit_status=None),
             StepRecord(name="c", status="skipped", cache="MISS"))
    run = Run(id="r1", pipeline="p", started=1_700_000_000.0, wall=3.0, status="failed",
              steps=steps)
    got = summarise(run)
    assert (got.failed, got.cancelled, got.skipped) == (1, 1, 1)
    assert got.to_json()["steps"]["cancelled"] == 1 and got.to_json()["steps"]["failed"] == 1
    store.put_run(run)
    old = [2, *summarise(run)._replace(failed=2)[:-1]]  # version 2: no cancelled field
    store.index.put_run_summaries({record_name(run): msgpack.packb(old)})
    assert [(s.failed, s.cancelled) for s in store.run_summaries()] == [(1, 1)]
