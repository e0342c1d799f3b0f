"""What the realiser says while it works: a stream of small frozen values.

The realiser never prints; it hands each event to a callable (``Emit``). The
reporters in ``kata.report`` turn the stream into the plain lines of the
overview, a live view on a terminal, or one JSON object per line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from kata.realise.reports import TestReport

from kata.realise.wire import JSON_VERSION, iso_time, process_started, stamped  # noqa: F401

CacheSource = Literal["derivation", "resolved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    """The pipeline was loaded and compiled."""

    pipeline: str
    steps: int
    groups: int
    planned: tuple[str, ...]  # the steps this run will realise, in topological order
    # each planned step's dependencies (names), for a live DAG (kata web)
    needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheChecked:
    """The cache was consulted for a step: a hit (with the key that hit) or a miss."""

    step: str
    hit: bool
    # the step's derivation hash, hit or miss, early cutoff or not: the key --dry-run,
    # `kata graph` and the next run's direct hit name (the resolved hash only for a step
    # that has no derivation hash)
    key: str
    source: CacheSource = "derivation"
    reason: str = ""  # why a miss: "not in store", "--no-cache", "cache: false", ...
    produced_by: str = ""  # on a hit: the run that produced the result, when known
    damaged: bool = False  # a miss because what was cached is missing or corrupt (healed)
    remote: bool = False  # a hit found in the remote cache (kata.remote), not the local store
    resolved: str = ""  # a hit by early cutoff (source "resolved"): the resolved hash that hit


@dataclass(frozen=True, slots=True, kw_only=True)
class ParallelStarted:
    """Several steps are being started together (before their own ``StepStarted``)."""

    steps: tuple[str, ...]  # in pipeline order


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted:
    """A step's container is being started."""

    step: str
    command: str  # the step's commands joined by " && ", as the overview shows them


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputLine:
    """One line the step wrote (secrets already masked)."""

    step: str
    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPassed:
    step: str
    duration: float
    cached: bool = False
    # `reports:`: the step's test report (on a hit: of the run that built it); None: none
    report: "TestReport | None" = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed:
    step: str
    exit_status: int | None  # None when it failed before or after its container ran
    duration: float
    message: str = ""  # "timed out after 5s", "artifact dist/ was not produced", ...
    reason: str = "step.failed"
    allowed: bool = False  # `allow_failure:` covers it: a warning, the run goes on
    report: "TestReport | None" = None  # `reports:`: the step's test report; None: none


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRetrying:
    """A failed attempt is retried (``retry:``): ``attempt`` of ``attempts`` starts next."""

    step: str
    attempt: int  # the attempt about to start, from 2
    attempts: int  # 1 + retry.max
    exit_status: int | None  # the failed attempt's
    reason: str = "step.failed"
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSkipped:
    step: str
    reason: str  # "dependency test failed", "cancelled (fail_fast)", ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePull:
    """An image pull's progress (the runtime's ``PullProgress``, handed on by the CLI)."""

    image: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    done: bool = False
    stopped: bool = False  # with done: it ended without the image (stopped or failed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The run is over."""

    run_id: str
    passed: int
    failed: int
    skipped: int
    cached: int  # of the passed ones, how many came from the cache
    ran: int  # how many containers ran
    total: float  # sum of the durations of the steps that ran
    wall: float  # wall-clock seconds the user waited: since RealiseOptions.started (for
    #   `kata run`, the process's start: loading, compiling and hashing count)
    cancelled: bool = False  # Ctrl-C or pipeline timeout
    allowed: int = 0  # failed but allowed to (`allow_failure:`); not among `failed`
    stop: str = ""  # with cancelled: what ended the run, "interrupted" or "pipeline timeout"
    cancelled_steps: int = 0  # steps stopped while running (Ctrl-C, timeout); not among `failed`


Event = (Parsed | CacheChecked | ParallelStarted | StepStarted | OutputLine | StepPassed
         | StepFailed | StepRetrying | StepSkipped | ImagePull | Done)
Emit = Callable[[Event], None]

_KIND = {
    Parsed: "parse",
    CacheChecked: "cache",
    ParallelStarted: "parallel",
    StepStarted: "run",
    OutputLine: "output",
    StepPassed: "pass",
    StepFailed: "fail",
    StepRetrying: "retry",
    StepSkipped: "skip",
    ImagePull: "pull",
    Done: "done",
}


def kind(event: Event) -> str:
    """The event's short name, as ``--json`` writes it in its ``event`` field."""
    return _KIND[type(event)]


_NAMES: dict[type, tuple[str, ...]] = {}  # event type -> its field names (fields() is slow)


def to_dict(event: Event) -> dict[str, object]:
    """A JSON-ready dict of the event: ``{"event": kind, ...fields}``."""
    cls = type(event)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(event))
    data: dict[str, object] = {"event": _KIND[cls]}
    for name in names:
        value = getattr(event, name)
        if hasattr(value, "to_json"):  # a TestReport
            value = value.to_json()
        data[name] = list(value) if isinstance(value, tuple) else value
    return data


__all__ = [
    "CacheChecked", "Done", "Emit", "Event", "ImagePull", "OutputLine", "ParallelStarted",
    "Parsed", "StepFailed", "StepPassed", "StepRetrying", "StepSkipped", "StepStarted",
    "JSON_VERSION", "iso_time", "kind", "process_started", "stamped", "to_dict",
]
