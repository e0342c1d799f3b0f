"""What the dashboard shows, as values read from one store (nothing here writes).

Runs are summarised by ``kata.realise.history.summarise_run`` (what ``kata runs`` prints),
cache entries listed by ``cache_entries`` (``kata cache list``), a miss explained by
``kata.why.explain`` against ``previous_derivations`` (``kata why``'s code and wording), a log line collapsed
by ``kata.realise.output.collapse`` (as the realiser writes it). Run records are immutable
files whose summaries the store's index keeps as it records them, so :class:`RunIndex`
reads each summary once and keeps it by file name: the runs page of a store with 10,000
runs lists a directory and filters summaries in memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kata.realise.events import iso_time
from kata.keys import trusted_scope
from kata.realise.history import RunSummary, cache_entries, previous_derivations, summarise_run
from kata.report.text import terminal_safe
from store.errors import StoreError
from store.runs import Run, StepRecord

DAY = 86400.0
LOG_LIMIT = 2 << 20  # bytes of a step log shown on a page (its end: where failures are)
STATUSES = ("passed", "failed", "interrupted", "running")


def matrix_group(step: str) -> str:
    """The matrix step an instance belongs to (``test (PY=3.11)`` -> ``test``); a plain
    step's own name (a step name has no space, an instance's always has one)."""
    return step.split(" (", 1)[0]


class RunIndex:
    """Run summaries by record file name; thread-safe. ``entries()`` lists the store's
    runs directory and asks the store (``Store.summaries``: its index, which ``put_run``
    fills as it records a run) only for names not seen yet; records never change."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._by_name: dict[str, RunSummary | None] = {}

    def entries(self) -> list[RunSummary]:
        """Every readable run, newest first."""
        names = self.store.run_names()
        with self._lock:
            known = self._by_name
            new = [n for n in names if n not in known]
            if new:
                known.update(self.store.summaries(new))
            return [s for n in names if (s := known.get(n)) is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFilter:
    """The runs page's filters ("" matches all); ``ref`` matches the full ref or the
    branch/tag name."""

    pipeline: str = ""
    ref: str = ""
    event: str = ""
    status: str = ""

    def matches(self, r: RunSummary) -> bool:
        if self.pipeline and r.pipeline != self.pipeline:
            return False
        if self.ref and self.ref not in (r.ref, short_ref(r.ref)):
            return False
        if self.event and r.event != self.event:
            return False
        return not self.status or r.status == self.status


def short_ref(ref: str) -> str:
    return ref.removeprefix("refs/heads/").removeprefix("refs/tags/")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunsPage:
    runs: tuple[RunSummary, ...]
    total: int  # runs matching the filter
    offset: int
    limit: int
    pipelines: tuple[str, ...]  # the filter's choices, from every run
    refs: tuple[str, ...]
    events: tuple[str, ...]


def runs_page(index: RunIndex, flt: RunFilter, *, offset: int = 0, limit: int = 50) -> RunsPage:
    """One page of the runs matching ``flt``, newest first."""
    every = index.entries()
    pipelines, refs, events = set(), set(), set()
    matching = []
    for r in every:
        pipelines.add(r.pipeline)
        if r.ref:
            refs.add(short_ref(r.ref))
        events.add(r.event)
        if flt.matches(r):
            matching.append(r)
    return RunsPage(runs=tuple(matching[offset:offset + limit]), total=len(matching),
                    offset=offset, limit=limit, pipelines=tuple(sorted(pipelines)),
                    refs=tuple(sorted(refs)), events=tuple(sorted(events)))


# -- one run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepView:
    """One step of a run as the run page shows it: its record, its dependencies (the
    record's ``needs``, else the names in its derivation record), its matrix group,
    ``critical``: on the run's critical path, and its test-report totals."""

    record: StepRecord
    needs: tuple[str, ...]
    group: str
    critical: bool = False
    tests: dict[str, Any] | None = None  # test-report totals (test_totals)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def hit(self) -> bool:
        return self.record.cache == "HIT"

    def to_json(self) -> dict[str, Any]:
        r = self.record
        p = r.phases
        return {"name": r.name, "status": r.status, "cache": r.cache, "hit": self.hit,
                "needs": list(self.needs), "group": self.group, "critical": self.critical,
                "duration": round(r.duration, 3), "exit_status": r.exit_status,
                "message": r.message, "attempts": r.attempts, "drv_hash": r.drv_hash,
                "produced_by": r.produced_by, "log": r.log,
                "services": [s for s, _ in r.service_logs],
                "phases": None if p is None else {
                    "ready": iso_time(p.ready), "started": iso_time(p.started),
                    "running": iso_time(p.running), "ended": iso_time(p.ended)},
                "tests": self.tests}


REPORT_FORMAT = "kata-test-report/1"  # a stored JUnit report blob (kata.realise.reports)


def test_totals(store: Any, record: StepRecord) -> dict[str, Any] | None:
    """A step's test-report totals, when it has a stored report: ``{"tests", "passed",
    "skipped", "failed", "failures": [{"name", "line"}]}``, else None.

    The hook for JUnit reports (``reports: {junit: [...]}``): the report is a JSON blob of
    format ``kata-test-report/1`` named by the step record's ``report`` field if it has one,
    else by the ``report`` field of the realisation its key names (a cache hit shows the
    totals of the run that built it). Records and realisations without one: None."""
    digest = getattr(record, "report", "") or ""
    if not digest and record.key and record.status == "passed":
        try:
            real = store.get_realisation(record.key)
        except StoreError:
            real = None
        digest = getattr(real, "report", "") or ""
    return report_totals(store, digest) if digest else None


def report_totals(store: Any, digest: str) -> dict[str, Any] | None:
    """The totals of the stored report blob ``digest`` (None when gone or not a report)."""
    import json

    try:
        doc = json.loads(store.read_blob(digest))
        if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
            return None
        counts = {k: int(doc.get(k, 0)) for k in ("passed", "skipped", "failed")}
        failures = [{"name": str(f.get("name", "")), "line": str(f.get("line", ""))}
                    for f in doc.get("failures") or () if isinstance(f, dict)]
    except (StoreError, ValueError, TypeError, AttributeError):
        return None
    return {"tests": sum(counts.values()), **counts, "failures": failures}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunView:
    run: Run
    summary: RunSummary
    steps: tuple[StepView, ...]
    critical: tuple[str, ...]  # the critical path, first step first

    def step(self, name: str) -> StepView | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"run": self.summary.to_json(), "critical_path": list(self.critical),
                "steps": [s.to_json() for s in self.steps]}


def run_view(store: Any, run_id: str) -> RunView | None:
    record = store.get_run(run_id)
    if record is None:
        return None
    names = {s.name for s in record.steps}
    needs: dict[str, tuple[str, ...]] = {}
    for s in record.steps:
        found = s.needs
        if not found and s.drv_hash:  # a record from before `needs`: the derivation's
            found = _derivation_deps(store, s.drv_hash)
        needs[s.name] = tuple(n for n in found if n in names)
    critical = critical_path(record.steps, needs)
    steps = tuple(StepView(record=s, needs=needs[s.name], group=matrix_group(s.name),
                           critical=s.name in critical, tests=test_totals(store, s))
                  for s in record.steps)
    return RunView(run=record, summary=summarise_run(record), steps=steps, critical=critical)


def planned_view(run_id: str, parse: dict[str, Any]) -> RunView:
    """A run in progress as its live DAG shows it before any step is done: the ``parse``
    event's planned steps (status ``pending``) and their ``needs`` (events of kata before
    the field: no edges). The live page recolours the nodes as events come."""
    planned = [n for n in parse.get("planned") or () if isinstance(n, str)]
    raw = parse.get("needs") if isinstance(parse.get("needs"), dict) else {}
    names = set(planned)
    steps = []
    for n in planned:
        deps = raw.get(n) if isinstance(raw.get(n), list) else []
        needs = tuple(d for d in deps if isinstance(d, str) and d in names)
        steps.append(StepView(record=StepRecord(name=n, status="pending", needs=needs),
                              needs=needs, group=matrix_group(n)))
    record = Run(id=run_id, pipeline=str(parse.get("pipeline") or ""), status="running",
                 steps=tuple(s.record for s in steps))
    return RunView(run=record, summary=summarise_run(record), steps=tuple(steps), critical=())


def _derivation_deps(store: Any, drv_hash: str) -> tuple[str, ...]:
    from kata.derivation import decode

    try:
        raw = store.get_derivation(drv_hash)
        return tuple(n for n, _ in decode(raw).dep_names) if raw else ()
    except Exception:  # noqa: BLE001 - an old or foreign record: no edges, not a failure
        return ()


def critical_path(steps: tuple[StepRecord, ...], needs: dict[str, tuple[str, ...]]
                  ) -> tuple[str, ...]:
    """The chain of steps that decided the run's length: from the step that ended last,
    back through the dependency that ended last (the one it waited for), to a step with
    none. Steps without phase times take no part; () when none has them."""
    ended = {s.name: s.phases.ended for s in steps if s.phases is not None}
    if not ended:
        return ()
    name = max(ended, key=lambda n: ended[n])
    path = [name]
    while True:
        deps = [d for d in needs.get(name, ()) if d in ended]
        if not deps:
            break
        name = max(deps, key=lambda d: ended[d])
        if name in path:  # not a DAG: never loop
            break
        path.append(name)
    return tuple(reversed(path))


# -- logs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLog:
    step: str
    text: str  # masked when written; carriage returns collapsed
    truncated: bool  # only the last LOG_LIMIT bytes
    produced_by: str  # a hit: the run whose output this is

    def html(self) -> str:
        return ansi_html(self.text)


def step_log(store: Any, view: RunView, step: str, service: str = "") -> StepLog | None:
    """A step's (or its service's) log as stored: masked when it was written (the
    realiser masks before anything reaches the store), ``\\r`` rewrites collapsed."""
    from kata.realise.output import collapse

    found = view.step(step)
    if found is None:
        return None
    r = found.record
    digest = r.log
    if service:
        logs = dict(r.service_logs)
        if r.cache == "HIT" and r.produced_by:
            producer = store.get_run(r.produced_by)
            ran = producer.step(step) if producer is not None else None
            logs = dict(ran.service_logs) if ran is not None else {}
        digest = logs.get(service, "")
        if not digest:
            return None
    data = b""
    if digest:
        try:
            data = store.read_blob(digest)
        except StoreError:
            data = b"(log not in the store)\n"
    truncated = len(data) > LOG_LIMIT
    if truncated:
        data = data[-LOG_LIMIT:]
    text = "\n".join(collapse(line) for line in data.decode("utf-8", "replace").split("\n"))
    return StepLog(step=step, text=text, truncated=truncated,
                   produced_by=r.produced_by if r.cache == "HIT" else "")


def ansi_html(text: str) -> str:
    """``text`` as HTML: escaped, SGR colours as inline styles (ansi2html); every other
    escape sequence shown as the terminal shows it (``kata.report.text.terminal_safe``),
    so a step's OSC 8 hyperlink is not a link whose text says another address."""
    from ansi2html import Ansi2HTMLConverter

    return Ansi2HTMLConverter(inline=True, escaped=True).convert(
        terminal_safe(text), full=False)


# -- why a step missed ----------------------------------------------------------------


def miss_reasons(store: Any, view: RunView) -> dict[str, list[str]]:
    """For each step of the run that missed and ran: ``kata why``'s lines, its derivation
    against the last different one that passed before this run (one walk over the older
    runs for all of them)."""
    missed = [s.record for s in view.steps if s.record.cache == "MISS" and s.record.drv_hash]
    return why_many(store, view.run, missed)


def why_lines(store: Any, run: Run, record: StepRecord) -> list[str]:
    """``kata why``'s lines for one step of ``run`` that missed."""
    return why_many(store, run, [record])[record.name]


def why_many(store: Any, run: Run, records: list[StepRecord]) -> dict[str, list[str]]:
    """``kata why``'s lines (``kata.why.explain``, the CLI's own code) for steps of ``run``
    that missed: each step's recorded derivation against its last realisation before this
    run (and its dependencies', whose own diffs say whether they may hit by early cutoff),
    one walk over the older runs for all of them."""
    from kata.derivation import decode
    from kata.why import Subject, WhyResult, explain

    by_name = {s.name: s for s in run.steps}
    subjects: dict[str, Subject] = {}
    todo = [r.name for r in records]
    while todo:  # the steps asked about and, transitively, their recorded dependencies
        name = todo.pop()
        step = by_name.get(name)
        if name in subjects or step is None or not step.drv_hash:
            continue
        raw = store.get_derivation(step.drv_hash)
        if raw is None:
            continue
        try:
            record = decode(raw)
        except Exception:  # noqa: BLE001 - an old or foreign record: explained as unrecorded
            continue
        deps = tuple(n for n, _ in record.dep_names) or step.needs
        subjects[name] = Subject(record=record, drv_hash=step.drv_hash, deps=deps,
                                 artifacts=bool(record.derivation.artifacts))
        todo.extend(deps)
    wanted = {n: by_name[n].drv_hash for n in subjects}
    previous = previous_derivations(store, run.pipeline, wanted, before=run.id,
                                    trusted=trusted_scope(run.scope)) if wanted else {}

    def lookup(name: str):  # noqa: ANN202
        data, same = previous.get(name, (None, False))
        return subjects[name].record if same else data  # passed as it is: unchanged

    order = [s.name for s in run.steps]
    out = {}
    for record in records:
        if record.name not in subjects:
            result = WhyResult(step=record.name, status="unrecorded",
                               current_hash=record.drv_hash)
        elif previous.get(record.name, (None, False)) == (None, True):
            result = WhyResult(step=record.name, status="not_stored",
                               current_hash=record.drv_hash)
        else:
            (result,) = explain([record.name], subjects, order, lookup)
        out[record.name] = result.lines()
    return out


# -- cache trends ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheTrends:
    days: tuple[str, ...]  # the last 30 days, oldest first (YYYY-MM-DD, local time)
    hits: tuple[int, ...]  # per day: steps served from the cache
    misses: tuple[int, ...]  # per day: steps whose container ran
    per_pipeline: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # name, hits, misses
    size_days: tuple[int, ...]  # bytes stored at each day's end, of the objects held now
    size_now: int
    objects: int
    biggest: tuple[dict[str, Any], ...]
    missers: tuple[dict[str, Any], ...]  # steps missing most (pipeline, step, misses, why)

    @staticmethod
    def rate(hits: int, misses: int) -> float | None:
        return hits / (hits + misses) if hits + misses else None

    def to_json(self) -> dict[str, Any]:
        return {"days": [{"day": d, "hits": h, "misses": m, "hit_rate": self.rate(h, m),
                          "store_bytes": b}
                         for d, h, m, b in zip(self.days, self.hits, self.misses,
                                               self.size_days)],
                "pipelines": [{"pipeline": p, "hits": list(h), "misses": list(m),
                               "hit_rate": self.rate(sum(h), sum(m))}
                              for p, h, m in self.per_pipeline],
                "store": {"bytes": self.size_now, "objects": self.objects},
                "biggest": list(self.biggest), "missing_most": list(self.missers)}


def cache_trends(store: Any, index: RunIndex, *, now: float | None = None,
                 days: int = 30, top: int = 10) -> CacheTrends:
    """Hit rate per day and per pipeline over the last ``days`` days (from the run
    records: cached vs ran steps, as ``kata runs`` counts them), the store's size at each
    day's end (the objects it holds now, by when each was written: what gc removed is not
    counted), the biggest cached results and the steps that missed most, with why."""
    now = time.time() if now is None else now
    first = _day_start(now) - (days - 1) * DAY
    labels = tuple(time.strftime("%Y-%m-%d", time.localtime(first + i * DAY + DAY / 2))
                   for i in range(days))
    hits, misses = [0] * days, [0] * days
    per: dict[str, tuple[list[int], list[int]]] = {}
    recent: list[RunSummary] = []
    for r in index.entries():
        if r.started < first:
            break  # newest first
        i = min(days - 1, int((r.started - first) // DAY))
        h, m = per.setdefault(r.pipeline, ([0] * days, [0] * days))
        hits[i] += r.cached
        misses[i] += r.ran
        h[i] += r.cached
        m[i] += r.ran
        recent.append(r)
    sizes = [0] * days
    size_now = objects = 0
    obj_size: dict[str, int] = {}
    for digest, st in store.objects.iter_objects():
        objects += 1
        size_now += st.st_size
        obj_size[digest] = st.st_size
        i = int((st.st_mtime - first) // DAY)
        for j in range(max(0, i), days):
            sizes[j] += st.st_size
    listing = cache_entries(store)
    biggest = sorted(listing.entries, key=lambda e: -obj_size.get(e.outputs, 0))[:top]
    return CacheTrends(
        days=labels, hits=tuple(hits), misses=tuple(misses),
        per_pipeline=tuple((p, tuple(h), tuple(m)) for p, (h, m) in sorted(per.items())),
        size_days=tuple(sizes), size_now=size_now, objects=objects,
        biggest=tuple({**e.to_json(), "bytes": obj_size.get(e.outputs, 0)} for e in biggest),
        missers=tuple(_missers(store, recent, top)))


MISSERS_RUNS = 500  # the steps that miss most: counted over this many newest runs that ran


def _missers(store: Any, recent: list[RunSummary], top: int) -> list[dict[str, Any]]:
    """The steps that ran most often (missed) in ``recent`` runs (the newest
    :data:`MISSERS_RUNS` of them that ran something: their records are read), each with
    the reason of its latest miss."""
    counts: Counter[tuple[str, str]] = Counter()
    latest: dict[tuple[str, str], tuple[Run, StepRecord]] = {}
    for r in [r for r in recent if r.ran][:MISSERS_RUNS]:
        record = store.get_run(r.id)
        if record is None:
            continue
        for s in record.steps:
            if s.cache == "MISS" and s.exit_status is not None:
                key = (record.pipeline, s.name)
                counts[key] += 1
                latest.setdefault(key, (record, s))
    chosen = counts.most_common(top)
    runs: dict[str, Run] = {}
    by_run: dict[str, list[StepRecord]] = {}  # one walk over older runs per run, not per step
    for key, _ in chosen:
        run, rec = latest[key]
        runs[run.id] = run
        if rec.drv_hash:
            by_run.setdefault(run.id, []).append(rec)
    whys: dict[tuple[str, str], list[str]] = {}
    for run_id, recs in by_run.items():
        for name, lines in why_many(store, runs[run_id], recs).items():
            whys[(run_id, name)] = lines
    out = []
    for (pipeline, step), n in chosen:
        run_id = latest[(pipeline, step)][0].id
        out.append({"pipeline": pipeline, "step": step, "misses": n, "last_run": run_id,
                    "why": whys.get((run_id, step), [])})
    return out


def _day_start(t: float) -> float:
    lt = time.localtime(t)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


# -- live runs ------------------------------------------------------------------------


def live_runs(state_dir: str) -> list[dict[str, Any]]:
    """The runs in progress on this host: the ``start`` lines of the live journals whose
    writer still runs (``kata.report.journal``), newest first."""
    import json
    from pathlib import Path

    from kata.report.journal import SUFFIX, live

    directory = Path(state_dir) / "live"
    out = []
    try:
        names = sorted(os.listdir(directory), reverse=True)
    except FileNotFoundError:
        return []
    for name in names:
        path = directory / name
        if not name.endswith(SUFFIX) or not live(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                head = json.loads(f.readline())
        except (OSError, ValueError):
            continue
        out.append({k: head.get(k, "") for k in ("run_id", "pipeline", "commit", "branch",
                                                  "git_event", "time")})
    return out


def journal_path(state_dir: str, run_id: str) -> str:
    from kata.report.journal import SUFFIX

    return os.path.join(state_dir, "live", os.path.basename(run_id) + SUFFIX)

