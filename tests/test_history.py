"""History: `kata runs`, `kata cache list` (each result once), the --json documents."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kata.realise.events import iso_time
from kata.realise.history import cache_entries, summarise_run
from store import Realisation, Store
from store.runs import Run, StepRecord

ROOT = Path(__file__).resolve().parent.parent


def kata(*args: str, store: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(store)}
    proc = subprocess.run([sys.executable, "-m", "kata", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _result(s: Store, run: str, step: str, keys: list[str], created: float) -> str:
    out = s.put_blob(f"{run}/{step}".encode())
    real = Realisation(outputs=out, created=created, kind="step", run=run, step=step,
                       pipeline="p", stack=(out,))
    for key in keys:
        s.put_realisation(key, real)
    return out


def test_a_result_under_two_keys_is_one_entry(tmp_path) -> None:
    with Store.open(tmp_path / "store") as s:
        _result(s, "r1", "build", ["a" * 64, "b" * 64], 1000.0)  # derivation + resolved hash
        _result(s, "r1", "test", ["c" * 64], 1001.0)
        snap = s.put_blob(b"inputs")
        s.put_realisation("d" * 64, Realisation(outputs=snap, created=999.0, kind="inputs"))
        s.put_run(Run(id="r1", pipeline="p", started=1000.0, steps=(
            StepRecord(name="build", status="passed", drv_hash="b" * 64, cache="MISS"),)))
        listing = cache_entries(s)
    assert [(e.step, e.keys, e.key) for e in listing.entries] == [
        ("test", ("c" * 64,), "c" * 64),
        ("build", ("a" * 64, "b" * 64), "b" * 64),  # the run record names its derivation hash
    ]
    assert (listing.records, listing.internal, listing.unreadable) == (4, 1, 0)
    assert listing.entries[1].to_json()["created"] == "1970-01-01T00:16:40.000Z"


def test_cache_list_and_stats_json_count_results_once(tmp_path) -> None:
    root = tmp_path / "store"
    with Store.open(root) as s:
        _result(s, "r1", "build", ["a" * 64, "b" * 64], time.time())
        s.count(True)
        s.count(False)
    listed = kata("cache", "list", "--json", store=root, cwd=tmp_path)
    doc = json.loads(listed.stdout)
    assert doc["version"] == 1 and len(doc["entries"]) == 1
    assert doc["entries"][0]["step"] == "build" and doc["entries"][0]["pipeline"] == "p"
    assert doc["records"] == 2
    stats = json.loads(kata("cache", "stats", "--json", store=root, cwd=tmp_path).stdout)
    assert stats == {"version": 1, "entries": 1, "size": stats["size"], "hits": 1,
                     "misses": 1, "hit_rate": 0.5}
    assert kata("cache", "stats", store=root, cwd=tmp_path).stdout.startswith("Entries: 1 |")
    store_stats = json.loads(kata("store", "stats", "--json", store=root, cwd=tmp_path).stdout)
    assert (store_stats["realisations"], store_stats["entries"], store_stats["runs"]) == (2, 1, 0)


def test_run_summary_of_a_typed_record() -> None:
    run = Run(id="r1", pipeline="p", branch="dev", event="push", status="passed",
              started=1.0, wall=0.5, steps=(
                  StepRecord(name="a", status="passed", cache="HIT", exit_status=0),
                  StepRecord(name="b", status="cancelled", cache="MISS", exit_status=137)))
    summary = summarise_run(run)
    assert (summary.ref, summary.event, summary.ran, summary.cached, summary.failed,
            summary.cancelled) == ("refs/heads/dev", "push", 1, 1, 0, 1)


def test_run_summary_fields() -> None:
    record = Run(id="r9", pipeline="p", branch="main", commit="abc", status="failed",
                 started=86400.5, wall=2.25, steps=(
                     StepRecord(name="a", status="passed", cache="HIT", exit_status=0),
                     StepRecord(name="b", status="passed", cache="MISS", exit_status=0),
                     StepRecord(name="c", status="failed", cache="MISS", exit_status=1),
                     StepRecord(name="d", status="skipped")))
    assert summarise_run(record).to_json() == {
        "id": "r9", "pipeline": "p", "ref": "refs/heads/main", "commit": "abc",
        "event": "local", "scope": "", "status": "failed",
        "steps": {"total": 4, "ran": 2, "cached": 1, "failed": 1, "skipped": 1, "retried": 0,
                      "cancelled": 0},
        "started": "1970-01-02T00:00:00.500Z", "duration": 2.25}
    tagged = summarise_run(dataclasses.replace(record, event="tag", tag="v1"))
    assert (tagged.ref, tagged.event) == ("refs/tags/v1", "tag")


def test_iso_time() -> None:
    assert iso_time(0.25) == "1970-01-01T00:00:00.250Z"


def test_kata_runs_table_and_json(tmp_path) -> None:
    root = tmp_path / "store"
    with Store.open(root) as s:
        for i, pipeline in enumerate(["p", "q", "p"]):
            s.put_run(Run(id=f"run{i}", pipeline=pipeline, branch="main", started=1000.0 + i,
                          wall=1.5, status="passed", steps=(StepRecord(
                              name="a", status="passed", cache="MISS", exit_status=0),)))
    out = kata("runs", "--all", store=root, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines[0].split() == [
        "RUN", "PIPELINE", "REF", "TRUST", "EVENT", "STATUS", "RAN/CACHED/FAILED/CANCELLED",
        "STARTED",
        "DURATION"]
    assert [line.split()[:7] for line in lines[1:]] == [
        ["run2", "p", "main", "trusted", "local", "passed", "1/0/0/0"],
        ["run1", "q", "main", "trusted", "local", "passed", "1/0/0/0"],
        ["run0", "p", "main", "trusted", "local", "passed", "1/0/0/0"]]
    doc = json.loads(kata("runs", "--pipeline", "p", "--json", store=root, cwd=tmp_path).stdout)
    assert [r["id"] for r in doc["runs"]] == ["run2", "run0"] and doc["pipeline"] == "p"
    assert doc["runs"][0]["duration"] == 1.5
    empty = kata("runs", "--pipeline", "zzz", store=root, cwd=tmp_path)
    assert empty.stdout == "No runs recorded for pipeline 'zzz'.\n"


def test_validate_json(tmp_path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".kata-ci.yaml").write_text((ROOT / "tests/fixtures/quickstart.yaml").read_text())
    ok = kata("validate", "--json", "--offline", store=tmp_path / "store", cwd=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {
        "version": 1, "valid": True, "file": str(tmp_path / ".kata-ci.yaml"),
        "pipeline": "my-app", "steps": 3, "matrix_steps": 0, "matrix_instances": 0,
        "cycles": 0, "groups": 2, "levels": [["build"], ["test", "lint"]], "warnings": []}
    (tmp_path / ".kata-ci.yaml").write_text("steps:\n  - {name: a, image: b, depends_on: [a]}\n")
    bad = kata("validate", "--json", "--offline", store=tmp_path / "store", cwd=tmp_path)
    doc = json.loads(bad.stdout)
    assert bad.returncode == 2 and doc["valid"] is False
    assert (doc["error"]["reason"], doc["error"]["line"]) == ("config.cycle", 2)
    assert bad.stderr.startswith("error: ")


def test_a_store_that_cannot_be_opened_is_the_users_to_fix_exit_2(tmp_path):
    """Last session's leftover: store-open errors exited 1 ("an operation failed"), and a
    file named as the store was "I/O error ... File exists". A store the user named wrong
    is exit 2, naming the path and what to do (a read-only one:
    test_kill_points.py::test_a_read_only_store_says_what_to_do)."""
    afile = tmp_path / "afile"
    afile.write_text("not a store\n")
    res = kata("runs", store=afile, cwd=tmp_path)
    assert res.returncode == 2 and f"'{afile}' is a file" in res.stderr, res  # click's check
    other = tmp_path / "other"
    other.mkdir()
    (other / "VERSION").write_text("someone-else/9\n")
    res = kata("runs", store=other, cwd=tmp_path)
    assert res.returncode == 2 and str(other) in res.stderr \
        and "name a Kata store with --store DIR" in res.stderr, res
