"""One definition per concept: each concept's single home, table-tested over good and bad
inputs, and every former call site checked to accept and refuse exactly what the home does.

Durations (``kata.model.Duration``), image references (``kata.model.ImageRef``), the event
and pull-request action lists (``kata.conditions.EVENTS``/``PR_ACTIONS``), environment /
secret names (``kata.model.is_env_name``), running git (``kata.git``) and process
liveness (``procs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import click
import pytest

import procs

from kata.cli.run_cmds import run as run_command
from kata.cli.store_cmds import DurationType
from kata.conditions import EVENTS, PR_ACTIONS
from kata.errors import KataError
from kata.git import LOCAL_ENV_VARS, Git, repo_environ
from kata.gitctx import GitContext
from kata.loader import load_text
from kata.model import MAX_DURATION_MS, Duration, ImageRef, is_env_name
from kata.runtimes.containerd.config import load_runtime_config
from kata.runtimes.containerd.reference import parse_reference
from kata.secrets import SecretSource
from support.git import git

REPO = Path(__file__).resolve().parent.parent
D = "sha256:" + "a" * 64

# ---------------------------------------------------------------- durations

GOOD_DURATIONS = [
    ("0", 0), ("0s", 0), ("90", 90_000), ("90s", 90_000), ("15m", 900_000),
    ("1h30m", 5_400_000), ("2d", 172_800_000), ("1w", 604_800_000), ("250ms", 250),
    ("2m5s", 125_000), ("1d12h", 129_600_000), ("1w2d3h4m5s6ms", 788_645_006),
    (" 5m ", 300_000), ("3650d", MAX_DURATION_MS),
]
BAD_DURATIONS = ["", " ", "5x", "m", "1.5h", "h1", "30 m", "-5s", "-1", "1h30", "1H", "1m1h",
                 "1d1d", "5 s", "1e3", "3651d", "9" * 50, "1y", "+5s", "0x10", "١٢", "١٢s"]


@pytest.mark.parametrize("text,ms", GOOD_DURATIONS)
def test_duration_grammar_accepts(text: str, ms: int) -> None:
    d = Duration.parse(text)
    assert d.millis == ms and d.seconds == ms / 1000
    assert Duration.parse(str(d)) == d  # str() is in the grammar too


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_duration_grammar_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


@pytest.mark.parametrize("millis", [-1, MAX_DURATION_MS + 1, 1.5, True])
def test_duration_cannot_hold_a_bad_value(millis) -> None:
    with pytest.raises(ValueError):
        Duration(millis=millis)


def test_duration_str() -> None:
    assert [str(Duration(millis=m)) for m in (0, 250, 90_000, 5_400_000, 172_800_000, 694_800_000)] \
        == ["0s", "250ms", "1m30s", "1h30m", "2d", "1w1d1h"]


def _config_timeouts(value: str) -> list[int]:
    """The three config call sites: settings.timeout, a step's timeout, ready.timeout."""
    p = load_text(textwrap.dedent(f"""\
        settings: {{timeout: {value}}}
        steps:
          - name: a
            image: x
            timeout: {value}
            services: [{{name: db, image: y, ready: {{tcp: 1, timeout: {value}}}}}]
        """))
    return [p.settings.timeout.millis, p.steps[0].timeout.millis,
            p.steps[0].services[0].ready.timeout.millis]


def _cli(value: str) -> float:
    return DurationType().convert(value, None, None)


@pytest.mark.parametrize("text,ms", [(t, m) for t, m in GOOD_DURATIONS if m])
def test_every_duration_call_site_accepts_the_same(text: str, ms: int) -> None:
    assert _config_timeouts(f"'{text}'") == [ms] * 3
    assert _cli(text) == ms / 1000
    cfg_text = f"containerd: {{stop_grace: '{text}'}}\n"
    assert _host_config(cfg_text).stop_grace == ms / 1000


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_every_duration_call_site_refuses_the_same(text: str) -> None:
    with pytest.raises(KataError) as err:
        _config_timeouts(f"'{text}'")
    assert err.value.reason == "config.duration" and err.value.position.line == 1
    with pytest.raises(click.BadParameter):
        _cli(text)
    with pytest.raises(KataError) as err:
        _host_config(f"containerd: {{stop_grace: '{text}'}}\n")
    assert err.value.reason == "config.bad_value"


def test_zero_is_refused_for_timeouts_and_allowed_for_grace() -> None:
    for zero in ("0", "'0'", "0s"):
        with pytest.raises(KataError) as err:
            load_text(f"settings: {{timeout: {zero}}}\nsteps: [{{name: a, image: x}}]\n")
        assert err.value.reason == "config.value" and "must be > 0" in err.value.message
        with pytest.raises(KataError) as err:
            load_text(f"steps: [{{name: a, image: x, timeout: {zero}}}]\n")
        assert err.value.reason == "config.value"
    assert _cli("0") == 0.0 and _host_config("containerd: {stop_grace: 0}\n").stop_grace == 0.0


def test_yaml_integers_count_seconds_and_negative_is_refused() -> None:
    assert _config_timeouts("120") == [120_000] * 3
    with pytest.raises(KataError) as err:
        load_text("settings: {timeout: -5}\nsteps: [{name: a, image: x}]\n")
    assert err.value.reason == "config.duration"


def test_host_config_stop_grace_numbers(tmp_path: Path) -> None:
    assert _host_config("containerd: {stop_grace: 1.5}\n").stop_grace == 1.5
    for bad in ("-1", ".nan", "true", "[1]"):
        with pytest.raises(KataError) as err:
            _host_config(f"containerd: {{stop_grace: {bad}}}\n")
        assert err.value.reason == "config.bad_value"


def _host_config(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(text)
        return load_runtime_config(p)


def _kata(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KATA_STORE", None)
    return subprocess.run([sys.executable, "-m", "kata", "--store", str(store), *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=60)


def test_store_gc_takes_2d_and_grace_0(tmp_path: Path) -> None:
    from store import Realisation, Store

    root = tmp_path / "store"
    with Store.open(root) as s:
        for i in range(3):
            d = s.put_blob(os.urandom(100 * (i + 1)))
            s.put_realisation(f"{i}" * 64, Realisation(outputs=d, created=time.time()))
    # --grace 0: nothing is protected by age; --keep-runs 0: no run roots -> all 3 go
    res = _kata("store", "gc", "--dry-run", "--grace", "0", "--keep-runs", "0", store=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Would delete 3 realisations and 3 objects")
    # --older-than 2d: everything was used just now -> nothing goes
    res = _kata("store", "gc", "--dry-run", "--grace", "0", "--keep-runs", "0",
                "--older-than", "2d", store=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Would delete 0 realisations and 0 objects")
    res = _kata("store", "gc", "--older-than", "1.5h", store=root)
    assert res.returncode == 2 and "bad duration" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- image references

GOOD_REFS = [
    # text, registry, repository, tag, digest, name, stored_name
    ("busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("user/app:1.2", "docker.io", "user/app", "1.2", None,
     "docker.io/user/app", "docker.io/user/app:1.2"),
    ("index.docker.io/library/node:20", "docker.io", "library/node", "20", None,
     "docker.io/library/node", "docker.io/library/node:20"),
    ("kata.local/busybox:latest", "kata.local", "busybox", "latest", None,
     "kata.local/busybox", "kata.local/busybox:latest"),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None,
     "127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:t"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x", "localhost/x:latest"),
    (f"node@{D}", "docker.io", "library/node", None, D,
     "docker.io/library/node", f"docker.io/library/node@{D}"),
    (f"node:20@{D}", "docker.io", "library/node", "20", D,
     "docker.io/library/node", f"docker.io/library/node@{D}"),
    ("ghcr.io/o/r/x:1.0_rc-2", "ghcr.io", "o/r/x", "1.0_rc-2", None,
     "ghcr.io/o/r/x", "ghcr.io/o/r/x:1.0_rc-2"),
    ("a__b/c-d.e:X", "docker.io", "a__b/c-d.e", "X", None,
     "docker.io/a__b/c-d.e", "docker.io/a__b/c-d.e:X"),
]
BAD_REFS = ["", " busybox", "Upper/case", "Team/app:1", "a b", "x@sha256:short", "x:", "node:",
            "-x", "x:y:z", f"alpine@md5:{'a' * 32}", "a/-b", "a:" + "t" * 129, "a//b", "/a",
            f"x@{D.upper()}", "x:.tag", "x:é", "x:ab١", "é/x"]


@pytest.mark.parametrize("text,registry,repository,tag,digest,name,stored", GOOD_REFS)
def test_image_ref_grammar(text, registry, repository, tag, digest, name, stored) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.name == name and ref.stored_name == stored
    assert ImageRef.parse(str(ref)) == ref
    assert str(ref.pin(D)) == f"{name}@{D}" and ref.pin(D).stored_name == f"{name}@{D}"


@pytest.mark.parametrize("text", BAD_REFS)
def test_image_ref_grammar_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        ImageRef.parse(text)


def test_image_ref_cannot_hold_a_bad_digest() -> None:
    with pytest.raises(ValueError):
        ImageRef(registry="docker.io", repository="library/x", digest="sha256:abc")


@pytest.mark.parametrize("text", [g[0] for g in GOOD_REFS])
def test_every_image_ref_call_site_accepts_the_same(text: str) -> None:
    ref = ImageRef.parse(text)
    step = load_text(f"steps: [{{name: a, image: '{text}', services: [{{name: s, image: '{text}'}}]}}]")
    assert step.steps[0].image == ref and step.steps[0].services[0].image == ref
    assert parse_reference(text) == ref  # the containerd adapter: the same type, the same value


@pytest.mark.parametrize("text", BAD_REFS)
def test_every_image_ref_call_site_refuses_the_same(text: str) -> None:
    with pytest.raises(KataError) as err:
        load_text(f"steps: [{{name: a, image: '{text}'}}]")
    assert err.value.reason == "config.image_ref"
    with pytest.raises(KataError) as err:
        parse_reference(text)
    assert err.value.reason == "image.bad_reference"


# ---------------------------------------------------------------- events and PR actions

def _choices(name: str) -> tuple[str, ...]:
    (opt,) = [p for p in run_command.params if p.name == name]
    return tuple(opt.type.choices)


def test_cli_offers_exactly_the_event_and_action_lists() -> None:
    assert _choices("event") == EVENTS == ("push", "pull_request", "tag", "schedule")
    assert _choices("action") == PR_ACTIONS == ("opened", "synchronize", "closed")


def _config_events(ev: str) -> None:
    load_text(f"triggers: [{{event: {ev}}}]\nsteps: [{{name: a, image: x}}]\n")
    load_text(f"steps: [{{name: a, image: x, only: {{events: [{ev}]}}}}]\n")
    load_text(f"steps: [{{name: a, image: x, when: 'event == \"{ev}\"'}}]\n")
    load_text(f"steps: [{{name: a, image: x, when: 'event in [\"push\", \"{ev}\"]'}}]\n")


def _config_actions(action: str) -> None:
    load_text(f"triggers: [{{event: pull_request, actions: [{action}]}}]\n"
              "steps: [{name: a, image: x}]\n")
    load_text(f"steps: [{{name: a, image: x, when: 'action != \"{action}\"'}}]\n")


@pytest.mark.parametrize("ev", EVENTS)
def test_every_event_call_site_accepts_each_event(ev: str) -> None:
    _config_events(ev)
    assert GitContext(event=ev).event == ev


@pytest.mark.parametrize("bad", ["pr", "Push", "pull-request", "merge", ""])
def test_every_event_call_site_refuses_the_same(bad: str) -> None:
    for form in (f"triggers: [{{event: '{bad}'}}]\nsteps: [{{name: a, image: x}}]\n",
                 f"steps: [{{name: a, image: x, only: {{events: ['{bad}']}}}}]\n",
                 f"steps: [{{name: a, image: x, when: 'event == \"{bad}\"'}}]\n",
                 f"steps: [{{name: a, image: x, when: 'not event in [\"{bad}\"]'}}]\n"):
        with pytest.raises(KataError) as err:
            load_text(form)
        assert err.value.reason in ("config.value", "config.type"), form
        assert err.value.position is not None
    with pytest.raises(KataError) as err:
        GitContext(event=bad)
    assert err.value.reason == "git.bad_event"


@pytest.mark.parametrize("action", PR_ACTIONS)
def test_every_action_call_site_accepts_each_action(action: str) -> None:
    _config_actions(action)
    assert GitContext(event="pull_request", action=action).action == action


@pytest.mark.parametrize("bad", ["open", "synchronized", "merged", "Opened"])
def test_every_action_call_site_refuses_the_same(bad: str) -> None:
    with pytest.raises(KataError) as err:
        _config_actions(bad)
    assert err.value.reason == "config.value" and bad in err.value.message
    with pytest.raises(KataError) as err:
        load_text(f"steps: [{{name: a, image: x, when: 'action == \"{bad}\"'}}]\n")
    assert err.value.reason == "config.value"
    with pytest.raises(KataError) as err:
        GitContext(event="pull_request", action=bad)
    assert err.value.reason == "git.bad_action"


def test_globs_over_events_are_not_vocabulary_checked() -> None:
    # `=~` is a glob: `event =~ "p*"` is meaningful and stays allowed
    assert load_text("steps: [{name: a, image: x, when: 'event =~ \"p*\"'}]\n").steps[0].when


# ---------------------------------------------------------------- env / secret names

GOOD_NAMES = ["A", "_", "_x", "a1", "ABC_DEF", "TOKEN2", "lower_case"]
BAD_NAMES = ["", "1A", "A-B", "A B", "A.B", "é", "A=B", "A\n", "$A", "A\x00"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_env_name_rule_accepts(name: str) -> None:
    assert is_env_name(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_env_name_rule_refuses(name: str) -> None:
    assert not is_env_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_every_name_call_site_accepts_the_same(name: str) -> None:
    p = load_text(f"env: {{{name}: v}}\nsteps: [{{name: a, image: x, env: {{{name}: w}}, "
                  f"secrets: [{name}], services: [{{name: s, image: y, secrets: [{name}]}}]}}]\n")
    assert p.env == ((name, "v"),) and p.steps[0].secrets == (name,)
    src = SecretSource.from_args([f"{name}=value1"], [], environ={})
    assert src.resolve([name]) == {name: "value1"}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_name_call_site_refuses_the_same(name: str) -> None:
    q = repr(name).replace("'", '"')  # a YAML double-quoted scalar (escapes as Python's)
    for text in (f"env: {{{q}: v}}\nsteps: [{{name: a, image: x}}]\n",
                 f"steps: [{{name: a, image: x, secrets: [{q}]}}]\n",
                 f"steps: [{{name: a, image: x, services: [{{name: s, image: y, secrets: [{q}]}}]}}]\n"):
        with pytest.raises(KataError) as err:
            load_text(text)
        assert err.value.reason == "config.value", text
    if "=" not in name:  # NAME=VALUE: the name ends at the first '='
        with pytest.raises(KataError) as err:
            SecretSource.from_args([f"{name}=value1"], [], environ={})
        assert err.value.reason == "secret.bad_name"
    with pytest.raises(KataError) as err:
        SecretSource.from_args([], [], environ={}).resolve([name])
    assert err.value.reason == "secret.bad_name"


# ---------------------------------------------------------------- running git

def _repo(path: Path, files: dict[str, str]) -> str:
    git(path.parent, "init", "-q", "-b", "main", str(path))
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD")


def test_repo_environ_drops_what_points_at_another_repository() -> None:
    env = repo_environ({"GIT_DIR": "/x/.git", "GIT_WORK_TREE": "/x", "GIT_INDEX_FILE": "/x/i",
                        "GIT_COMMON_DIR": "/x", "GIT_OBJECT_DIRECTORY": "/x/o",
                        "GIT_QUARANTINE_PATH": "/x/q", "GIT_CONFIG_COUNT": "1",
                        "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "c",
                        "GIT_CONFIG_GLOBAL": "/home/u/.gitconfig", "GIT_SSH_COMMAND": "ssh -i k",
                        "PATH": "/usr/bin", "HOME": "/home/u"})
    assert env == {"GIT_CONFIG_GLOBAL": "/home/u/.gitconfig", "GIT_SSH_COMMAND": "ssh -i k",
                   "PATH": "/usr/bin", "HOME": "/home/u"}
    assert "GIT_DIR" in LOCAL_ENV_VARS


def test_git_runner_results_and_errors(tmp_path: Path) -> None:
    head = _repo(tmp_path / "r", {"a.txt": "a", "b c.txt": "b"})
    git = Git.at(tmp_path / "r")
    assert git.out("rev-parse", "HEAD") == head
    assert git.env["LC_ALL"] == "C" and git.env["GIT_TERMINAL_PROMPT"] == "0"
    assert git.paths("ls-files", "-z") == ["a.txt", "b c.txt"]
    assert git.maybe("rev-parse", "--verify", "--quiet", "nope^{commit}") is None
    with pytest.raises(KataError) as err:
        git.run("rev-parse", "--verify", "nope^{commit}")
    assert err.value.reason == "git.failed" and str(tmp_path / "r") in err.value.message
    nogit = Git.at(tmp_path / "r", base_env={"PATH": str(tmp_path / "empty")})
    for call in (nogit.run, nogit.out, nogit.maybe, nogit.paths):
        with pytest.raises(KataError) as err:
            call("status")
        assert err.value.reason == "git.not_installed"


def test_every_git_call_site_uses_the_repository_it_is_given(tmp_path: Path, monkeypatch) -> None:
    """A hook runs with GIT_DIR/GIT_WORK_TREE set for the repository receiving the push:
    the git context, the input listing and the hook helpers must each see the repository
    at the path they are given, not the one the environment points at."""
    from kata import gitctx, hooks
    from kata.inputs import Snapshot

    mine = _repo(tmp_path / "mine", {"mine.txt": "m", "ignored.log": "x", ".gitignore": "*.log\n"})
    _repo(tmp_path / "other", {"other.txt": "o"})
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "other" / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path / "other"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "other" / ".git" / "index"))
    ctx = gitctx.read_context(tmp_path / "mine", event="push")
    assert ctx.commit == mine and ctx.branch == "main"
    assert Snapshot(tmp_path / "mine").paths == (".gitignore", "mine.txt")  # git ls-files ran
    assert hooks._repo_paths(tmp_path / "mine") == (tmp_path / "mine" / ".git", False)
    assert gitctx.head(tmp_path / "mine") == (mine, "main")


# ---------------------------------------------------------------- process liveness

def _finished_child() -> tuple[int, str]:
    """(pid, owner label) of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "import procs; print(procs.owner_id())"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    owner = proc.communicate(timeout=60)[0].strip()
    return proc.pid, owner


@pytest.mark.parametrize("text,parsed", [
    ("12.345@b-o-o-t", (12, "345", "b-o-o-t")),
    ("1.0@x", (1, "0", "x")),
    ("", None), ("12@boot", None), ("12.345", None), ("x.1@b", None), (".1@b", None),
    ("12.@b", None), ("12.3@", None), ("-1.2@b", None), ("١.2@b", None),
])
def test_owner_labels_parse(text: str, parsed) -> None:
    assert procs.parse_owner(text) == parsed


def test_liveness_of_pids_and_owners() -> None:
    me = procs.owner_id()
    assert procs.parse_owner(me) == (os.getpid(), procs.start_ticks(os.getpid()), procs.BOOT_ID)
    assert procs.pid_alive(os.getpid()) and procs.owner_alive(me) and not procs.owner_dead(me)
    assert procs.pid_alive(1)  # another user's process (EPERM) or init: alive either way
    assert not procs.pid_alive(0) and not procs.pid_alive(-1)
    pid, owner = _finished_child()
    assert not procs.pid_alive(pid) or procs.start_ticks(pid) != procs.parse_owner(owner)[1]
    assert not procs.owner_alive(owner) and procs.owner_dead(owner)
    # the same pid with another start time: a reused pid is not the owner
    other_start = f"{os.getpid()}.1@{procs.BOOT_ID}"
    assert not procs.owner_alive(other_start) and procs.owner_dead(other_start)
    # another boot (or host): not alive here, but not known to be dead either
    elsewhere = me.replace(procs.BOOT_ID, "another-boot")
    assert not procs.owner_alive(elsewhere) and not procs.owner_dead(elsewhere)
    assert not procs.owner_alive("junk") and not procs.owner_dead("junk")


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while procs.pid_alive(proc.pid):  # exits, stays a zombie until waited for
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{proc.pid}")  # still in the process table
    proc.wait()


def test_every_liveness_call_site_agrees(tmp_path: Path) -> None:
    from kata.realise.workspace import sweep_dead_runs
    from store.objects import tmp_name, tmp_owner_dead

    dead_pid, dead_owner = _finished_child()
    # the store's ingest files
    mine = tmp_name("obj")
    assert mine.startswith("obj.") and mine.endswith("." + procs.owner_id())
    assert not tmp_owner_dead(mine)
    assert tmp_owner_dead(f"obj.{'0' * 32}.{dead_owner}")
    assert not tmp_owner_dead(f"obj.{'0' * 32}.{dead_owner.replace(procs.BOOT_ID, 'other')}")
    assert not tmp_owner_dead("obj.123.random.otherhost")  # the old shape: unknown, not dead
    # the realiser's run directories: by pid and start time (a reused pid is not alive)
    dead_tag = dead_owner.partition("@")[0]
    live = f"run-{procs.pid_tag()}-live"
    for name in (live, f"run-{dead_tag}-dead", f"run-{os.getpid()}.1-reused"):
        (tmp_path / name / "ws").mkdir(parents=True)
    sweep_dead_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live]


# ---------------------------------------------------------------- step names

GOOD_STEP_NAMES = ["a", "build", "unit-test", "v1.2", "_x", "0", "A_b.c-d"]
BAD_STEP_NAMES = ["", "-a", ".a", "a b", "a/b", "a*", "é", "a:b", "//a"]


@pytest.mark.parametrize("name", GOOD_STEP_NAMES)
def test_every_step_name_call_site_accepts_the_same(name: str) -> None:
    from kata.labels import is_step_name, parse_label

    assert is_step_name(name)
    p = load_text(f"steps: [{{name: '{name}', image: x, services: [{{name: '{name}', image: y}}]}}]")
    assert p.steps[0].name == name and p.steps[0].services[0].name == name
    label = parse_label(f"//{name}")
    assert (label.kind, label.name) == ("exact", name)


@pytest.mark.parametrize("name", BAD_STEP_NAMES)
def test_every_step_name_call_site_refuses_the_same(name: str) -> None:
    from kata.labels import is_step_name, parse_label

    assert not is_step_name(name)
    with pytest.raises(KataError) as err:
        load_text(f"steps: [{{name: '{name}', image: x}}]")
    assert err.value.reason == "config.step_name"
    with pytest.raises(KataError) as err:
        load_text(f"steps: [{{name: a, image: x, services: [{{name: '{name}', image: y}}]}}]")
    assert err.value.reason == "config.value"
    try:  # a label never addresses it as one step (`//a*` is a valid prefix label)
        label = parse_label(f"//{name}")
    except KataError as err:
        assert err.reason == "label.syntax"
    else:
        assert (label.kind, label.name) != ("exact", name)
