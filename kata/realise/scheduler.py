"""A DAG walk over a thread pool: who runs when, and who is skipped or cancelled.

The scheduler knows nothing of containers, caches or the store (ninja's
``Plan``): it is given the steps in topological order, their dependencies and
one ``work(name, cancel) -> bool`` callable, and decides what to start, what to
cancel and what to skip. ``work`` returns True when the step passed; it must
return promptly once its ``cancel`` is set.

Rules:
- at most ``max_parallel`` works at once; ready steps start in topological order;
- a failure with ``fail_fast`` cancels every running step (their ``cancel`` is
  set, with a reason) and skips every step not yet started;
- a failure without ``fail_fast`` skips the failure's dependents, transitively,
  while independent branches go on;
- an allowed failure (``work`` returns ``ALLOWED``) skips its dependents the same way
  and never cancels anything, ``fail_fast`` or not;
- past the pipeline ``timeout`` everything running is cancelled, the rest skipped;
- Ctrl-C (SIGINT, when called from the main thread) does the same; a second one
  raises ``ForcedInterrupt`` at once, without waiting for the running steps;
- ``work`` raising :class:`Requeue` re-runs the steps it names (even ones outside
  ``order``, given in ``deps``), then the step that raised it;
- a *status step* (``statuses``: step -> whether it also runs when nothing before it
  failed; ``when: failure()`` / ``always()``) waits until every step in its ``deps``
  (for it: every step before it, docs/config.md) has ended, however it ended; it then
  runs when one of them failed, was cancelled, or was skipped because of a failure or
  a stop (an allowed failure and a condition's skip are no failure), or when its value
  says so, and is skipped otherwise ("no step before it failed");
- ``fail_fast`` neither cancels nor skips status steps and the steps downstream of one
  (they run once what they wait for has ended); the pipeline timeout, Ctrl-C and an
  internal error stop them too;
- ``on_start(names)`` is told, before they are handed to ``work``, the steps started
  in one go (the reporters print ``[RUN] test, lint (parallel)`` for two or more).
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

Status = Literal["passed", "failed", "allowed", "cancelled", "skipped"]
ALLOWED = "allowed"  # what ``work`` returns for a failure the step allows (allow_failure)

_POLL = 0.2  # seconds between looks at the deadline and at Ctrl-C


class Cancel(threading.Event):
    """A step's cancellation signal, with the reason it was set."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


class Requeue(Exception):
    """Raised by ``work(name)``: ``steps`` (passed earlier, or outside the walk) must run
    again before ``name`` can (a tree they produced turned out damaged). They are
    queued at once, ``name`` waits for them, and is then started again."""

    def __init__(self, steps: Sequence[str]) -> None:
        super().__init__(", ".join(steps))
        self.steps = tuple(steps)


class ForcedInterrupt(KeyboardInterrupt):
    """The second Ctrl-C: stop waiting for the running steps."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleResult:
    status: Mapping[str, Status]
    stop_reason: str  # "" when the walk ran to its natural end
    interrupted: bool  # Ctrl-C

    @property
    def ok(self) -> bool:
        return all(s in ("passed", "allowed") for s in self.status.values())


Work = Callable[[str, Cancel], "bool | Literal['allowed']"]
OnSkip = Callable[[str, str], None]
OnStart = Callable[[tuple[str, ...]], None]


def schedule(
    order: Sequence[str],
    deps: Mapping[str, Sequence[str]],
    work: Work,
    *,
    max_parallel: int,
    fail_fast: bool,
    timeout: float | None = None,
    on_skip: OnSkip = lambda name, reason: None,
    on_start: OnStart = lambda names: None,
    clock: Callable[[], float] = time.monotonic,
    statuses: Mapping[str, bool] | None = None,
) -> ScheduleResult:
    """Run ``work`` over the DAG; dependencies outside ``order`` count as done.
    ``statuses``: the status steps (see the module's rules)."""
    assert max_parallel >= 1
    order = list(order)
    statuses = {n: v for n, v in (statuses or {}).items() if n in order}
    index = {name: i for i, name in enumerate(order)}
    waiting = {name: sum(1 for d in deps.get(name, ()) if d in index) for name in order}
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for d in deps.get(name, ()):
            if d in index:
                dependents[d].append(name)
    spared = set(statuses)  # status steps and what is downstream of them: fail_fast spares them
    for name in order:
        if any(d in spared for d in deps.get(name, ())):
            spared.add(name)
    status: dict[str, Status] = {}
    bad: set[str] = set()  # failed, cancelled, or skipped because of a failure or a stop
    ready: list[str] = []
    running: dict[Future[bool], tuple[str, Cancel]] = {}
    deadline = None if timeout is None else clock() + timeout
    stop_reason = ""
    halted = False  # nothing more starts, status steps neither
    interrupted = False
    error: BaseException | None = None
    skip_reasons: dict[str, str] = {}

    def skip(name: str, reason: str, failure: bool = True) -> None:
        if name not in status:
            status[name] = "skipped"
            skip_reasons[name] = reason
            if failure:
                bad.add(name)
            on_skip(name, reason)
            settle(name)

    def settle(name: str) -> None:
        """``name`` has ended: tell its dependents (run, wait on, or skip them)."""
        state = status[name]
        for child in dependents[name]:
            if child in status:
                continue
            if child in statuses or state == "passed":
                waiting[child] -= 1
                if waiting[child] == 0:
                    decide(child)
            elif state == "skipped":  # a failure's reason goes down the chain as it was
                skip(child, skip_reasons[name] if name in bad else f"dependency {name} skipped",
                     failure=name in bad)
            else:
                why = "failed (allowed to fail)" if state == "allowed" else "did not pass"
                skip(child, f"dependency {name} {why}", failure=name in bad)

    def decide(name: str) -> None:
        """Everything ``name`` waits for has ended: ready it, or skip a status step."""
        if halted:
            return
        if name in statuses and not statuses[name] and \
                not any(d in bad for d in deps.get(name, ()) if d in index):
            skip(name, "no step before it failed", failure=False)
        elif name not in ready:
            ready.append(name)

    for name in order:
        if waiting[name] == 0 and name not in status:
            decide(name)

    def requeue(name: str, again: Sequence[str]) -> None:
        pending = {n for n, _ in running.values()} | set(ready)
        waiting[name] = 0
        for step in again:
            if step not in index:
                index[step] = len(order)
                order.append(step)
                dependents[step] = []
            if name not in dependents[step]:
                dependents[step].append(name)
            waiting[name] += 1
            if step in pending:
                continue  # already coming again: wait for it like everyone else
            status.pop(step, None)
            waiting[step] = 0
            ready.append(step)
            for child in dependents[step]:  # they will be told of it once more
                if child != name and child not in status and child not in pending:
                    waiting[child] += 1
        ready.sort(key=index.__getitem__)

    def stop(reason: str, halt: bool) -> None:
        """fail_fast (``halt`` False) cancels and skips all but the spared steps; a halt
        (timeout, Ctrl-C, internal error) everything."""
        nonlocal stop_reason, halted
        if halted or (stop_reason and not halt):
            return
        stop_reason = reason
        halted = halt
        for name, cancel in running.values():
            if halt or name not in spared:
                cancel.cancel(reason)
        ready[:] = [] if halt else [n for n in ready if n in spared]
        busy = {n for n, _ in running.values()}
        for name in order:
            if name not in status and name not in busy and (halt or name not in spared):
                skip(name, reason)

    interrupt = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if interrupt.is_set():
            raise ForcedInterrupt()
        interrupt.set()

    # Ctrl-C, and likewise a CI runner's timeout or `kill` (SIGTERM) and a closed terminal
    # (SIGHUP): the run is cancelled and cleaned up, never cut off with its containers,
    # snapshots and mounts left behind
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signo] = signal.signal(signo, on_sigint)
    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="kata-step")
    # each work's future, as it ends: one queue to wait on (concurrent.futures.wait would
    # hook a waiter into every running future and unhook it again, each time round)
    finished: queue.SimpleQueue[Future[bool]] = queue.SimpleQueue()
    try:
        while True:
            batch = []
            ready.sort(key=index.__getitem__)
            while ready and len(running) + len(batch) < max_parallel and not halted:
                batch.append(ready.pop(0))
            if batch:
                on_start(tuple(batch))
            for name in batch:
                cancel = Cancel()
                future = pool.submit(work, name, cancel)
                running[future] = (name, cancel)
                future.add_done_callback(finished.put)
            if not running:
                break
            wait_for = _POLL if deadline is None else max(0.0, min(_POLL, deadline - clock()))
            done = _finished(finished, wait_for)
            if interrupt.is_set() and not interrupted:
                interrupted = True
                stop("interrupted", True)
            for future in sorted(done, key=lambda f: index[running[f][0]]):
                name, cancel = running.pop(future)
                exc = future.exception()
                if isinstance(exc, Requeue) and not stop_reason:
                    requeue(name, exc.steps)
                    continue
                if exc is not None and error is None:
                    error = exc
                outcome = future.result() if exc is None else False
                if outcome == ALLOWED or outcome is True:
                    status[name] = "allowed" if outcome == ALLOWED else "passed"
                    settle(name)
                    continue
                status[name] = "cancelled" if cancel.is_set() else "failed"
                bad.add(name)
                if exc is not None:
                    stop(f"internal error in {name}", True)
                elif status[name] == "failed" and fail_fast:
                    stop(f"fail_fast: {name} failed", False)
                settle(name)
            if deadline is not None and clock() >= deadline and (running or ready):
                stop("pipeline timeout", True)
    except ForcedInterrupt:
        for _, cancel in running.values():
            cancel.cancel("interrupted")
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        for signo, handler in previous.items():
            if handler is not None:  # None: not installed from Python, nothing to restore
                signal.signal(signo, handler)  # type: ignore[arg-type]
    if error is not None:
        raise error
    for name in order:  # anything unreachable (cannot happen in a DAG) is reported, not lost
        skip(name, stop_reason or "not reached")
    return ScheduleResult(status=status, stop_reason=stop_reason, interrupted=interrupted)


def _finished(finished: "queue.SimpleQueue[Future[bool]]", timeout: float) -> list[Future[bool]]:
    """The futures that ended: waits up to ``timeout`` seconds for the first, then takes
    whatever else has ended meanwhile ([] when none did in time)."""
    try:
        done = [finished.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done
