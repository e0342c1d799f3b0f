"""One image pull shared by the steps waiting on that image, stopped when they all left.

Steps starting at once on an image not yet stored wait on one pull (``SharedPull``). Each
waits with its own cancel: a cancelled step stops waiting at once (its run is over, Ctrl-C
ends within a couple of seconds), and when the last waiter has left the pull itself is
stopped (``PullStop.set``): the blob being read has its socket shut, so even a stalled
download ends now rather than at the read timeout. The pull then unwinds as any failed pull
does: the containerd ingest is aborted (``ImageStore.write_blob``) and the pull's lease is
deleted, so nothing half-written is left for the next run, which pulls again.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from kata.errors import KataError

PULL_STOPPED = "image.pull_stopped"  # the reason of the error a stopped pull ends with


class PullStop:
    """A pull's cancel: set when nobody waits for it any more. Thread-safe.

    The registry client ``track``s each blob response it streams; ``set`` shuts their
    sockets (a blocked read returns at once) and ``check`` then raises
    KataError(image.pull_stopped) in the pulling thread.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._streams: set[Any] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self, what: str) -> None:
        """Raise KataError(image.pull_stopped) naming ``what`` if the pull was stopped."""
        if self._event.is_set():
            raise KataError(PULL_STOPPED, f"pull of {what} stopped: no step waits for it",
                            obj=what, exit_code=130)

    def track(self, response: Any) -> None:
        """Shut ``response``'s socket (an httpx streaming response) once stopped."""
        with self._lock:
            self._streams.add(response)
            stopped = self._event.is_set()
        if stopped:
            _shut(response)

    def untrack(self, response: Any) -> None:
        with self._lock:
            self._streams.discard(response)

    def set(self) -> None:
        with self._lock:
            self._event.set()
            streams = list(self._streams)
        for response in streams:
            _shut(response)


def _shut(response: Any) -> None:
    """Shut the socket under an httpx streaming response: a read blocked on it returns
    (the reader then fails with an httpx error). Closing the response itself from another
    thread is not safe; shutting a socket is."""
    stream = (getattr(response, "extensions", None) or {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class SharedPull:
    """``pull(stop)`` run once on a thread of its own for every step that ``join``s it.

    ``wait(cancel)`` returns True once the pull succeeded, raises its error, or returns
    False as soon as ``cancel`` is set (the step leaves; the last one to leave stops the
    pull). ``done`` is called on the pull's thread when it ends, however it ended.
    """

    def __init__(self, name: str, pull: Callable[[PullStop], None],
                 done: Callable[[SharedPull], None]) -> None:
        self.stop = PullStop()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._waiters = 0
        self._pull, self._done = pull, done
        self.thread = threading.Thread(target=self._run, name=f"kata-pull {name}", daemon=True)

    def _run(self) -> None:
        try:
            self._pull(self.stop)
        except BaseException as err:  # noqa: BLE001 - handed to every waiter
            self._error = err
        finally:
            self._finished.set()
            self._done(self)

    def join(self) -> bool:
        """Count one more waiter; False if the pull was already stopped (start another)."""
        with self._lock:
            if self.stop.is_set():
                return False
            self._waiters += 1
            return True

    def start(self) -> None:
        self.thread.start()

    def wait(self, cancel: threading.Event | None, poll: float = 0.1) -> bool:
        while not self._finished.wait(poll if cancel is not None else None):
            if cancel is not None and cancel.is_set():
                self._leave()
                return False
        self._leave()
        if self._error is not None:
            # each waiter its own exception (one object raised in several threads would
            # gather every thread's frames in one traceback), chained from the pull's
            raise _fresh(self._error) from self._error
        return True

    def _leave(self) -> None:
        with self._lock:  # under the lock: a step joining now sees the stop and starts anew
            self._waiters -= 1
            if self._waiters == 0 and not self._finished.is_set():
                self.stop.set()

    def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the pull's thread (a stopped one cleans up fast)."""
        self.thread.join(timeout)


def _fresh(err: BaseException) -> BaseException:
    """A new exception of ``err``'s type with its args and attributes (a KataError's
    reason, message, obj, exit_code), without its traceback or chain. Built without
    calling ``__init__``, whose signature differs by type."""
    fresh = type(err).__new__(type(err), *err.args)
    fresh.args = err.args
    fresh.__dict__.update(getattr(err, "__dict__", {}))
    return fresh


__all__ = ["PULL_STOPPED", "PullStop", "SharedPull"]
