"""The realiser's values: how to realise (options) and what came of it (results)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from kata.keys import Scope
from store.runs import Phases, StepRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class RealiseOptions:
    """How to realise: what the CLI flags and the pipeline's settings say."""

    targets: tuple[str, ...] | None = None  # None: every step of the pipeline
    use_cache: bool = True  # look results up; False: --no-cache, settings.cache_enabled: false
    record: bool = True  # record realisations; False: settings.cache_enabled: false
    max_parallel: int = 0  # 0: CPU count
    fail_fast: bool = True
    timeout: float | None = None  # the pipeline's, in seconds
    secrets: Mapping[str, str] = field(default_factory=dict)  # name -> value
    repo_root: Path = Path(".")
    work_root: Path = Path(tempfile.gettempdir()) / "kata-work"
    git_commit: str = ""
    git_branch: str = ""
    git_event: str = ""  # push | tag | pull_request | schedule when run as an event (--event)
    git_tag: str = ""
    skip: Mapping[str, str] = field(default_factory=dict)  # step -> why (e.g. its only: is false)
    # the status steps of this run (``when: failure()``, ``always()``; kata.realise.plan.
    # status_steps): step -> whether it also runs when no step before it failed
    statuses: Mapping[str, bool] = field(default_factory=dict)
    scope: Scope = Scope()  # where scoped entries are read and written (kata.keys.Scope)
    # steps whose remote hits are fetched during the run (what --out copies); one the remote
    # cannot hand over (evicted blobs, the remote gone) is rebuilt here instead
    fetch: tuple[str, ...] = ()
    started: float | None = None  # time.monotonic() the user's wait began (the kata process's
    #   start, kata.realise.events.process_started()); None: when run() is called


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEntry:
    """What a dry run says about one step."""

    step: str
    hit: bool
    key: str
    why: str  # for a miss: why it will run
    remote: bool = False  # a hit found in the remote cache


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    name: str
    status: str  # passed | failed | allowed (failed, allow_failure) | cancelled | skipped
    cache: str = ""  # HIT | MISS | "" (never looked at)
    drv_hash: str = ""
    key: str = ""  # the key that hit, or the resolved key it was recorded under
    duration: float = 0.0
    exit_status: int | None = None
    log: str = ""  # log blob digest
    outputs: str = ""  # output tree digest
    produced_by: str = ""  # run id that produced a cached result
    message: str = ""
    service_logs: tuple[tuple[str, str], ...] = ()  # (service name, log blob digest)
    attempts: int = 1  # `retry:`: attempts made; the fields above are the last one's
    report: str = ""  # `reports:`: the test report's blob digest ("" none)
    phases: Phases | None = None  # when it was ready, started, running, ended (unix times)

    def record(self) -> StepRecord:
        """This result as the store's run record keeps it."""
        return StepRecord(**{k: getattr(self, k) for k in self.__slots__})  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    run_id: str
    steps: Mapping[str, StepResult]
    wall: float
    stop_reason: str = ""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        # a step skipped by only:/when: is no failure; one skipped because a dependency
        # failed comes with that failure
        return not self.interrupted and all(r.status in ("passed", "skipped", "allowed")
                                            for r in self.steps.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1
