"""Owner markers (kata.runtimes.sweepmarks) without containerd: which markers count as a
dead kata's, and that one naming a containerd that does not answer is kept. The sweep
itself, on a real containerd, is in tests/test_kill_points.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from procs import BOOT_ID, owner_id

from kata.runtimes.sweepmarks import dead_markers, gone, marker_dir, sweep_dead, write_marker


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
