"""Ctrl-C while a step's image is being pulled: the step must not start once the pull ends.

Found on a new host running a real project (markupsafe, a 175 MB image): Ctrl-C during the
pull printed the other steps as interrupted, then the pull finished, and the steps that had
waited on it *ran their commands* (pip building a wheel) before being cancelled. A registry
here holds the layer's answer until the test has sent SIGINT; the step's first command
prints a line that must never appear. Real containerd, the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from support.cli import ROOT
from support.images import MT_MANIFEST, busybox_layer, files_layer, make_image
from support.registry import FakeRegistry

pytestmark = pytest.mark.integration


class _HeldBlobs(dict):
    """Blobs whose ``held`` one is answered only once ``release`` is set (``asked`` is set
    when the pull asks for it)."""

    def __init__(self, blobs: dict[str, bytes], held: str) -> None:
        super().__init__(blobs)
        self.held, self.asked, self.release = held, threading.Event(), threading.Event()

    def __getitem__(self, digest: str) -> bytes:
        if digest == self.held:
            self.asked.set()
            self.release.wait(60)
        return super().__getitem__(digest)


def test_ctrl_c_during_a_pull_starts_no_step_after_it(tmp_path, containerd_daemon, runtime):
    # a layer of its own: no earlier test has it in containerd already
    img = make_image([busybox_layer(), files_layer({"/held": os.urandom(16)})],
                     "kata.local/held:1")
    layer = img.layer_digests[-1]
    blobs = _HeldBlobs({d: b for d, b in img.blobs.items() if d != img.digest}, held=layer)
    with FakeRegistry(blobs=blobs, manifests={img.digest: (MT_MANIFEST, img.manifest)}) as reg:
        ref = f"127.0.0.1:{reg.port}/kata/held@{img.digest}"
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / ".kata-ci.yaml").write_text(json.dumps({"pipeline": "held", "steps": [
            {"name": "a", "image": ref, "inputs": [], "commands": ["echo STARTED-a"]},
            {"name": "b", "image": ref, "inputs": [], "commands": ["echo STARTED-b"]}]}))
        env = {**os.environ, "KATA_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "kata", "--containerd",
                                 containerd_daemon.address, "run"], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert blobs.asked.wait(60), "the pull never asked for the layer"
            proc.send_signal(signal.SIGINT)
            threading.Timer(1.0, blobs.release.set).start()  # the pull then completes
            out, err = proc.communicate(timeout=120)
        finally:
            blobs.release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, out + err
    assert "STARTED" not in out, out
    assert "[CANCEL] a (interrupted, " in out and "Traceback" not in err, out + err
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left
