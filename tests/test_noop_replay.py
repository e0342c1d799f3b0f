"""The cached path (issue 11 item 3, ``kata.realise.noop``): a fully cached ``kata run`` is
replayed from its no-op record before the command line is imported, says exactly what the
full path says, records the same run, and is refused (the full path runs) for every change
that could make a hit wrong.

Which path ran is read from ``-X importtime`` (``PYTHONPROFILEIMPORTTIME=1``): the full
path imports ``kata.cli``; the replay imports neither it nor click, YAML or gRPC.

A record is written only for observed files older than 2 s (git's racily-clean rule), so
each scenario waits that long once after preparing its files (``settle``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fakes import FakeStep, write_pipeline
from kata.realise.noop import DIR_NAME, simple_run
from support.cli import KataProcess

pytestmark = pytest.mark.integration

STEPS = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/*.txt > dist/a"), inputs=("src/**",),
             artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/a",), depends_on=("build",)),
    FakeStep("lint", commands=("test -s dist/a",), depends_on=("build",),
             matrix={"V": ["p", "q"]}),
]


def settle() -> None:
    time.sleep(2.1)  # kata.realise.noop.RACY_NS: files this old may be recorded


def imported(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


def replayed(proc: subprocess.CompletedProcess) -> bool:
    mods = imported(proc)
    assert mods, "run with PYTHONPROFILEIMPORTTIME=1"
    if "kata.cli" in mods:
        return False
    assert not {m for m in mods if m.split(".")[0] in ("click", "yaml", "grpc", "lark", "rich")}, mods
    return True


def run(kata: KataProcess, *args: str, **env: str) -> subprocess.CompletedProcess:
    proc = kata(*args, PYTHONPROFILEIMPORTTIME="1", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def records(store: Path) -> list[Path]:
    d = store / "local" / DIR_NAME
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture(scope="module")
def built(tmp_path_factory, containerd_daemon, runtime) -> Path:
    """A repository built once (real containerd): every step of STEPS realised."""
    base = tmp_path_factory.mktemp("noop-built")
    repo = base / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    write_pipeline(repo, STEPS, name="noop")
    first = KataProcess(repo, store=base / "store", address=containerd_daemon.address)("run")
    assert first.returncode == 0, first.stdout + first.stderr
    return base


@pytest.fixture
def kata(built, tmp_path, containerd_daemon) -> KataProcess:
    """A copy of the built repository and store, settled, with its no-op record written."""
    shutil.copytree(built / "repo", tmp_path / "repo", symlinks=True)
    shutil.copytree(built / "store", tmp_path / "store", symlinks=True)
    k = KataProcess(tmp_path / "repo", store=tmp_path / "store", address=containerd_daemon.address)
    for _ in range(2):  # twice: anything observed (a sys.path directory) may be touched
        settle()        # by a test running beside this one, and leave no record once
        full = run(k, "run")  # the copy's objects are verified again; the record is written
        assert not replayed(full)
        if records(tmp_path / "store"):
            return k
    raise AssertionError("a settled no-op leaves a record")


def _without_times(events: list[dict]) -> list[dict]:
    out = []
    for e in events:
        e = dict(e)
        e.pop("time")
        if e["event"] == "done":
            e.pop("wall"), e.pop("run_id")
        out.append(e)
    return out


def test_a_cached_run_is_replayed_and_says_what_the_full_path_says(kata, tmp_path):
    fast = run(kata, "run")
    assert replayed(fast)
    full = run(kata, "run", KATA_FAST_NOOP="0")
    assert not replayed(full)
    assert fast.stdout.splitlines()[:-1] == full.stdout.splitlines()[:-1]
    assert fast.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran) — ")
    assert "[CACHE] build: HIT (key: " in fast.stdout
    fast_json = run(kata, "run", "--json")
    assert replayed(fast_json)
    full_json = run(kata, "run", "--json", KATA_FAST_NOOP="0")
    assert _without_times([json.loads(x) for x in fast_json.stdout.splitlines()]) == \
        _without_times([json.loads(x) for x in full_json.stdout.splitlines()])
    # the replayed run is recorded as the full path records it (ids and times aside)
    fast_id = json.loads(fast_json.stdout.splitlines()[-1])["run_id"]
    full_id = json.loads(full_json.stdout.splitlines()[-1])["run_id"]
    listed = json.loads(kata("runs", "--json").stdout)["runs"]
    assert [r["id"] for r in listed[:2]] == [full_id, fast_id]
    assert {k: v for k, v in listed[1].items() if k not in ("id", "started", "duration")} == \
        {k: v for k, v in listed[0].items() if k not in ("id", "started", "duration")}
    from store import Store

    with Store.open(tmp_path / "store") as store:
        a, b = store.get_run(fast_id), store.get_run(full_id)
    assert [s.to_obj() | {"phases": None} for s in a.steps] == \
        [s.to_obj() | {"phases": None} for s in b.steps]
    assert (a.pipeline, a.commit, a.branch, a.scope, a.status, a.targets) == \
        (b.pipeline, b.commit, b.branch, b.scope, b.status, b.targets)
    assert a.steps[0].phases is not None
    # kata logs reads the replayed run like any other
    logs = kata("logs", "--step", "build")
    assert logs.returncode == 0 and "cached — output of run" in logs.stdout


def test_the_replay_needs_no_containerd(kata):
    dead = KataProcess(kata.repo, store=Path(kata.env["KATA_STORE"]),
                       address=str(kata.repo / "no-containerd.sock"))
    proc = run(dead, "run")
    assert replayed(proc)


def _edit_config(k: KataProcess) -> None:
    steps = [STEPS[0], FakeStep("test", commands=("grep -q hello dist/a", "true"),
                                depends_on=("build",)), STEPS[2]]
    write_pipeline(k.repo, steps, name="noop")


def _damage(k: KataProcess) -> None:
    from store import Store

    with Store.open(k.env["KATA_STORE"]) as store:
        run_record = store.list_runs(limit=1)[0]
        tree = run_record.step("build").outputs
        os.unlink(store.objects.path(tree))


CHANGES = {
    # name: (change, the full path's verdict on the run that follows)
    "config edited": (_edit_config, "[CACHE] test: MISS"),
    "input edited": (lambda k: (k.repo / "src/a.txt").write_text("hello again\n"),
                     "[CACHE] build: MISS"),
    "input added": (lambda k: (k.repo / "src/b.txt").write_text("new\n"), "[CACHE] build: MISS"),
    "input removed": (lambda k: (k.repo / "src/a.txt").unlink() or
                      (k.repo / "src/c.txt").write_text("hello\n"), "[CACHE] build: MISS"),
    "output damaged": (_damage, "[CACHE] build: MISS (cached output damaged, rebuilding)"),
    "kataignore added": (lambda k: (k.repo / ".kataignore").write_text("nothing-matches\n"),
                         "[CACHE] build: HIT"),
    "tag record rewritten": (lambda k: Path(k.env["KATA_STORE"], "local", "image-tags.json")
                             .write_bytes(Path(k.env["KATA_STORE"], "local", "image-tags.json")
                                          .read_bytes()), "[CACHE] build: HIT"),
    "realisation gone from the index": (
        lambda k: _drop_index_record(k), "[CACHE] build: HIT"),
    # the store's directory is what says its state is beside it (no statfs on replay)
    "store directory changed": (lambda k: os.chmod(k.env["KATA_STORE"], 0o755),
                                "[CACHE] build: HIT"),
    # an object's file at another stat signature: the full path re-hashes it (intact)
    "output touched": (lambda k: _touch_output(k), "[CACHE] build: HIT"),
    "record torn": (lambda k: _tear_record(k), "[CACHE] build: HIT"),
}


def _touch_output(k: KataProcess) -> None:
    from store import Store

    with Store.open(k.env["KATA_STORE"]) as store:
        tree = store.list_runs(limit=1)[0].step("build").outputs
        os.utime(store.objects.path(tree))


def _tear_record(k: KataProcess) -> None:
    (path,) = records(Path(k.env["KATA_STORE"]))
    path.write_bytes(path.read_bytes()[:1000])


def _drop_index_record(k: KataProcess) -> None:
    from store import Store

    with Store.open(k.env["KATA_STORE"]) as store:
        key = store.list_runs(limit=1)[0].step("build").key
        store.index.drop_realisations([key])  # the file stays: the full path re-reads it


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_change_falls_back_to_the_full_path(kata, change):
    edit, verdict = CHANGES[change]
    edit(kata)
    proc = run(kata, "run")
    assert not replayed(proc), change
    assert verdict in proc.stdout, proc.stdout


@pytest.mark.parametrize("args", [("run", "--no-cache"), ("run", "--step", "build"),
                                  ("run", "--dry-run"), ("build", "//..."),
                                  ("run", "--pull")])
def test_other_command_lines_take_the_full_path(kata, args):
    # (--pull fails here: the test image is local; it is still the full path that says so)
    assert not replayed(kata(*args, PYTHONPROFILEIMPORTTIME="1"))


def test_the_environment_and_host_config_are_part_of_the_record(kata, tmp_path):
    host = tmp_path / "host.yaml"
    host.write_text("{}\n")
    assert not replayed(run(kata, "run", KATA_CONFIG=str(host)))
    assert not replayed(run(kata, "run", GIT_DIR=str(tmp_path / "nowhere")))
    assert not replayed(run(kata, "run"))  # the record is the last environment's
    assert replayed(run(kata, "run"))


def test_a_git_head_moved_falls_back(built, tmp_path, containerd_daemon):
    repo = tmp_path / "repo"
    shutil.copytree(built / "repo", repo)
    shutil.copytree(built / "store", tmp_path / "store")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    k = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    settle()
    assert not replayed(run(k, "run"))
    assert replayed(run(k, "run")), "a settled git work tree is replayed"
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "two"], check=True)
    moved = run(k, "run")
    assert not replayed(moved)
    settle()
    run(k, "run")
    assert replayed(run(k, "run"))
    (repo / "untracked.txt").write_text("new\n")  # listed by git ls-files -o: an input
    assert not replayed(run(k, "run"))


@pytest.mark.parametrize("var", ["HOME", "XDG_CONFIG_HOME"])
def test_another_home_falls_back_since_git_reads_its_ignore_files_there(
        built, tmp_path, containerd_daemon, var):
    """git reads the user's global ignore file (``~/.config/git/ignore``, or under
    ``$XDG_CONFIG_HOME``) from the environment: another home can drop an untracked input,
    so it must not replay the record made under the first (it replayed a stale hit)."""
    repo = tmp_path / "repo"
    shutil.copytree(built / "repo", repo)
    shutil.copytree(built / "store", tmp_path / "store")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (repo / "src" / "b.txt").write_text("untracked input\n")
    other = tmp_path / "home2"
    ignore = other / (".config/git/ignore" if var == "HOME" else "git/ignore")
    ignore.parent.mkdir(parents=True)
    ignore.write_text("b.txt\n")
    k = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run(k, "run")  # builds with b.txt
    settle()
    run(k, "run")
    here = run(k, "run")
    assert replayed(here)
    moved = run(k, "run", **{var: str(other)})
    assert not replayed(moved)

    def build_line(proc: subprocess.CompletedProcess) -> str:
        return next(line for line in proc.stdout.splitlines() if "] build:" in line)
    assert build_line(moved) != build_line(here)  # another key: b.txt is ignored there


def test_a_fresh_edit_or_a_condition_leaves_no_record(built, tmp_path, containerd_daemon):
    repo = tmp_path / "repo"
    shutil.copytree(built / "repo", repo)
    shutil.copytree(built / "store", tmp_path / "store")
    k = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    run(k, "run")  # files copied just now: racily clean, no record
    assert records(tmp_path / "store") == []
    conditional = [*STEPS[:2], FakeStep("lint", commands=("true",), when='branch == "x"')]
    write_pipeline(repo, conditional, name="noop")
    settle()
    run(k, "run")
    run(k, "run")
    assert records(tmp_path / "store") == []


def test_simple_run_reads_only_plain_run_command_lines():
    assert simple_run(["run"]) == (None, None, False)
    assert simple_run(["-f", "x.yaml", "--store", "s", "--containerd", "a", "run", "--json"]) == \
        ("x.yaml", "s", True)
    for argv in (["build", "//..."], ["run", "--json", "--json"], ["run", "--step", "a"],
                 ["--file"], [], ["-v", "run"], ["run", "--no-cache"], ["validate"]):
        assert simple_run(argv) is None, argv


def test_on_a_terminal_the_replay_writes_the_live_view_lines(kata):
    import pty
    import re
    import sys

    master, slave = pty.openpty()
    env = {**kata.env, "TERM": "xterm", "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.Popen([*kata.base, "run"], cwd=kata.repo, env=env, stdin=slave,
                            stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read()
    assert proc.wait() == 0, err
    assert replayed(subprocess.CompletedProcess([], 0, "", err)), sys.executable
    text = b"".join(chunks).decode()
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n").splitlines()
    full = run(kata, "run", KATA_FAST_NOOP="0").stdout.splitlines()
    assert lines[:-1] == full[:-1]
    assert lines[-1].startswith("[DONE] 4 steps (4 cached, 0 ran) — ")
    assert "\x1b[34m[CACHE] build: HIT" in text  # styled as the live view styles it


def test_the_run_record_template_gives_the_encoders_bytes():
    """A replay writes the run record and its summary from a template cut at stand-ins; the
    bytes are ``Run.encode``'s and ``encode_summary``'s for the same values."""
    from store.runs import Phases, Run, StepRecord, encode_summary, summarise

    from kata.realise.noop import _fill, _template, _values

    steps = tuple(StepRecord(name=f"s{i}" + "x" * i, status="passed", cache="HIT", key="k" * 64,
                             drv_hash="d" * 64, log="sha256:" + "0" * 64, needs=("a",) * (i % 3),
                             produced_by="20261130-000000-abcdef", duration=1.5)
                  for i in range(40))
    record = Run(id="20261130-000000-abcdef", pipeline="p", commit="c" * 40, branch="main",
                 scope="ref:refs/heads/main", started=1.0, wall=2.0, status="passed",
                 steps=steps)
    template = _template(record)
    assert isinstance(template, dict), template
    now = 1796048885.8673124
    phases = Phases(ready=now, started=now, running=now, ended=now)
    replayed = Run(id="20261201-123456-0a1b2c", pipeline="p", commit="c" * 40, branch="main",
                   scope="ref:refs/heads/main", started=now - 0.25, wall=0.0625, status="passed",
                   steps=tuple(StepRecord(**{**{f: getattr(s, f) for f in s.__slots__},
                                             "phases": phases}) for s in steps))
    values = _values(replayed.id, replayed.started, replayed.wall, now)
    assert _fill(template["run"], values) == replayed.encode()
    assert _fill(template["summary"], values) == encode_summary(summarise(replayed))
    assert Run.decode(_fill(template["run"], values)) == replayed


def test_a_replay_warns_as_the_run_it_replays(tmp_path, containerd_daemon, runtime):
    """kata run warns of an inputs pattern that matches no file (a typo: scr/**) on every
    run; the no-op replay, which reads no config, repeats what the recorded run warned."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    write_pipeline(repo, [FakeStep("build", commands=("true",), inputs=("scr/**", "src/**"))],
                   name="noop")
    k = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    first = run(k, "run")
    warned = [x for x in first.stderr.splitlines() if x.startswith("warning:")]
    assert len(warned) == 1 and "'scr/**' matches no file" in warned[0], first.stderr
    for _ in range(3):
        settle()
        proc = run(k, "run")
        assert [x for x in proc.stderr.splitlines() if x.startswith("warning:")] == warned
        if replayed(proc):
            return
    raise AssertionError("no replay")
