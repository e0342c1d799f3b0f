"""kata web without a browser: the run record's new fields, the live journal, the critical
path, the run index, the token gate, and the pages over a store written by hand (the
browser test, tests/test_web_browser.py, drives the same pages over real runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import msgpack
import pytest

from kata.realise import events as ev
from store import Store
from store.runs import Phases, Run, StepRecord

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def test_a_record_without_the_new_fields_keeps_its_bytes():
    plain = StepRecord(name="a", status="passed")
    obj = plain.to_obj()
    assert "needs" not in obj and "phases" not in obj
    assert StepRecord.from_obj(obj) == plain
    full = StepRecord(name="b", status="passed", needs=("a",),
                      phases=Phases(ready=1.0, started=2.0, running=3.0, ended=4.0))
    obj = full.to_obj()
    assert obj["needs"] == ["a"] and obj["phases"] == [1, 1.0, 2.0, 3.0, 4.0]
    run = Run(id="r", steps=(full,))
    assert Run.decode(run.encode()) == run


def test_phases_of_an_unknown_version_read_as_none_and_are_ordered():
    assert StepRecord.from_obj({"name": "a", "status": "passed",
                                "phases": [2, 1, 2, 3, 4]}).phases is None
    assert StepRecord.from_obj({"name": "a", "status": "passed", "phases": "x"}).phases is None
    p = Phases(ready=5.0, started=4.0, running=0.0, ended=6.0)  # clamped into order
    assert (p.ready, p.started, p.running, p.ended) == (5.0, 5.0, 5.0, 6.0)


def test_critical_path_follows_the_dependency_that_ended_last():
    from kata.web.data import critical_path

    def s(name, end, needs=()):
        return StepRecord(name=name, status="passed", needs=needs,
                          phases=Phases(ready=0, started=0, running=0, ended=end))

    steps = (s("a", 1), s("b", 5), s("c", 6, ("a", "b")), s("d", 2, ("a",)))
    needs = {x.name: x.needs for x in steps}
    assert critical_path(steps, needs) == ("b", "c")
    assert critical_path((StepRecord(name="x", status="skipped"),), {"x": ()}) == ()


def test_matrix_group():
    from kata.web.data import matrix_group

    assert matrix_group("test (PY=3.11, DB=pg)") == "test" and matrix_group("build") == "build"


def test_the_journal_is_the_json_stream_and_goes_away(tmp_path):
    from kata.report.journal import Journal, live

    j = Journal(tmp_path / "live")
    j.start(run_id="r1", pipeline="p", commit="c", branch="main")
    j(ev.OutputLine(step="s", stream="stdout", text="hello"))
    path = tmp_path / "live" / "r1.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["run_id"] == "r1" and lines[0]["owner"]
    assert lines[1]["event"] == "output" and lines[1]["text"] == "hello" and lines[1]["version"] == 1
    assert live(path)
    j.close()
    assert not path.exists()


def test_the_journal_holds_a_cached_runs_bulk_until_an_event_someone_waits_on(tmp_path):
    from kata.report.journal import Journal

    j = Journal(tmp_path / "live")
    j.start(run_id="r2", pipeline="p")
    path = tmp_path / "live" / "r2.jsonl"
    j(ev.CacheChecked(step="a", hit=True, key="k"))
    j(ev.StepPassed(step="a", duration=0.0, cached=True))
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["start"]
    j(ev.StepStarted(step="b", command="true"))  # a step starts: all of it is readable
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == [
        "start", "cache", "pass", "run"]
    j.close()


def test_a_dead_writers_journal_is_stale_and_swept(tmp_path):
    from kata.report.journal import Journal, live
    from procs import owner_id

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = owner_id(child.pid)
    child.wait()
    (tmp_path / "live").mkdir()
    stale = tmp_path / "live" / "old.jsonl"
    stale.write_text(json.dumps({"event": "start", "run_id": "old", "owner": owner}) + "\n")
    assert not live(stale)
    j = Journal(tmp_path / "live")
    j.start(run_id="new", pipeline="p")
    assert not stale.exists()
    j.close()


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store")
    log = s.put_blob(b"\x1b[31mred line\x1b[0m\nprogress 10%\rprogress 100%\n<b>not bold</b>\n")
    t = time.time() - 60
    for i in range(3):
        steps = (
            StepRecord(name="build", status="passed", cache="HIT" if i else "MISS",
                       exit_status=0, duration=2.0, log=log,
                       phases=Phases(ready=t, started=t + 1, running=t + 2, ended=t + 4)),
            StepRecord(name="test (V=a)", status="failed", cache="MISS", exit_status=1,
                       needs=("build",), log=log, message="exit 1",
                       phases=Phases(ready=t + 4, started=t + 4, running=t + 5, ended=t + 6)),
        )
        s.put_run(Run(id=f"r{i}", pipeline="demo" if i < 2 else "other", branch="main",
                      commit="abc", started=t + i, wall=6.0, status="failed", steps=steps))
    yield s
    s.close()


def test_pages_and_api_over_a_store(store):
    from kata.web.app import create_app

    c = TestClient(create_app(store))
    runs = c.get("/api/runs").json()
    assert [r["id"] for r in runs["runs"]] == ["r2", "r1", "r0"]
    assert runs["filters"]["pipelines"] == ["demo", "other"]
    assert [r["id"] for r in c.get("/api/runs?pipeline=demo").json()["runs"]] == ["r1", "r0"]
    assert c.get("/api/runs?ref=main&status=passed").json()["runs"] == []
    assert c.get("/api/runs?event=local").json()["total"] == 3
    doc = c.get("/api/runs/r1").json()
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["build"]["hit"] and steps["test (V=a)"]["needs"] == ["build"]
    assert steps["test (V=a)"]["group"] == "test"
    assert doc["critical_path"] == ["build", "test (V=a)"]
    log = c.get("/api/runs/r1/log/test (V=a)").json()
    assert log["text"].splitlines() == ["\x1b[31mred line\x1b[0m", "progress 100%",
                                        "<b>not bold</b>"]
    assert "&lt;b&gt;" in log["html"] and "<b>" not in log["html"]
    page = c.get("/runs/r1").text
    assert 'class="node status-passed hit' in page and "phase-running" in page
    assert c.get("/runs/nope").status_code == 404
    assert c.get("/api/runs/nope").json()["error"] == "not_found"
    cache = c.get("/api/cache").json()
    assert cache["days"][-1]["hits"] == 2 and cache["days"][-1]["misses"] == 4
    assert {p["pipeline"] for p in cache["pipelines"]} == {"demo", "other"}
    assert c.get("/cache").status_code == 200


def test_the_run_index_reads_each_record_once(store, monkeypatch):
    from kata.web.data import RunIndex

    index = RunIndex(store)
    assert len(index.entries()) == 3
    reads = []
    real = store.read_run
    monkeypatch.setattr(store, "read_run", lambda name: reads.append(name) or real(name))
    store.put_run(Run(id="r9", pipeline="demo", started=time.time()))
    assert [r.id for r in index.entries()][0] == "r9" and reads == []  # from the index


def test_the_token_gate(store):
    from kata.web.app import create_app

    token = "0123456789abcdef0123456789abcdef"
    c = TestClient(create_app(store, token=token), follow_redirects=False)
    assert c.get("/api/runs").status_code == 401
    assert c.get("/runs").headers["location"] == "/login"
    assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.post("/login", data={"token": "wrong"}).status_code == 401
    ok = c.post("/login", data={"token": token})
    assert ok.status_code == 303 and "httponly" in ok.headers["set-cookie"].lower()
    assert c.get("/runs").status_code == 200  # the cookie


def test_kata_web_refuses_other_hosts_without_a_token(tmp_path):
    env = dict(os.environ, KATA_STORE=str(tmp_path / "store"),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "kata", "web", "--host", "192.0.2.1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--token" in proc.stderr and "Traceback" not in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "kata", "web", "--host", "::",
                              "--token", str(tmp_path / "none")],
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "token file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_an_old_record_still_reads(tmp_path):
    """A kata-run/1 record written before needs/phases (msgpack by hand) reads."""
    raw = msgpack.packb({"format": "kata-run/1", "id": "old", "steps": [
        {"name": "a", "status": "passed", "cache": "MISS", "service_logs": {}}]})
    run = Run.decode(raw)
    assert run.steps[0].needs == () and run.steps[0].phases is None


def test_the_run_index_reads_the_stores_summaries_not_the_records(store, monkeypatch):
    """A fresh server over a store it never saw decodes no run record: the store's
    index has their summaries (tests/store/test_run_summaries.py)."""
    from kata.web.data import RunIndex

    monkeypatch.setattr(store, "read_run", lambda name: pytest.fail(f"read {name}"))
    assert [r.id for r in RunIndex(store).entries()] == ["r2", "r1", "r0"]


def test_test_report_totals_from_a_stored_report(store):
    """The hook for JUnit reports: a kata-test-report/1 blob's totals; anything else None."""
    from kata.web.data import report_totals, test_totals

    blob = store.put_blob(json.dumps({
        "format": "kata-test-report/1", "passed": 7, "skipped": 1, "failed": 2,
        "failures": [{"name": "t::a", "line": "assert 1 == 2"}], "files": [],
        "warnings": []}).encode())
    assert report_totals(store, blob) == {"tests": 10, "passed": 7, "skipped": 1, "failed": 2,
                                          "failures": [{"name": "t::a",
                                                        "line": "assert 1 == 2"}]}
    assert report_totals(store, store.put_blob(b"{}")) is None
    assert test_totals(store, StepRecord(name="a", status="passed")) is None


def _views(spec: list[tuple[str, tuple[str, ...]]]):
    from kata.web.data import StepView, matrix_group

    return [StepView(record=StepRecord(name=n, status="passed", needs=needs), needs=needs,
                     group=matrix_group(n)) for n, needs in spec]


def _drawn_crossings(steps) -> tuple[int, int]:
    """(crossings in record order, crossings as laid out) over the same edges."""
    from kata.web.draw import crossings, levels, order_columns

    col = levels(steps)
    edges = [(d, s.name) for s in steps for d in s.needs]
    naive: dict[str, float] = {}
    per_col: dict[int, int] = {}
    for s in steps:
        naive[s.name] = per_col.get(col[s.name], 0)
        per_col[col[s.name]] = naive[s.name] + 1
    laid = {m.name: i for blocks in order_columns(steps)
            for i, m in enumerate(m for b in blocks for m in b)}
    return crossings(naive, edges, col), crossings(laid, edges, col)


def test_the_dag_layout_untangles_a_crossing_prone_graph():
    """Four steps depending on four others in reverse order cross 6 times as recorded;
    the barycenter ordering draws them without a crossing."""
    steps = _views([("a", ()), ("b", ()), ("c", ()), ("d", ()),
                    ("w", ("d",)), ("x", ("c",)), ("y", ("b",)), ("z", ("a",))])
    assert _drawn_crossings(steps) == (6, 0)


def test_the_dag_layout_reduces_crossings_of_hundreds_of_steps_and_keeps_matrix_blocks():
    import random

    rng = random.Random(15)
    spec: list[tuple[str, tuple[str, ...]]] = []
    layers: list[list[str]] = []
    for depth in range(6):
        names = [f"s{depth}_{i}" for i in range(50)]
        for n in names:
            needs = tuple(rng.sample(layers[-1], 2)) if layers else ()
            spec.append((n, needs))
        layers.append(names)
    spec += [(f"test (PY=3.{v})", (layers[0][7],)) for v in (10, 11, 12)]
    steps = _views(spec)
    naive, laid = _drawn_crossings(steps)
    assert laid < naive * 0.5, (naive, laid)  # 12,059 -> 4,014 when written
    from kata.web.draw import order_columns

    blocks = [b for col in order_columns(steps) for b in col]
    assert [m.name for b in blocks if b[0].group == "test" for m in b] == [
        "test (PY=3.10)", "test (PY=3.11)", "test (PY=3.12)"]


def test_the_live_stream_carries_the_dag_of_the_plan(store, tmp_path):
    """The parse event gains the DAG drawn from the plan (every step pending, an edge per
    dependency), which the live page recolours as events come."""
    from pathlib import Path

    from kata.report.journal import Journal

    j = Journal(Path(store.state_dir) / "live")
    j.start(run_id="live1", pipeline="demo")
    j(ev.Parsed(pipeline="demo", steps=3, groups=2, planned=("a", "b", "c"),
                needs={"a": (), "b": ("a",), "c": ("a", "gone")}))
    j(ev.StepStarted(step="a", command="true"))
    from kata.web.app import create_app

    c = TestClient(create_app(store, warm=False))
    with c.stream("GET", "/api/runs/live1/events") as r:
        lines = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                lines.append(json.loads(line[6:]))
            if len(lines) == 3:
                break
    j.close()
    parse = lines[1]
    assert parse["event"] == "parse" and parse["needs"]["c"] == ["a", "gone"]
    dag = parse["dag"]
    assert dag.count('class="node status-pending"') == 3
    assert 'data-from="a" data-to="b"' in dag and 'data-from="a" data-to="c"' in dag
    assert "gone" not in dag


def test_the_run_list_counts_cancelled_steps_apart_from_failed_ones(tmp_path):
    """Last session's leftover: the run list's Failed column counted a step cancelled by
    Ctrl-C or the pipeline timeout; the list and the run page now have cancelled apart."""
    from kata.web.app import create_app

    with Store.open(tmp_path / "store") as s:
        s.put_run(Run(id="r1", pipeline="demo", started=time.time() - 60, wall=4.0,
                      status="interrupted", steps=(
                          StepRecord(name="a", status="failed", cache="MISS", exit_status=1),
                          StepRecord(name="b", status="cancelled", cache="MISS"),
                          StepRecord(name="c", status="cancelled", cache="MISS"))))
        c = TestClient(create_app(s))
        assert c.get("/api/runs").json()["runs"][0]["steps"]["cancelled"] == 2
        page = c.get("/runs").text
        assert "<th>Failed</th><th>Cancelled</th>" in page
        assert "<td>1</td><td>2</td><td>0</td></tr>" in page, page
        assert "1 failed, 2 cancelled, 0 skipped" in c.get("/runs/r1").text


def test_kata_web_reads_a_read_only_store_through_a_private_index(store, tmp_path):
    """A store mounted read-only (or another user's): `kata runs`, `logs`, `why` read it
    through a private index; `kata web` refused it (exit 2, 'mount it read-write'). It
    serves it now, lists the runs in progress from the store's own state dir, and leaves
    no private index behind."""
    import re
    import signal
    import urllib.request

    from kata.report.journal import Journal

    root = store.root
    journal = Journal(Path(store.state_dir) / "live")  # a run in progress, ours
    journal.start(run_id="r-live", pipeline="demo")
    store.close()
    private = tmp_path / "tmp"  # where the private index goes ($TMPDIR)
    private.mkdir()
    env = dict(os.environ, KATA_STORE=str(root), TMPDIR=str(private),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        proc = subprocess.Popen([sys.executable, "-m", "kata", "web", "--port", "0"], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            found = re.search(r"serving (http://\S+/)", line)
            assert found, line + proc.stderr.read()
            with urllib.request.urlopen(found.group(1) + "api/runs", timeout=30) as resp:
                doc = json.loads(resp.read())
            assert [r["id"] for r in doc["runs"]] == ["r2", "r1", "r0"]
            assert [r["run_id"] for r in doc["live"]] == ["r-live"]
            with urllib.request.urlopen(found.group(1) + "runs/r1", timeout=30) as resp:
                assert resp.status == 200
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert "Traceback" not in proc.stderr.read()
    finally:
        subprocess.run(["umount", str(root)], check=True)
        journal.close()
    assert os.listdir(private) == [], "the private index was left"


def test_the_why_of_a_run_page_is_kata_whys_own_wording(tmp_path):
    """The run page explained a miss with `diff` alone: a dependency that changed read as
    the generic 'it runs unless a result for its new key is stored or it hits by early
    cutoff', where `kata why` says whether the dependency itself changed. Both now come from
    kata.why.explain: the page's lines are `kata why`'s lines, word for word."""
    from kata.compile import compile_pipeline
    from kata.loader import load_text
    from kata.web.data import why_many
    from kata.why import why
    from test_why import CHAIN, resolver

    old = compile_pipeline(load_text(CHAIN), resolver=resolver, repo_root=tmp_path)
    new = compile_pipeline(load_text(CHAIN.replace("[make]", "[make all]")),
                           resolver=resolver, repo_root=tmp_path)
    with Store.open(tmp_path / "store") as s:
        for i, graph in enumerate((old, new)):
            steps = []
            for name in graph.order:
                node = graph.nodes[name]
                s.put_derivation(node.drv_hash, node.record().encode())
                steps.append(StepRecord(name=name, status="passed", cache="MISS",
                                        exit_status=0, drv_hash=node.drv_hash,
                                        needs=node.deps))
            s.put_run(Run(id=f"r{i}", pipeline="pipeline", started=time.time() + i,
                          status="passed", steps=tuple(steps)))
        run = s.get_run("r1")
        shown = why_many(s, run, list(run.steps))
    records = {n: old.nodes[n].record() for n in old.order}
    expected = {r.step: r.lines() for r in why(new, "//...", records.get)}
    assert shown == expected
    assert "pack itself is unchanged, its key changed only through build" in \
        "\n".join(shown["test"])
