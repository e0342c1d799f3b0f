"""The step cgroups of one containerd's containers, for tests that kill kata, its
containerd or a worker and then check that no cgroup of theirs outlived the runs.

Step cgroups (``/sys/fs/cgroup/<hierarchy>/kata/<id>``, spec.cgroup_path) are host-wide:
other test sessions on the host have live ones under the same parent, and an empty one
carries no owner. So a test counts only the ids it saw as its own containerd's: task
bundles under its state dir (they exist from Tasks.Create, before the OCI runtime makes
the cgroup, until the task is deleted) and direct steps under its steps root, polled
every 20 ms while the test runs. An id seen nowhere is never blamed on the test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from kata.runtimes.containerd.daemon import DaemonPaths

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_dirs(cid: str) -> list[Path]:
    """Where the cgroup ``/kata/<cid>`` exists: any v1 hierarchy, or the v2 root."""
    return [h / "kata" / cid for h in (CGROUP_ROOT, *CGROUP_ROOT.iterdir())
            if (h / "kata" / cid).is_dir()]


class OwnCgroups:
    """Watch ``paths``' containerd (its task bundles and direct steps) for container ids;
    ``left()`` lists the cgroups of those ids that still exist. A context manager."""

    def __init__(self, paths: DaemonPaths, period: float = 0.02) -> None:
        self.sources = (paths.state / "io.containerd.runtime.v2.task" / "kata",
                        paths.root.parent / "steps")
        self.period = period
        self.ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> OwnCgroups:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._look()
            self._stop.wait(self.period)

    def _look(self) -> None:
        bundles, steps = self.sources
        found = set()
        try:
            found |= {p.name for p in bundles.iterdir()}
        except OSError:
            pass
        try:  # <steps root>/<owner>/<id> and crun's state <steps root>/crun/<id>
            for owner in steps.iterdir():
                try:
                    found |= {p.name for p in owner.iterdir() if p.is_dir()}
                except OSError:
                    pass
        except OSError:
            pass
        self.ids |= {i for i in found if i.startswith("kata-")}

    def left(self, wait: float = 5.0) -> dict[str, list[str]]:
        """The cgroups of the ids seen that still exist after up to ``wait`` seconds:
        id -> the pids in it (empty: a leaked cgroup, nothing left to end it)."""
        self._look()
        deadline = time.monotonic() + wait
        while True:
            left = {i: _procs(d) for i in sorted(self.ids) for d in cgroup_dirs(i)[:1]}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)


def _procs(d: Path) -> list[str]:
    try:
        return (d / "cgroup.procs").read_text().split()
    except OSError:
        return []
