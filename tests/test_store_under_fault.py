"""A store whose filesystem goes away mid-run (sshfs losing its connection), and two
`kata run`s on one store at once (issue 13's standard: nothing half-written, nothing
leaked). Both hold today; these tests keep them so."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from support.cli import KataProcess
from support.fixtures import assert_clean
from support.sshfs import umount
from test_kill_points import PIPELINE, _check_outputs, _own_mounts

pytestmark = pytest.mark.integration


def _sshfs_pid(mountpoint: Path) -> int:
    """The sshfs process serving ``mountpoint`` (the test's own mount)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"sshfs") and os.fsencode(str(mountpoint)) in argv:
            return int(pid)
    raise AssertionError(f"no sshfs serves {mountpoint}")


def test_a_store_on_sshfs_losing_its_connection_mid_run(sshd, containerd_daemon, runtime,
                                                        tmp_path):
    """sshfs SIGKILLed while a step runs (the connection to the store's host lost): the
    steps that then write to the store fail naming the I/O error, the run ends with its
    [DONE] line and exit 1, no traceback, nothing left in containerd; mounted again, the
    next run passes with correct artifacts and the store verifies."""
    remote, mnt = tmp_path / "remote", tmp_path / "mnt"
    remote.mkdir()
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "seed.txt").write_text("one\n")
    pipeline = {**PIPELINE, "steps": [
        {**PIPELINE["steps"][0],
         "commands": ["echo started", "sleep 1", *PIPELINE["steps"][0]["commands"]]},
        *PIPELINE["steps"][1:]]}
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    kata = KataProcess(repo, store=mnt / "store", address=containerd_daemon.address)
    kata.env["XDG_STATE_HOME"] = str(tmp_path / "state")  # a network store's host-local state
    sshd.mount(remote, mnt)
    try:
        assert kata("run").returncode == 0
        (repo / "src" / "seed.txt").write_text("two\n")
        proc = subprocess.Popen([*kata.base, "run"], cwd=repo, env=kata.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line == "make | started\n":
                break
        os.kill(_sshfs_pid(mnt), signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
        out = "".join(seen) + out
        assert proc.returncode == 1, out + err
        assert "Traceback" not in err, err
        assert out.splitlines()[-1].startswith("[DONE] "), out
        fail = [line for line in out.splitlines() if line.startswith("[FAIL] make")]
        assert len(fail) == 1 and "Transport endpoint is not connected" in fail[0], out
        assert_clean(runtime)
    finally:
        umount(mnt)
    sshd.mount(remote, mnt)
    try:
        again = kata("run")
        assert again.returncode == 0, again.stdout + again.stderr
        _check_outputs(kata, tmp_path / "export", "two\n")
        verify = kata("store", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        umount(mnt)
    assert_clean(runtime)
    assert _own_mounts(tmp_path) == []


def test_two_runs_of_one_pipeline_and_one_of_another_on_one_store_at_once(
        tmp_path, containerd_daemon, runtime):
    """Three `kata run`s at once on one store (two of one pipeline, one of another that
    shares its steps' images): all pass, the artifacts check, the store verifies, the
    next run of each hits everything, nothing is left."""
    repos = []
    for name, seed in (("a", "shared\n"), ("b", "other\n")):
        repo = tmp_path / name
        (repo / "src").mkdir(parents=True)
        (repo / "src" / "seed.txt").write_text(seed)
        (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(
            {**PIPELINE, "pipeline": f"chaos-{name}"}, sort_keys=False))
        repos.append(KataProcess(repo, store=tmp_path / "store",
                                 address=containerd_daemon.address))
    results: dict[int, subprocess.CompletedProcess] = {}
    threads = [threading.Thread(target=lambda i=i, k=k: results.__setitem__(i, k("run")))
               for i, k in enumerate([repos[0], repos[0], repos[1]])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, res in results.items():
        assert res.returncode == 0, (i, res.stdout, res.stderr)
    for kata, seed in zip(repos, ("shared\n", "other\n")):
        again = kata("run")
        assert again.returncode == 0 and "0 ran" in again.stdout.splitlines()[-1], again.stdout
        _check_outputs(kata, kata.repo.parent / f"export-{kata.repo.name}", seed)
    verify = repos[0]("store", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert_clean(runtime)
    assert _own_mounts(tmp_path) == []
