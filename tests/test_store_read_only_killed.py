"""A process killed while it holds a read-only store open (`kata runs`, `kata logs` on a
store this user cannot write): the private index it rebuilt in the temp directory
(`Store.open(read_only=True)`, O(records) of it) was left there for good, one per kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from store.core import Store

ROOT = Path(__file__).resolve().parents[1]

HOLD = """\
import os, signal, sys
from store.core import Store
store = Store.open(sys.argv[1], read_only=True)
print(store.state_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_read_only_opens_private_index_goes_at_the_next_read_only_open(tmp_path):
    root = tmp_path / "store"
    with Store.open(root, tmp_path / "state") as store:
        store.put_blob(b"x")
    private = tmp_path / "tmp"
    private.mkdir()
    env = {**os.environ, "TMPDIR": str(private), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", HOLD, str(root)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = Path(proc.stdout.strip())
    assert left.parent == private and left.is_dir()  # what the kill left
    os.environ["TMPDIR"], saved = str(private), os.environ.get("TMPDIR")
    import tempfile
    tempfile.tempdir = None  # read $TMPDIR again
    try:
        with Store.open(root, read_only=True) as again:
            assert again.state_dir != str(left)
            assert not left.exists(), "a dead reader's private index was left"
    finally:
        if saved is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = saved
        tempfile.tempdir = None
    assert os.listdir(private) == []
