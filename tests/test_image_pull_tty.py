"""Image pulls outside a run's steps show the live view's progress bar on a terminal
(issue 11, item 4), at its fixed frame rate, and stay plain when piped.

A real docker-registry started here serves an image with a 48 MiB layer (long enough to
be drawn); ``kata image pull`` and ``kata run --pull`` (which pulls while resolving, before
its steps start) run under a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time

import pytest

from kata.report.live import FPS, FRAME_MARK
from support.cli import ROOT, KataProcess, run_on_pty
from support.images import busybox_layer, files_layer, make_image
from support.registry import docker_registry, push_image

pytestmark = pytest.mark.integration

# the bar row: "↓ <20 cells> <done>/<total> layers <bytes>/<bytes> <image>"
BAR = re.compile(r"↓ [█░]{20} [0-2]/[12] layers [\d.]+ ?[kKMG]?i?B/[\d.]+ ?[MG]i?B ")


def big_image(ref: str):
    return make_image([busybox_layer(), files_layer({"/big": os.urandom(48 << 20)})], ref)


def frames_with_bar(text: str) -> list[str]:
    return [f for f in text.split(FRAME_MARK) if BAR.search(re.sub(r"\x1b\[[0-9;]*m", "", f))]


def test_image_pulls_draw_a_progress_bar_on_a_terminal_and_stay_plain_when_piped(
        tmp_path, containerd_daemon):
    store = tmp_path / "store"
    env = {**os.environ, "KATA_STORE": str(store), "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    kata = [sys.executable, "-m", "kata", "--containerd", containerd_daemon.address]
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        refs = {}
        for use in ("pull", "piped", "run"):
            path = f"kata/{use}{secrets.token_hex(3)}"
            refs[use] = f"{host}/{path}:1"
            push_image(url, path, "1", big_image(refs[use]))

        # kata image pull on a terminal: the bar, drawn per frame, then erased
        started = time.monotonic()
        status, text = run_on_pty([*kata, "image", "pull", refs["pull"]], tmp_path, env)
        elapsed = time.monotonic() - started
        assert status == 0, text[-2000:]
        assert frames_with_bar(text), text[-2000:]
        frames = text.count(FRAME_MARK)
        assert frames <= FPS * elapsed + 2, (frames, elapsed)  # a fixed rate, not per chunk
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
        lines = plain.splitlines()
        assert lines[-1].startswith(f"pulled {refs['pull']} sha256:"), lines[-3:]
        assert lines[-2].startswith(f"[PULL] {refs['pull']}: "), lines[-3:]
        last = text.rsplit(FRAME_MARK, 1)[1]
        assert "↓" not in last and "\x1b[?25h" in last  # the bar erased, the cursor back

        # piped: the one plain line
        piped = KataProcess(tmp_path, store=store, address=containerd_daemon.address)(
            "image", "pull", refs["piped"])
        assert piped.returncode == 0, piped.stderr
        assert re.fullmatch(rf"pulled {re.escape(refs['piped'])} sha256:[0-9a-f]{{64}}\n",
                            piped.stdout), piped.stdout
        assert "\x1b" not in piped.stdout + piped.stderr

        # kata run --pull pulls while resolving its images, before its steps start
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / ".kata-ci.yaml").write_text(json.dumps(
            {"pipeline": "pull", "steps": [{"name": "a", "image": refs["run"],
                                            "commands": ["test -s /big"]}]}))
        status, text = run_on_pty([*kata, "run", "--pull"], repo, env)
        assert status == 0, text[-2000:]
        assert frames_with_bar(text), text[-2000:]
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
        assert f"[PULL] {refs['run']}: " in plain, plain[-2000:]
        assert "[DONE] All 1 step passed" in plain, plain[-2000:]
