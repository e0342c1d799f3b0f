"""Owner markers (kata.runtimes.sweepmarks) without containerd: which markers count as a
dead kata's, and that one naming a containerd that does not answer is kept. The sweep
itself, on a real containerd, is in tests/test_kill_points.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from procs import BOOT_ID, owner_id

from kata.runtimes.sweepmarks import (
    MARKER_EXPIRY, dead_markers, gone, marker_dir, sweep_dead, write_marker,
)

ROOT = Path(__file__).resolve().parent.parent


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = owner_id(proc.pid)
    proc.wait()
    return owner


def test_gone_owners_are_dead_ones_of_any_boot_and_never_a_live_one():
    assert not gone(owner_id())
    assert gone(_dead_owner())
    assert gone(f"1.1@{'0' * 8}-not-{BOOT_ID}")  # an earlier boot's: this host's state
    assert not gone("not-an-owner")


def test_a_marker_of_a_containerd_that_does_not_answer_is_kept(tmp_path):
    state = str(tmp_path)
    mine = write_marker(state, owner_id(), str(tmp_path / "live.sock"), None)
    dead = _dead_owner()
    write_marker(state, dead, str(tmp_path / "gone.sock"), "unix:///nowhere")
    assert dead_markers(state) == [(dead, str(tmp_path / "gone.sock"), "unix:///nowhere")]
    # a socket file nobody listens on any more (its containerd stopped)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "gone.sock"))
    warned = []
    assert sweep_dead(state, warn=warned.append) == 0
    assert warned == []
    assert sorted(os.listdir(marker_dir(state))) == sorted([os.path.basename(mine), dead])


def test_no_marker_directory_is_nothing_to_do(tmp_path):
    assert sweep_dead(str(tmp_path)) == 0
    assert dead_markers(str(tmp_path)) == []


def test_a_silent_containerds_marker_expires_and_a_killed_writers_tmp_goes(tmp_path):
    """Last session's leftovers: a marker whose containerd never answers again stayed
    forever (one unix connect on every run after), and ``.<owner>.tmp`` stayed after its
    writer was killed between write and rename. A sweep removes a dead owner's marker of
    a silent containerd once older than MARKER_EXPIRY (any later connection there sweeps
    by labels anyway) and a dead owner's .tmp; a live owner's .tmp, a younger marker and
    one from the future (a clock set back) stay."""
    state = str(tmp_path)
    silent = str(tmp_path / "silent.sock")  # no socket there at all
    old, young, ahead = _dead_owner(), _dead_owner(), _dead_owner()
    for owner in (old, young, ahead):
        write_marker(state, owner, silent, None)
    now = time.time()
    for owner, when in ((old, now - MARKER_EXPIRY - 60), (young, now - 86400),
                        (ahead, now + 86400)):
        os.utime(os.path.join(marker_dir(state), owner), (when, when))
    torn, live_tmp = f".{_dead_owner()}.tmp", f".{owner_id()}.tmp"
    for name in (torn, live_tmp):
        with open(os.path.join(marker_dir(state), name), "w") as f:
            f.write(silent)
    assert sweep_dead(state) == 0
    assert sorted(os.listdir(marker_dir(state))) == sorted([young, ahead, live_tmp])


def test_kata_doctor_lists_the_markers_killed_kata_processes_left(tmp_path):
    """`kata doctor` said nothing of owner markers: a killed run's leftovers waited for
    the next run unseen. It lists dead owners' markers, by containerd and whether it
    answers, as a warning that says what clears them; a live owner's marker is no line."""
    store = tmp_path / "store"
    state = str(store / "local")
    os.makedirs(state)
    (store / "VERSION").write_text("kata-store/1\n")
    write_marker(state, owner_id(), str(tmp_path / "live.sock"), None)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(store)}
    env.pop("KATA_CONTAINERD_ADDRESS", None)

    def doctor() -> dict:
        r = subprocess.run([sys.executable, "-m", "kata", "doctor", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
        assert "Traceback" not in r.stderr, r.stderr
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    assert "owner-markers" not in doctor()
    for _ in range(2):
        write_marker(state, _dead_owner(), str(tmp_path / "gone.sock"), None)
    with open(os.path.join(marker_dir(state), f".{_dead_owner()}.tmp"), "w") as f:
        f.write("x")
    check = doctor()["owner-markers"]
    assert check["status"] == "warn", check
    assert check["detail"] == (f"3 owner markers of killed kata processes in {marker_dir(state)}: "
                               f"2 for containerd at {tmp_path / 'gone.sock'} (not answering); "
                               "1 half-written"), check
    assert check["fix"].startswith("the next kata run clears what they left")
