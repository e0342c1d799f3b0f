"""Channels by which an untrusted run could hand a trusted reader what it made, beyond the
realisations and cache directories test_trust_e2e.py covers: each is closed here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from store import Store
from store.runs import Run, StepRecord

ROOT = Path(__file__).resolve().parent.parent


def kata(*args: str, store: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(store)}
    proc = subprocess.run([sys.executable, "-m", "kata", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _run(s: Store, tmp: Path, run_id: str, scope: str, started: float, text: str) -> None:
    src = tmp / f"src-{run_id}"
    (src / "dist").mkdir(parents=True)
    (src / "dist" / "app").write_text(text)
    tree = s.put_tree(src, paths=("dist",))
    s.put_run(Run(id=run_id, pipeline="p", scope=scope, started=started, wall=1.0,
                  status="passed", steps=(StepRecord(name="build", status="passed",
                                                     cache="MISS", outputs=tree),)))


def test_export_without_run_never_takes_an_untrusted_runs_artifacts(tmp_path) -> None:
    """`kata export --out DIR` (a deploy script after main's push) takes "the last run":
    a branch pushed just after main made that its own run, so the script shipped the
    branch's artifacts. Without --run only a trusted run is taken; an untrusted one
    only when named (--run ID)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text("pipeline: p\nsteps:\n  - {name: build, image: x}\n")
    store = tmp_path / "store"
    now = time.time()
    with Store.open(store) as s:
        _run(s, tmp_path, "20261130-000001-aaaaaa", "ref:refs/heads/main", now - 10, "main's")
        _run(s, tmp_path, "20261130-000002-bbbbbb", "quarantine:refs/heads/evil", now, "evil")
    out = tmp_path / "out"
    proc = kata("export", "--out", str(out), store=store, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert (out / "build" / "dist" / "app").read_text() == "main's"
    assert "20261130-000001-aaaaaa" in proc.stderr + proc.stdout  # says which run it took
    named = tmp_path / "named"
    proc = kata("export", "--run", "20261130-000002-bbbbbb", "--out", str(named),
                store=store, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert (named / "build" / "dist" / "app").read_text() == "evil"
