"""What a step's workspace costs around the mount (issue 11): one closer thread for a
run's steps (not one per step), the removal of a closed workspace that never follows a
link, and each layer's real path as os.path.realpath gives it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from kata.realise import workspace as ws_mod
from kata.realise.workspace import BackgroundCloser


class _Slow:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name, self.path = log, name, Path("/nonexistent")

    def close(self) -> None:
        time.sleep(0.01)
        self.log.append(self.name)


def test_one_thread_closes_the_steps_that_end_close_together(monkeypatch) -> None:
    monkeypatch.setattr(BackgroundCloser, "_LINGER", 0.3)
    started = []
    real_start = threading.Thread.start

    def counting_start(self):  # noqa: ANN001
        if self.name == "kata-ws-close":
            started.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    closer, log = BackgroundCloser(), []
    for i in range(5):
        closer.close(_Slow(log, f"a{i}"))
        time.sleep(0.02)  # each step ends after the previous workspace was closed
    closer.drain()
    assert log == [f"a{i}" for i in range(5)] and len(started) == 1
    # idle longer than it lingers: the thread ends; the next close starts another
    time.sleep(0.6)
    assert not started[0].is_alive()
    closer.close(_Slow(log, "b"))
    closer.drain()
    assert log[-1] == "b" and len(started) == 2


def test_a_failing_close_is_logged_and_the_rest_go_on(caplog) -> None:
    class Bad:
        path = Path("/x")

        def close(self) -> None:
            raise OSError("busy")

    closer, log = BackgroundCloser(), []
    closer.close(Bad())
    closer.close(_Slow(log, "after"))
    closer.drain()
    assert log == ["after"] and "not closed" in caplog.text


def test_removing_a_workspace_never_follows_a_link(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    ws = tmp_path / "ws"
    (ws / "u" / "out" / "deep").mkdir(parents=True)
    (ws / "u" / "out" / "deep" / "f").write_text("x")
    (ws / "u" / "link-dir").symlink_to(outside)
    (ws / "u" / "link-file").symlink_to(outside / "keep")
    (ws / "w" / "work").mkdir(parents=True)
    (ws / "m").mkdir()
    os.mkfifo(ws / "u" / "fifo")
    ws_mod._remove_tree(str(ws))
    assert not ws.exists()
    assert (outside / "keep").read_text() == "keep"
    ws_mod._remove_tree(str(ws))  # gone already: nothing to do, no error


def test_removal_falls_back_for_what_a_walk_cannot_remove(tmp_path, monkeypatch) -> None:
    ws = tmp_path / "ws"
    (ws / "u").mkdir(parents=True)
    forced = []
    monkeypatch.setattr(os, "rmdir", lambda *a, **k: (_ for _ in ()).throw(OSError(16, "busy")))
    monkeypatch.setattr(ws_mod, "force_rmtree", forced.append)
    ws_mod._remove_tree(str(ws))
    assert forced == [str(ws)]


def test_a_layers_real_path_is_what_realpath_says(tmp_path) -> None:
    real_parent = tmp_path / "state" / "unpacked"
    (real_parent / "abc").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "state")
    (real_parent / "linked").symlink_to(real_parent / "abc")
    for layer in (real_parent / "abc", tmp_path / "alias" / "unpacked" / "abc",
                  real_parent / "linked", tmp_path / "alias" / "unpacked" / "linked",
                  str(real_parent / "abc") + "/"):
        assert ws_mod._realpath(layer) == os.path.realpath(layer), layer
