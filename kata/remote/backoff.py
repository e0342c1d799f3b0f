"""A remote cache that timed out, remembered for a while in the store's state directory, so
the runs that follow (a laptop offline, a server restarting) do not each wait for it.

    memo = Backoff(Path(store.state_dir) / FILE_NAME, remote="grpc://cache:50051 main")
    memo.active()          # -> Down(until, reason) while a recent timeout is remembered
    memo.failed(reason, seconds=60)   # a call timed out: leave the remote alone 60 s
    memo.clear()           # it answered

Only a *timeout* is remembered: a refused connection or a bad answer fails fast, so the
next run may as well ask again. The file (``kata-remote-backoff/1``: JSON ``{"format",
"remote", "until" (unix seconds), "reason", "at" (unix seconds, when written)}``) names the
remote (URL and instance) it concerns; another remote's is ignored. One written at a time
that is now in the future (the clock was ahead, then set back) is over: else a clock set
back a day would leave the remote alone for a day. It is replaced by a rename (never half-written;
``kata.atomicfile``, whose temporary file a killed writer leaves is removed by the next
write there) and needs no fsync (losing it costs one timeout). ``kata remote push`` ignores it and
clears it when the remote answers; ``remote.backoff: 0s`` turns it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kata.atomicfile import write_atomic

FORMAT = "kata-remote-backoff/1"
FILE_NAME = "remote-backoff.json"


@dataclass(frozen=True, slots=True)
class Down:
    """``until``: unix seconds; ``reason``: the failure, one line."""

    until: float
    reason: str

    def describe(self, *, push_hint: bool = True) -> str:
        """``<reason>; not asked again until 17:40:12 UTC per remote.backoff, or now by
        `kata remote push``` (``push_hint=False``: without the last part, for the push)."""
        at = time.strftime("%H:%M:%S UTC", time.gmtime(self.until))
        hint = ", or now by `kata remote push`" if push_hint else ""
        return f"{self.reason}; not asked again until {at} per remote.backoff{hint}"


class Backoff:
    """The back-off memo at ``path`` for ``remote`` (its URL and instance)."""

    def __init__(self, path: Path, *, remote: str) -> None:
        self.path = path
        self.remote = remote

    def active(self, now: float | None = None) -> Down | None:
        """The remembered failure of this remote, while it lasts (None: ask the remote)."""
        try:
            obj = json.loads(self.path.read_bytes())
            if obj.get("format") != FORMAT or obj.get("remote") != self.remote:
                return None
            down = Down(float(obj["until"]), str(obj["reason"]).splitlines()[0])
            at = float(obj.get("at", "-inf"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None  # unreadable: as if absent (the next timeout rewrites it)
        now = time.time() if now is None else now
        return down if at <= now < down.until else None  # at > now: the clock went back

    def failed(self, reason: str, *, seconds: float) -> Down | None:
        """Remember that the remote timed out (``reason``), for ``seconds`` (0: not at all).
        Never raises (a state directory that cannot be written costs later runs a timeout)."""
        if seconds <= 0:
            return None
        at = time.time()
        down = Down(at + seconds, reason.splitlines()[0] if reason else "timed out")
        data = json.dumps({"format": FORMAT, "remote": self.remote, "until": down.until,
                           "reason": down.reason, "at": at}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data)  # its temporary file swept if killed
        except OSError:
            return None
        return down

    def clear(self) -> None:
        """Forget a remembered failure (the remote answered). Never raises."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
