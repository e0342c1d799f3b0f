"""Release resources in reverse order without a cleanup failure hiding the first error."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("kata.runtime")


class Cleanup:
    """A LIFO stack of release actions, run by ``close``.

    Every action runs even when an earlier one fails. If the block raised, cleanup
    errors are attached to that error as notes; otherwise the first cleanup error is
    raised after all actions ran.
    """

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self._actions.append((what, action))

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        first = self.close(exc)
        if exc is None and first is not None:
            raise first

    def close(self, primary: BaseException | None = None) -> BaseException | None:
        first: BaseException | None = None
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except BaseException as err:  # noqa: BLE001 - each release must run
                log.warning("cleanup failed: %s: %s", what, err)
                if primary is not None:
                    primary.add_note(f"also, while cleaning up ({what}): {err}")
                elif first is None:
                    first = err
        return first


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with SIGINT, SIGTERM and SIGHUP held back: the first one is noted
    and raised again once the block is done (so a Ctrl-C that lands while a release is
    under way, after the scheduler gave its handlers back, neither cuts the release in
    half nor is lost); a second one during the block acts at once, as the first would
    have. Outside the main thread (where Python cannot set handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signo: signal.getsignal(signo) for signo in kinds}
    noted: list[int] = []

    def note(signo: int, frame: object) -> None:
        noted.append(signo)
        for s, handler in previous.items():  # the next one is not held back
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    for signo in kinds:
        signal.signal(signo, note)
    try:
        yield
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler if handler is not None else signal.SIG_DFL)
        if noted:
            signal.raise_signal(noted[0])
