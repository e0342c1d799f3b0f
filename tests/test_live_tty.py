"""The terminal view under a real pseudo-terminal, and the [DONE] line's wall time.

A cached run of many steps emits an event per step; the live view must draw frames at
its fixed rate (``kata.report.live.FPS``), never one per event. Frames are counted by
the sequence each one starts with (``FRAME_MARK``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from kata.compile import compile_pipeline
from kata.loader import load_pipeline
from kata.report.live import FPS, FRAME_MARK
from store import Realisation, Store
from support.cli import ROOT, run_on_pty
from support.images import BUSYBOX_REF

pytestmark = pytest.mark.integration

STEPS = 1000


def cached_repo(tmp_path: Path, digest: str, steps: int) -> tuple[Path, Path]:
    """A pipeline of ``steps`` independent steps, every one already realised in the store
    (recorded as the realiser would; running them is not what is tested)."""
    repo, store_dir = tmp_path / "repo", tmp_path / "store"
    repo.mkdir()
    doc = {"pipeline": "tty", "steps": [{"name": f"s{i}", "image": BUSYBOX_REF,
                                         "commands": [f"echo {i}"]} for i in range(steps)]}
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with Store.open(store_dir) as store:
        graph = compile_pipeline(load_pipeline(repo / ".kata-ci.yaml"),
                                 resolver=lambda ref: digest, repo_root=repo,
                                 stat_cache=store.stat_cache)
        empty = Path(tempfile.mkdtemp())
        tree, log = store.put_tree(empty), store.put_blob(b"")
        empty.rmdir()
        for name in graph.order:
            store.put_realisation(graph.nodes[name].drv_hash,
                                  Realisation(outputs=tree, log=log, step=name))
    return repo, store_dir


def env_for(store_dir: Path) -> dict[str, str]:
    return {**os.environ, "KATA_STORE": str(store_dir), "PYTHONPATH": str(ROOT),
            "TERM": "xterm-256color"}


def done_wall(text: str) -> float:
    found = re.findall(r"— (\d+\.\d)s wall time", text)
    assert found, text[-500:]
    return float(found[-1])


def test_a_cached_run_on_a_terminal_draws_frames_at_a_fixed_rate(tmp_path, containerd_daemon,
                                                                 busybox_digest):
    repo, store_dir = cached_repo(tmp_path, busybox_digest, STEPS)
    argv = [sys.executable, "-m", "kata", "--containerd", containerd_daemon.address, "run"]
    status, text = run_on_pty(argv, repo, env_for(store_dir))
    assert status == 0, text[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    lines = plain.replace("\r", "").splitlines()
    hits = [x for x in lines if re.fullmatch(r"\[CACHE\] s\d+: HIT \(key: [0-9a-f]{7}\.\.\.\)", x)]
    assert len(hits) == STEPS and len(set(hits)) == STEPS  # every line once, none lost
    assert f"[DONE] {STEPS} steps ({STEPS} cached, 0 ran) — " in plain
    frames = text.count(FRAME_MARK)
    events = STEPS + 2 * STEPS + 2  # parse, a cache event and a pass event per step, done
    wall = done_wall(plain)
    # one frame per 1/FPS second of the run (plus the first and the last), never per event
    assert 1 <= frames <= FPS * (wall + 0.1) + 2, (frames, wall)
    assert frames * 20 < events, frames
    # no status block is left at the end (the cursor is shown again); whether one was on
    # screen meanwhile depends on the run outlasting a frame (the unit tests draw one)
    assert text.rstrip().endswith("\x1b[?25h") and "elapsed" not in lines[-1]


def test_done_wall_time_is_the_process_wall_time(tmp_path, containerd_daemon, busybox_digest):
    """A 0.4 s run printed "0.0s wall time": loading, compiling and hashing were not
    counted. The process sleeps 0.6 s before kata starts: the line must include it."""
    repo, store_dir = cached_repo(tmp_path, busybox_digest, 3)
    code = ("import time, runpy, sys; time.sleep(0.6); "
            "sys.argv = ['kata', '--containerd', sys.argv[1], 'run']; "
            "runpy.run_module('kata', run_name='__main__')")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, containerd_daemon.address], cwd=repo,
                          env=env_for(store_dir), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wall = done_wall(proc.stdout)
    assert 0.6 <= wall <= elapsed + 0.05, (wall, elapsed)  # rounding to 0.1 s: both bounds hold
