"""A remote that *hangs* mid-run (BuildGrid SIGSTOPped: the kernel still accepts
connections and takes bytes, nothing answers) or stalls mid-stream, for the remote cache
and for the remote executor: the run ends in bounded time, with one warning line for the
cache, and leaves nothing half-written in the store (docs/remote.md "When the remote
fails")."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.buildgrid import buildgrid
from support.cli import KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def _repo(root: Path, steps: list[dict]) -> Path:
    root.mkdir(parents=True)
    (root / "x").write_text("x\n")
    (root / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "hung", "steps": steps},
                                                       sort_keys=False))
    return root


def _run_until(kata: KataProcess, args: list[str], marker: str, action, *, env=None,
               limit: float = 120) -> tuple[subprocess.Popen, list[str], str, float]:
    """Start ``kata run ARGS``, call ``action()`` at the first stdout line starting with
    ``marker``, then wait for the end: (process, stdout lines, stderr, seconds after the
    action)."""
    proc = subprocess.Popen([*kata.base, "run", *args], cwd=kata.repo,
                            env={**kata.env, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    assert proc.stdout is not None
    acted = None
    for line in proc.stdout:
        out.append(line.rstrip("\n"))
        if line.startswith(marker):
            action()
            acted = time.monotonic()
            break
    assert acted is not None, out
    try:
        rest, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, err = proc.communicate()
        raise AssertionError(f"no end {limit}s after the remote hung:\n" + "\n".join(out)
                             + rest + err) from None
    return proc, out + rest.splitlines(), err, time.monotonic() - acted


def test_a_cache_that_hangs_mid_run_costs_one_timeout_and_one_warning(tmp_path,
                                                                       containerd_daemon,
                                                                       runtime):
    """BuildGrid SIGSTOPped while a step runs, with a 4 MiB artifact on its way up: the
    run passes locally, says so once, and ends within a few ``remote.timeout``s, not one
    per call; the store verifies."""
    steps = [
        {"name": "one", "image": IMAGE, "inputs": ["x"], "artifacts": ["o"],
         "commands": ["head -c 4194304 /dev/urandom > o"]},
        {"name": "two", "image": IMAGE, "depends_on": ["one"], "inputs": ["x"],
         "artifacts": ["t"], "commands": ["echo started", "sleep 2", "cat o > t"]},
        {"name": "three", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "artifacts": ["h"], "commands": ["head -c 4194304 /dev/urandom > h"]},
        {"name": "four", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "commands": ["test -s t"]},
    ]
    repo = _repo(tmp_path / "repo", steps)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    with buildgrid(tmp_path / "bgd") as server:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"remote:\n  cache: {server.url}\n  timeout: 3s\n  backoff: 0s\n")
        try:
            proc, out, err, took = _run_until(kata, [], "two | started", server.pause,
                                              env={"KATA_CONFIG": str(cfg)})
        finally:
            server.resume()
    print(f"took {took:.1f}s after the pause\n" + "\n".join(out) + err)
    assert proc.returncode == 0, "\n".join(out) + err
    assert "Traceback" not in err
    warnings = [x for x in err.splitlines() if "remote cache" in x]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"kata: warning: remote cache {server.url} unavailable (")
    assert took < 40, took  # a few 3 s timeouts, not one per call
    verify = kata("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
