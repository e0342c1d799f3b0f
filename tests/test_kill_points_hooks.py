"""A git server's post-receive `kata hooks run` killed while it checks out an untrusted push
(filter drivers off), and the next push healing: no checkout, no worktree entry in the
bare repository, no process, nothing in containerd left (issue 13's standard).

The kill lands at a fixed point, not after a random delay: the bare repository's own
`post-checkout` hook (which `git worktree add` runs once the files are out) says it is
there and waits; the test then signals the hook process, and lets git go on. Its
temporary directory is the test's own (TMPDIR), so another test's leftovers never count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.fixtures import assert_clean
from support.git import git, git_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kata.local/busybox:latest"
PIPELINE = {"pipeline": "server", "steps": [
    {"name": "build", "image": IMAGE, "commands": ["cat src/app.txt > out.txt"],
     "artifacts": ["out.txt"]}]}
WAIT = """#!/bin/sh
# the test's kill point: say the checkout is out, wait until told to go on (bounded)
touch "$KATA_TEST_MARK.at"
i=0
while [ ! -e "$KATA_TEST_MARK.go" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
"""


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(6000):  # a bound, not a timing assertion: 10 minutes under any load
        if path.exists() or proc.poll() is not None:
            return
        time.sleep(0.1)


def _own_processes(root: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root) in argv:
            found.append(f"{pid}: {argv.strip()} (cwd {cwd})")
    return found


def _settled(root: Path) -> list[str]:  # noqa: D401
    """The processes under ``root`` once those still ending (git finishing the checkout
    the killed hook started, its child `kata run` cleaning up) are gone."""
    for _ in range(1200):
        left = _own_processes(root)
        if not left:
            return []
        time.sleep(0.1)
    return left


class _Server:
    """A bare repository with kata's post-receive hook, an untrusted branch pushed to it
    (its hook ran once, unless ``ran=False``: installed after the push), and ``line``: what
    the hook reads for that push."""

    def __init__(self, tmp_path: Path, address: str, pipeline: dict, ran: bool = True) -> None:
        self.root = tmp_path
        self.remote, work, self.tmp = tmp_path / "remote.git", tmp_path / "work", tmp_path / "tmp"
        self.tmp.mkdir()
        config = tmp_path / "kata-config.yaml"
        config.write_text("protected:\n  branches: [main]\n")
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(self.remote))
        git(tmp_path, "clone", "-q", str(self.remote), str(work))
        git(work, "checkout", "-q", "-b", "main")
        self.env = {**{k: v for k, v in git_env().items() if not k.startswith("KATA_")},
                    "PYTHONPATH": str(ROOT), "KATA_CONFIG": str(config),
                    "TMPDIR": str(self.tmp), "KATA_TEST_MARK": str(tmp_path / "mark")}
        self.base = [sys.executable, "-m", "kata", "--store", str(tmp_path / "store"),
                     "--containerd", address]
        install = [*self.base, "hooks", "install"]
        if ran:
            subprocess.run(install, cwd=self.remote, env=self.env, check=True,
                           capture_output=True)
        (work / "src").mkdir()
        (work / "src" / "app.txt").write_text("v1\n")
        (work / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", "initial")
        git(work, "checkout", "-q", "-b", "feature/x")  # not protected: an untrusted run
        pushed = subprocess.run(["git", "push", "-q", "origin", "feature/x"], cwd=work,
                                env=self.env, capture_output=True, text=True, timeout=600)
        assert pushed.returncode == 0, pushed.stderr
        if not ran:
            subprocess.run(install, cwd=self.remote, env=self.env, check=True,
                           capture_output=True)
        self.line = f"{'0' * 40} {git(work, 'rev-parse', 'HEAD')} refs/heads/feature/x\n"
        (tmp_path / "refs").write_text(self.line)

    def start_hook(self) -> subprocess.Popen:
        with open(self.root / "refs") as refs:
            return subprocess.Popen([*self.base, "hooks", "run", "post-receive"],
                                    cwd=self.remote, env=self.env, stdin=refs,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)

    def heals(self, runtime) -> subprocess.CompletedProcess:  # noqa: ANN001
        """The next push's hook passes and leaves nothing, the killed one's leftovers
        included: no checkout, no worktree entry, no process, nothing in containerd."""
        again = subprocess.run([*self.base, "hooks", "run", "post-receive"], cwd=self.remote,
                               env=self.env, input=self.line, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert sorted(p.name for p in self.tmp.iterdir()) == []
        listed = git(self.remote, "worktree", "list", "--porcelain")
        assert [x for x in listed.splitlines() if x.startswith("worktree ")] == \
            [f"worktree {self.remote}"], listed
        entries = self.remote / "worktrees"
        assert not entries.exists() or list(entries.iterdir()) == []
        assert _settled(self.root) == []
        assert_clean(runtime)
        return again

    def runs(self) -> list:
        from store import Store

        with Store.open(self.root / "store") as s:
            return s.list_runs(limit=50)


def _killed(proc: subprocess.Popen, signo: int, go: Path | None = None) -> str:
    try:
        proc.send_signal(signo)
        if go is not None:
            go.touch()
        out = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in out, out
    if signo != signal.SIGKILL:
        assert proc.returncode == 130, out
    return out


SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]


@pytest.mark.parametrize("signo", SIGNALS)
def test_a_hook_killed_while_it_checks_out_an_untrusted_push_leaves_nothing(
        tmp_path, containerd_daemon, runtime, signo):
    """Killed with the checkout out (filter drivers off): SIGKILL left the checkout in the
    temp directory and its worktree entry in the bare repository for good."""
    server = _Server(tmp_path, containerd_daemon.address, PIPELINE)
    hook = server.remote / "hooks" / "post-checkout"
    hook.write_text(WAIT)
    hook.chmod(0o755)
    proc = server.start_hook()
    _wait_for(tmp_path / "mark.at", proc)
    assert (tmp_path / "mark.at").exists(), proc.communicate()[0]
    _killed(proc, signo, tmp_path / "mark.go")
    assert _settled(tmp_path) == []
    hook.unlink()
    server.heals(runtime)


@pytest.mark.parametrize("signo", SIGNALS)
def test_a_hook_killed_while_its_run_runs_a_step_stops_the_run_and_leaves_nothing(
        tmp_path, containerd_daemon, runtime, signo):
    """Killed while its `kata run` runs a step: SIGTERM/Ctrl-C SIGKILLed the run (Python's
    subprocess.run does on KeyboardInterrupt), which left its container to the next run;
    SIGKILL left the run going on alone, its step to its end, and the checkout behind.
    Now the run is stopped as Ctrl-C stops it: recorded interrupted, nothing left."""
    pipeline = {"pipeline": "server", "steps": [
        {"name": "wait", "image": IMAGE, "commands": ["echo started", "sleep 300"]}]}
    server = _Server(tmp_path, containerd_daemon.address, pipeline, ran=False)
    runs = len(server.runs())
    proc = server.start_hook()
    seen = []
    assert proc.stdout is not None
    for text in proc.stdout:  # the step's output, as the pusher sees it
        seen.append(text)
        if "wait | started" in text:
            break
    assert any("wait | started" in t for t in seen), "".join(seen)
    _killed(proc, signo)
    assert _settled(tmp_path) == []
    assert_clean(runtime)  # stopped by its own cleanup, not left to the next run's sweep
    newest = server.runs()
    assert len(newest) == runs + 1 and newest[0].status == "interrupted", newest[:2]
