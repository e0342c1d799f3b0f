"""Results this host recorded that the remote cache may not hold yet (issue 13): a durable
queue in the store's state directory, so a result built offline, or while the remote was
down or restarting, reaches the team's cache with the next run that reaches it (or
``kata remote push``).

    queue = PendingUploads(Path(store.state_dir) / DIR_NAME)
    name = queue.add(("<drv hash>", "<resolved hash>"))   # before the upload is tried
    queue.done(name)                                      # once the remote holds it
    with queue.draining() as mine:                        # one drainer per state directory
        for entry in queue.entries(): ...

Write-ahead: an entry is written *before* its upload starts and removed when the remote
holds it, so a run that is killed, loses the remote, or ends before its background
uploads do leaves the entry behind. An entry holds keys only (64-hex hashes, never a
path, a value or an object): the objects are read from the local store when it is sent;
one the store no longer holds (collected since) is dropped.

On disk (``kata-remote-pending/1``): one file per entry, ``<sha256 of its bytes>.json``,
holding ``{"format", "keys", "alias_of"}``; written to a dot-file and renamed
(``kata.atomicfile``), so a reader never sees half of one (and skips dot-files); the
dot-file of a writer killed before its rename is removed by the next process that queues
or drains (it names its writer: ``procs.pid_tag``). The rename is not fsync'd: a process
killed at any point leaves a whole entry or none; after a power loss an entry may be empty
or missing, and an entry that does not parse is deleted (its result then stays local, as
before this queue existed). What the queue holds was decided by the run that built it
(``kata.realise.records.Records.shares``: trusted runs, no secret below the step); the
drainer checks again that the record it sends is a shared (unscoped) step record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kata.atomicfile import sweep_dead, write_atomic

FORMAT = "kata-remote-pending/1"
DIR_NAME = "remote-pending"
_KEY = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[0-9a-f]{64}\.json$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """One queued upload. ``keys``: a step result's record keys (its derivation hash, then
    its resolved hash), each to get an ActionResult; ``alias_of``: for an early-cutoff
    entry, the resolved hash whose remote result ``keys[0]`` stands for too ("" for a
    result built here); ``name``: the entry's file name."""

    keys: tuple[str, ...]
    alias_of: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        assert self.keys and all(_KEY.match(k) for k in self.keys), self.keys
        assert not self.alias_of or _KEY.match(self.alias_of), self.alias_of

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "keys": list(self.keys), "alias_of": self.alias_of},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, name: str) -> Pending | None:
        """The entry ``data`` encodes (None: not one this version wrote whole)."""
        try:
            obj = json.loads(data)
            keys = obj["keys"]
            alias_of = obj.get("alias_of", "")
            if obj.get("format") != FORMAT or not isinstance(keys, list) or not keys \
                    or not all(isinstance(k, str) and _KEY.match(k) for k in keys) \
                    or not isinstance(alias_of, str) or (alias_of and not _KEY.match(alias_of)):
                return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(keys=tuple(keys), alias_of=alias_of, name=name)


class PendingUploads:
    """The queue in ``directory`` (created on the first ``add``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, keys: Sequence[str], *, alias_of: str = "") -> str:
        """Queue ``keys`` (returns the entry's name, for ``done``). The same entry added
        twice is one file. OSError when the state directory cannot be written."""
        data = Pending(keys=tuple(keys), alias_of=alias_of).encode()
        name = hashlib.sha256(data).hexdigest() + ".json"
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / name, data)  # its temporary file swept if killed
        return name

    def done(self, name: str) -> None:
        """Forget entry ``name`` (the remote holds it, or it can never go); idempotent."""
        assert _NAME.match(name), name
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / name)

    def names(self) -> list[str]:
        """The entries' file names (cheap: one directory read; [] without a queue)."""
        try:
            with os.scandir(self.directory) as it:
                return [e.name for e in it if _NAME.match(e.name)]
        except FileNotFoundError:
            return []

    def entries(self) -> list[Pending]:
        """Every whole entry, oldest first; one that does not parse is deleted, and so is
        the temporary file of a writer killed before its rename (``sweep_dead``)."""
        sweep_dead(self.directory)
        found: list[tuple[float, Pending]] = []
        for name in self.names():
            path = self.directory / name
            try:
                data = path.read_bytes()
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # sent by another process meanwhile
                continue
            entry = Pending.decode(data, name)
            if entry is None:
                self.done(name)
                continue
            found.append((mtime, entry))
        found.sort(key=lambda t: (t[0], t[1].name))
        return [e for _, e in found]

    @contextlib.contextmanager
    def draining(self, *, wait: bool = False) -> Iterator[bool]:
        """Hold the queue's drain lock (an flock on ``.lock``; released if the process
        dies): yields True when this process holds it, False when another one does and
        ``wait`` is False (that one sends the entries)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)
