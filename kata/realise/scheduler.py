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
- ``on_start(names)`` is told, before they are handed to ``work``, the steps started
  in one go (the reporters print ``[RUN] test, lint (parallel)`` for two or more).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
) -> ScheduleResult:
    """Run ``work`` over the DAG; dependencies outside ``order`` count as done."""
    assert max_parallel >= 1
    order = list(order)
    index = {name: i for i, name in enumerate(order)}
    waiting = {name: sum(1 for d in deps.get(name, ()) if d in index) for name in order}
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for d in deps.get(name, ()):
            if d in index:
                dependents[d].append(name)
    status: dict[str, Status] = {}
    ready = [name for name in order if waiting[name] == 0]
    running: dict[Future[bool], tuple[str, Cancel]] = {}
    deadline = None if timeout is None else clock() + timeout
    stop_reason = ""
    interrupted = False
    error: BaseException | None = None

    def skip(name: str, reason: str) -> None:
        if name not in status:
            status[name] = "skipped"
            on_skip(name, reason)

    def skip_dependents(name: str, why: str = "did not pass") -> None:
        stack = list(dependents[name])
        while stack:
            dep = stack.pop()
            if dep not in status:
                skip(dep, f"dependency {name} {why}")
                stack.extend(dependents[dep])

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

    def stop(reason: str) -> None:
        nonlocal stop_reason
        if stop_reason:
            return
        stop_reason = reason
        for _, cancel in running.values():
            cancel.cancel(reason)
        ready.clear()
        for name in order:
            if name not in status and all(name != n for n, _ in running.values()):
                skip(name, reason)

    interrupt = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if interrupt.is_set():
            raise ForcedInterrupt()
        interrupt.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="kata-step")
    try:
        while True:
            batch = []
            while ready and len(running) + len(batch) < max_parallel and not stop_reason:
                batch.append(ready.pop(0))
            if batch:
                on_start(tuple(batch))
            for name in batch:
                cancel = Cancel()
                running[pool.submit(work, name, cancel)] = (name, cancel)
            if not running:
                break
            wait_for = _POLL if deadline is None else max(0.0, min(_POLL, deadline - clock()))
            done, _ = wait(list(running), timeout=wait_for, return_when=FIRST_COMPLETED)
            if interrupt.is_set() and not interrupted:
                interrupted = True
                stop("interrupted")
            for future in sorted(done, key=lambda f: index[running[f][0]]):
                name, cancel = running.pop(future)
                exc = future.exception()
                if isinstance(exc, Requeue) and not stop_reason:
                    requeue(name, exc.steps)
                    continue
                if exc is not None and error is None:
                    error = exc
                outcome = future.result() if exc is None else False
                if outcome == ALLOWED:
                    status[name] = "allowed"
                    skip_dependents(name, "failed (allowed to fail)")
                    continue
                passed = outcome is True
                if passed:
                    status[name] = "passed"
                    for child in dependents[name]:
                        waiting[child] -= 1
                        if waiting[child] == 0 and child not in status and not stop_reason:
                            ready.append(child)
                    ready.sort(key=index.__getitem__)
                    continue
                status[name] = "cancelled" if cancel.is_set() else "failed"
                if exc is not None:
                    stop(f"internal error in {name}")
                elif status[name] == "failed":
                    if fail_fast:
                        stop(f"fail_fast: {name} failed")
                    else:
                        skip_dependents(name)
            if deadline is not None and clock() >= deadline and (running or ready):
                stop("pipeline timeout")
    except ForcedInterrupt:
        for _, cancel in running.values():
            cancel.cancel("interrupted")
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if error is not None:
        raise error
    for name in order:  # anything unreachable (cannot happen in a DAG) is reported, not lost
        skip(name, stop_reason or "not reached")
    return ScheduleResult(status=status, stop_reason=stop_reason, interrupted=interrupted)
