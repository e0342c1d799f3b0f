"""The live journal: a run in progress, observable from outside the ``kata run`` process.

While a run goes on, every event it emits is appended, as the ``--json`` line it would be
(docs/json.md; output lines already masked), to ``<state dir>/live/<run id>.jsonl``, the
store's host-local state directory. The first line is a ``start`` event naming the run
(``run_id``, ``pipeline``, ``commit``, ``branch``, ``git_event``) and the process that
writes it (``owner``, a ``procs.owner_id`` label); the last, ``done``, is written after the
run record is in the store. The file is removed when the reporter closes.

Lines are flushed as they come, except the bulk of a cached run (cache lookups, cached
passes, skips): those wait in the file's buffer for the next other event or the end, so
a fully cached 1,000-step run makes a handful of writes, not 2,000, and a reader still
sees every line before the step that follows starts.

Readers (``kata web``'s live view) follow the file as it grows. A journal whose owner is
gone (a ``kata`` killed before its ``close``) is stale: readers pass it over, and the next
journal opened in that directory deletes it. Writing never fails a run: after an OSError
(a full disk) the journal stops writing, removes its file (which would otherwise hold the
full disk's space until the run ends, failing every later write of the store: the steps'
logs, the run record) and the run goes on without a live view.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from kata.realise import events as ev
from kata.report.jsonl import event_line
from procs import owner_dead, owner_id

SUFFIX = ".jsonl"


class Journal:
    """A reporter (``kata.realise.events.Emit``) writing the live journal of one run.

    ``start(...)`` opens ``<directory>/<run_id>.jsonl`` and writes the ``start`` line;
    events before it are dropped (none are emitted before the realiser runs)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def start(self, *, run_id: str, pipeline: str, commit: str = "", branch: str = "",
              git_event: str = "") -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            sweep(self.directory)
            self.path = self.directory / f"{run_id}{SUFFIX}"
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError:
            self._file = None
            return
        self._write({"event": "start", "run_id": run_id, "pipeline": pipeline,
                     "commit": commit, "branch": branch, "git_event": git_event,
                     "owner": owner_id()})

    def __call__(self, event: ev.Event) -> None:
        if self._file is not None:
            self._write(ev.to_dict(event), flush=not _bulk(event))

    def _write(self, data: dict[str, object], *, flush: bool = True) -> None:
        assert self._file is not None
        try:
            self._file.write(event_line(data) + "\n")
            if flush:
                self._file.flush()
        except OSError:  # a full disk: give its space back to the store
            self.close()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        """Close and remove the journal (the run record is what remains)."""
        self._close_file()
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:  # gone, or a read-only store: the next sweep removes it
                pass
            self.path = None


def _bulk(event: ev.Event) -> bool:
    """Whether ``event`` is of the many a cached run emits and nobody waits on."""
    return isinstance(event, (ev.CacheChecked, ev.StepSkipped)) or (
        isinstance(event, ev.StepPassed) and event.cached)


def owner_of(path: Path) -> str:
    """The ``owner`` of a journal's ``start`` line ("" when unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        return str(json.loads(first).get("owner", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def live(path: Path) -> bool:
    """Whether the journal's writer still runs (an unreadable owner counts as live: it
    may be a header being written)."""
    owner = owner_of(path)
    return not owner or not owner_dead(owner)


def sweep(directory: Path) -> None:
    """Delete the journals in ``directory`` whose writer provably ended."""
    for entry in os.scandir(directory):
        if entry.name.endswith(SUFFIX) and owner_of(Path(entry.path)) and \
                owner_dead(owner_of(Path(entry.path))):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


class Tee:
    """One reporter handing every event to several (the terminal's and the journal)."""

    def __init__(self, *reporters) -> None:  # noqa: ANN002
        self.reporters = reporters

    def __call__(self, event: ev.Event) -> None:
        for r in self.reporters:
            r(event)

    def close(self) -> None:
        for r in self.reporters:
            r.close()
