"""A hostile step's output: many short lines. kata, which no step's memory limit
covers, must hold a bounded part of it whatever the step prints."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def test_a_step_printing_millions_of_short_lines_costs_kata_a_bounded_memory(
        tmp_path, containerd_daemon, runtime):
    """64 MiB in 32-byte lines (2M lines). kata kept every event of the run for its
    no-op record, each output line with its text: 300 MB of such output cost 780 MB, so
    a pushed step printing a few GiB would take the server's memory."""
    size = 64 << 20
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    line = "y" * 31
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "loud", "steps": [
        {"name": "loud", "image": IMAGE, "inputs": ["x"],
         "commands": [f"yes {line} | head -c {size}", "echo end"]}]}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "loud")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=600)
    run = subprocess.Popen([*kata.base, "run"], cwd=repo, env=kata.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # VmHWM of kata's own address space, read while it runs (ru_maxrss would count the
    # pytest worker's RSS the child had before exec)
    peak = 0
    while run.poll() is None:
        try:
            status = Path(f"/proc/{run.pid}/status").read_text()
        except OSError:
            break
        for field in status.splitlines():
            if field.startswith("VmHWM:"):
                peak = max(peak, int(field.split()[1]) * 1024)
        time.sleep(0.1)
    assert run.wait() == 0, run.stderr.read()
    # with the fix ~100 MiB, what kata costs anyway; before it ~500 MiB
    assert peak < 200 << 20, f"kata peaked at {peak >> 20} MiB for {size >> 20} MiB of output"
