"""Group ``kata`` (issue 12, item 14): a non-root member runs pipelines through kata's
server (``kata daemon serve``, socket ``root:kata 0660``), as the docker group works; a
non-member is told why not and what to do; ``kata daemon status`` tells the truth as
either. Real processes as real users (``kata-tester`` in group kata, ``kata-outsider``
not: ``.ci/install`` makes them), real containerd. The client runs on the system's
python (root's own is under /root): handing a command over needs nothing but the standard
library; ``kata daemon status`` runs as the user with Debian's packages of kata's
dependencies (``.ci/install``)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support.git import git

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PYTHON = "/usr/bin/python3"  # any user may run it (root's own python is under /root)
MEMBER, OUTSIDER = "kata-tester", "kata-outsider"

CONFIG = """\
pipeline: grp
steps:
  - name: build
    image: kata.local/busybox:latest
    secrets: [DEPLOY_TOKEN]
    cache: true
    artifacts: [dist/]
    commands:
      - mkdir -p dist && cp src/a.txt dist/a.txt
      - cat dist/a.txt
      - echo "token $DEPLOY_TOKEN"
      - echo "uid $(id -u)"
  - name: slow
    image: kata.local/busybox:latest
    inputs: [none]
    commands: ["echo started", "sleep 60"]
"""


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.fail(f"user {name} is missing: run bash .ci/install (it creates the test users)")


@pytest.fixture
def arena(containerd_daemon, runtime):
    """A directory every user may enter, with a repository owned by the member, and a
    kata server on a socket inside it; stopped and removed afterwards."""
    try:
        kata_gid = grp.getgrnam("kata").gr_gid
    except KeyError:
        pytest.fail("group kata is missing: run bash .ci/install-kata (it creates it)")
    member = _user(MEMBER)
    _user(OUTSIDER)
    base = Path(tempfile.mkdtemp(prefix="kt-grp-", dir="/tmp"))
    server = None
    try:
        base.chmod(0o755)
        repo = base / "repo"
        (repo / "src").mkdir(parents=True)
        (repo / "src" / "a.txt").write_text("from the member's repository\n")
        (repo / ".kata-ci.yaml").write_text(CONFIG)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "grp")
        subprocess.run(["chown", "-R", f"{member.pw_uid}:{member.pw_gid}", str(repo)], check=True)
        sock = base / "run" / "kata.sock"
        server = subprocess.Popen([sys.executable, "-m", "kata", "daemon", "serve", "--socket",
                                   str(sock)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (sock.exists() and sock.with_suffix(".pid").exists()):
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "kata daemon serve did not start"
            time.sleep(0.05)
        yield {"base": base, "repo": repo, "sock": sock, "kata_gid": kata_gid,
               "address": containerd_daemon.address, "server": server}
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _as(arena: dict, name: str, *args: str, extra: dict[str, str] | None = None,
        popen: bool = False):
    user = pwd.getpwnam(name)
    groups = [g.gr_gid for g in grp.getgrall() if name in g.gr_mem]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(arena["base"]),
           "KATA_SERVER_SOCKET": str(arena["sock"]), "KATA_STORE": str(arena["base"] / "store"),
           **(extra or {})}
    argv = [CLIENT_PYTHON, "-m", "kata", "--containerd", arena["address"], *args]
    kw = dict(cwd=arena["repo"], env=env, user=user.pw_uid, group=user.pw_gid,
              extra_groups=groups)
    if popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kw)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_the_socket_is_root_kata_0660_and_its_files_deliberate(arena):
    st = os.stat(arena["sock"])
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, arena["kata_gid"], 0o660)
    pid = os.stat(arena["sock"].with_suffix(".pid"))
    assert (pid.st_uid, stat.S_IMODE(pid.st_mode)) == (0, 0o644)
    run_dir = os.stat(arena["sock"].parent)
    assert (run_dir.st_uid, stat.S_IMODE(run_dir.st_mode)) == (0, 0o755)


def test_a_member_runs_a_pipeline_through_the_server(arena):
    token = "group-s3cret-value"
    out = arena["base"] / "out"
    first = _as(arena, MEMBER, "run", "--step", "build", "--out", str(out),
                extra={"DEPLOY_TOKEN": token})
    assert first.returncode == 0, first.stdout + first.stderr
    member = _user(MEMBER)  # what --out wrote is the member's, not root's
    assert (out / "dist" / "a.txt").read_text() == "from the member's repository\n"
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in [out, *out.rglob("*")]} == {
        (member.pw_uid, member.pw_gid)}
    lines = first.stdout.splitlines()
    assert "build | from the member's repository" in lines  # git ran in the member's repo
    assert "build | token ***" in lines and token not in first.stdout + first.stderr
    assert "build | uid 0" in lines
    again = _as(arena, MEMBER, "run", "--step", "build", extra={"DEPLOY_TOKEN": token})
    assert again.returncode == 0 and "[CACHE] build: HIT" in again.stdout
    bad = _as(arena, MEMBER, "-f", "nope.yaml", "validate")  # exit status and stderr come back
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr
    status = _as(arena, MEMBER, "daemon", "status")
    assert status.returncode == 0, status.stderr
    out = status.stdout.splitlines()
    assert out[0] == f"kata server: running (pid {arena['server'].pid})"
    assert f"  socket: {arena['sock']} (root:kata 0660)" in out
    assert "  you: may use it (group kata): kata commands run there, as root" in out


def test_an_outsider_is_refused_with_the_fix_and_told_the_truth(arena):
    refused = _as(arena, OUTSIDER, "run")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: cannot use kata's server at {arena['sock']}: "
                                     "permission denied."), refused.stderr
    assert "group 'kata'" in refused.stderr and "root-equivalent" in refused.stderr
    status = _as(arena, OUTSIDER, "daemon", "status")
    assert status.returncode == 0, status.stderr
    out = status.stdout.splitlines()
    assert out[0] == f"kata server: running (pid {arena['server'].pid})"  # not "not running"
    assert "  you: may not use it: not in group kata (an administrator: usermod -aG kata " \
        "$USER; that group is root-equivalent)" in out
    serve = _as(arena, OUTSIDER, "daemon", "serve", "--socket", str(arena["base"] / "x.sock"))
    assert serve.returncode == 2 and "as root" in serve.stderr


def test_ctrl_c_of_the_member_stops_the_run_it_started(arena):
    proc = _as(arena, MEMBER, "run", "--step", "slow", popen=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.strip() == "slow | started":
                break
            assert time.monotonic() < deadline
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert time.monotonic() - started < 30  # not the step's 60 s


def test_what_goes_to_the_server_and_what_root_runs_with(tmp_path, monkeypatch):
    """Pure parts: which commands are handed over, the environment root's kata gets, and
    the repository git may trust (the requester's or root's, never a third user's)."""
    from kata.client import command_of
    from kata.server import _safe_directory, child_env

    assert command_of(["-f", "ci.yaml", "--store", "s", "run", "--step", "x"]) == "run"
    assert command_of(["--containerd", "/x.sock", "daemon", "status"]) == "daemon"
    assert command_of(["--help"]) is None and command_of([]) is None
    from kata.client import LOCAL
    assert {"daemon", "doctor", "hooks"} <= LOCAL and "run" not in LOCAL
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin")
    for name in [n for n in os.environ if n.startswith(("PYTHON", "LD_"))]:
        monkeypatch.delenv(name)
    env = child_env({"PATH": "/home/u/bin", "LD_PRELOAD": "/tmp/evil.so", "PYTHONPATH": "/x",
                     "DEPLOY_TOKEN": "t0ken", "KATA_SERVER_SOCKET": "/s", "HOME": "/home/u"})
    assert env == {"PATH": "/usr/sbin:/usr/bin", "DEPLOY_TOKEN": "t0ken", "HOME": "/home/u"}
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    member = _user(MEMBER)
    os.chown(repo, member.pw_uid, member.pw_gid)
    os.chown(repo / ".git", member.pw_uid, member.pw_gid)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"HOME": str(tmp_path / "nohome")}
    _safe_directory(str(repo / "sub"), member.pw_uid, env, scratch)
    assert (scratch / "gitconfig").read_text() == f"[safe]\n\tdirectory = {repo}\n"
    assert env["GIT_CONFIG_GLOBAL"] == str(scratch / "gitconfig")
    other = {"HOME": str(tmp_path / "nohome")}  # the outsider asks to run in it: not trusted
    _safe_directory(str(repo), _user(OUTSIDER).pw_uid, other, tmp_path)
    assert "GIT_CONFIG_GLOBAL" not in other


def test_kata_s_containerd_files_have_deliberate_owners_and_modes(containerd_daemon):
    """What ensure_daemon makes (the daemon module's OWNERSHIP note): only root talks to
    containerd (its socket root:root 0660: group kata goes through kata's server), every
    user may read the pid file through 0711 directories, the log is root's alone."""
    paths = containerd_daemon

    def owner_mode(p: Path) -> tuple[int, int, int]:
        st = os.stat(p)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode(paths.socket) == (0, 0, 0o660)
    assert owner_mode(paths.root)[0] == 0 and owner_mode(paths.root)[2] == 0o700
    for d in {paths.state, paths.pidfile.parent, paths.socket.parent}:
        assert owner_mode(d)[0] == 0 and owner_mode(d)[2] == 0o711, d
    assert owner_mode(paths.pidfile)[2] == 0o644 and owner_mode(paths.config)[2] == 0o644
    assert owner_mode(paths.log)[2] == 0o600
