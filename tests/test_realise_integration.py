"""The realiser against real containerd (busybox image) and a real store: the overview's
caching scenarios, artifacts through overlays, fail_fast, timeouts, and a SIGKILLed kata."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import FakeStep, compile_steps, write_pipeline
from kata.realise import events as ev
from kata.realise.realiser import Realiser, RealiseOptions
from store import Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


class Env:
    def __init__(self, tmp_path: Path, runtime, digest: str) -> None:
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.store_dir = tmp_path / "store"
        self.store = Store.open(self.store_dir)
        self.runtime = runtime
        self.digest = digest
        self.events: list[ev.Event] = []

    def write(self, rel: str, text: str) -> None:
        path = self.repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def run(self, steps, **options):
        self.events = []
        graph = compile_steps(self.repo, steps, digest=self.digest)
        opts = RealiseOptions(repo_root=self.repo, work_root=Path(self.store.state_dir) / "work",
                              max_parallel=4, **options)
        return Realiser(graph, store=self.store, runtime=self.runtime, emit=self.events.append,
                        options=opts).run()

    def ran(self) -> list[str]:
        return sorted(e.step for e in self.events if isinstance(e, ev.StepStarted))

    def output(self, step: str) -> list[str]:
        return [e.text for e in self.events if isinstance(e, ev.OutputLine) and e.step == step]


@pytest.fixture
def env(tmp_path, clean_runtime, busybox_digest):
    e = Env(tmp_path, clean_runtime, busybox_digest)
    yield e
    e.store.close()


DAG = [
    FakeStep("build", commands=("mkdir -p dist", "tr -d ' ' < src/app.txt > dist/app"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/app",), depends_on=("build",),
             inputs=("tests/**",)),
    FakeStep("lint", commands=("test -s dist/app",), depends_on=("build",), inputs=("lint.cfg",)),
    FakeStep("package", commands=("tar -cf pkg.tar dist",), depends_on=("test", "lint"),
             inputs=("nothing",), artifacts=("pkg.tar",)),
]


def _seed(env: Env) -> None:
    env.write("src/app.txt", "hello world\n")
    env.write("tests/t.sh", "true\n")
    env.write("lint.cfg", "strict\n")
    env.write("README.md", "docs\n")


def test_first_run_all_miss_second_all_hit(env):
    _seed(env)
    first = env.run(DAG)
    assert first.ok, env.events
    assert env.ran() == ["build", "lint", "package", "test"]
    second = env.run(DAG)
    assert second.ok and env.ran() == []
    assert {r.cache for r in second.steps.values()} == {"HIT"}


def test_edits_rerun_exactly_the_affected_steps(env):
    _seed(env)
    assert env.run(DAG).ok
    env.write("tests/t.sh", "echo more\n")  # test's input only
    assert env.run(DAG).ok
    assert env.ran() == ["test"]  # test's output (nothing) is unchanged: package stays cached
    env.write("README.md", "other docs\n")  # outside every step's inputs
    assert env.run(DAG).ok and env.ran() == []
    env.write("src/app.txt", "hello there\n")  # build changes, so everything after it
    assert env.run(DAG).ok
    assert env.ran() == ["build", "lint", "package", "test"]


def test_whitespace_edit_early_cutoff(env):
    _seed(env)
    assert env.run(DAG).ok
    env.write("src/app.txt", "hello  world \n")  # build strips spaces: identical output
    result = env.run(DAG)
    assert result.ok and env.ran() == ["build"]
    assert {result.steps[n].cache for n in ("test", "lint", "package")} == {"HIT"}


def test_artifacts_keep_symlinks_empty_dirs_exec_bits_and_nothing_else(env):
    steps = [
        FakeStep("make", inputs=("none",), artifacts=("out/",), commands=(
            "mkdir -p out/empty out/bin", "printf '#!/bin/sh\\necho tool-ran\\n' > out/bin/tool",
            "chmod 755 out/bin/tool", "ln -s bin/tool out/link", "echo scratch > notes.txt")),
        FakeStep("use", depends_on=("make",), inputs=("none",), commands=(
            "test -d out/empty", "test -x out/bin/tool", "test -L out/link",
            "test \"$(readlink out/link)\" = bin/tool", "./out/link", "test ! -e notes.txt",
            "ls -A")),
    ]
    result = env.run(steps)
    assert result.ok, env.events
    assert "tool-ran" in env.output("use")
    assert "notes.txt" not in env.output("use")


def test_fail_fast_cancels_a_running_sleep(env):
    steps = [FakeStep("sleeper", commands=("sleep 60",), inputs=("none",)),
             FakeStep("broken", commands=("sleep 0.5", "exit 3"), inputs=("none",))]
    started = time.monotonic()
    result = env.run(steps, fail_fast=True)
    elapsed = time.monotonic() - started
    assert result.steps["broken"].status == "failed"
    assert result.steps["broken"].exit_status == 3
    assert result.steps["sleeper"].status == "cancelled"
    print(f"fail_fast cancelled the sleeping sibling; whole run took {elapsed:.2f}s")


def test_step_timeout_kills_and_reports(env):
    steps = [FakeStep("slow", commands=("sleep 60",), inputs=("none",), timeout="1s")]
    result = env.run(steps)
    (fail,) = [e for e in env.events if isinstance(e, ev.StepFailed)]
    assert fail.reason == "step.timeout"
    assert result.exit_code == 1


def test_missing_artifact_fails_clearly(env):
    steps = [FakeStep("s", commands=("true",), inputs=("none",), artifacts=("dist/",))]
    result = env.run(steps)
    (fail,) = [e for e in env.events if isinstance(e, ev.StepFailed)]
    assert fail.reason == "artifact.missing" and not result.ok


def _kata(args, *, cwd, store, address, **kw):
    envv = {**os.environ, "KATA_STORE": str(store), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "kata", "--containerd", address, *args],
                            cwd=cwd, env=envv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def test_sigkill_mid_run_then_next_run_succeeds_and_store_verifies(tmp_path, containerd_daemon,
                                                                  runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    store_dir = tmp_path / "store"
    write_pipeline(repo, [
        FakeStep("first", commands=("mkdir -p out", "echo one > out/f"), artifacts=("out/",)),
        FakeStep("slow", commands=("echo started", "sleep 30", "mkdir -p out2", "echo x > out2/f"),
                 depends_on=("first",), artifacts=("out2/",)),
    ], name="killme")
    proc = _kata(["run"], cwd=repo, store=store_dir, address=containerd_daemon.address)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("slow | started"):
            break
    else:
        pytest.fail(f"kata ended before the slow step started (exit {proc.wait()})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the next run replaces the slow step (a shorter one) and must succeed
    write_pipeline(repo, [
        FakeStep("first", commands=("mkdir -p out", "echo one > out/f"), artifacts=("out/",)),
        FakeStep("slow", commands=("echo started", "mkdir -p out2", "echo x > out2/f"),
                 depends_on=("first",), artifacts=("out2/",)),
    ], name="killme")
    again = _kata(["run"], cwd=repo, store=store_dir, address=containerd_daemon.address)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert "[CACHE] first: HIT" in out
    with Store.open(store_dir) as s:
        report = s.verify()
        assert report.ok, report
        work = Path(s.state_dir) / "work"
        assert not work.exists() or list(work.iterdir()) == []
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left


def test_secrets_reach_the_step_as_env_and_are_masked(env):
    steps = [FakeStep("deploy", commands=('test "$TOKEN" = "s3cr3t value"', "echo using $TOKEN"),
                      inputs=("none",), secrets=("TOKEN",))]
    result = env.run(steps, secrets={"TOKEN": "s3cr3t value"})
    assert result.ok, env.events
    assert env.output("deploy") == ["using ***"]


def test_cache_paths_survive_between_runs_keyed_on_key_files(env):
    step = FakeStep("install", inputs=("lock", "src"), cache_paths=("deps/",),
                    key_files=("lock",), commands=(
                        "mkdir -p deps", "if [ -f deps/warm ]; then echo WARM; fi",
                        "touch deps/warm"))
    env.write("lock", "v1")
    env.write("src", "1")
    assert env.run([step]).ok
    assert env.output("install") == []
    env.write("src", "2")  # reruns; same key files
    assert env.run([step]).ok
    assert env.output("install") == ["WARM"]
    env.write("lock", "v2")  # a new key: a cold cache
    assert env.run([step]).ok
    assert env.output("install") == []


def test_restored_cache_paths_are_the_steps_own_under_a_user(env):
    """Found by a review: a step with ``user: 1000`` got its ``cache.paths`` back as root's
    read-only files, so it could neither update nor delete what it had cached (npm ci
    removes node_modules first). Restored cache directories are the step's user's and
    writable by it, as the workspace's root is; the checkout stays root's."""
    step = FakeStep("install", inputs=("lock", "src"), cache_paths=("deps/",),
                    key_files=("lock",), user="1000:1000", commands=(
                        "mkdir -p deps/sub", "date >> deps/sub/stamp", "test ! -w lock",
                        "rm -rf deps/old && mkdir deps/old && touch deps/old/f"))
    env.write("lock", "v1")
    env.write("src", "1")
    assert env.run([step]).ok, env.events
    env.write("src", "2")  # reruns with the same key files: the cache comes back
    result = env.run([step])
    assert result.ok, [e for e in env.events if isinstance(e, (ev.OutputLine, ev.StepFailed))]


def test_output_keeps_the_terminals_order_and_masks_across_streams(env):
    """stdout and stderr interleaved 300 times come back in the order they were written,
    identically on every run; a value written half to each stream is masked; a progress
    line keeps its final state; the stored log is what the events carried."""
    interleave = ("i=0; while [ $i -lt 300 ]; do echo a$i; echo b$i >&2; echo c$i; "
                  "i=$((i+1)); done")
    steps = [FakeStep("order", inputs=("none",), secrets=("TOKEN",), commands=(
        interleave, "printf 'key tok-'; printf 'abcdef end\\n' >&2",
        "printf 'fetch  10%%\\r'; printf 'fetch  60%%\\r' >&2; printf 'fetch 100%%\\n'"))]
    expected = ([f"{x}{i}" for i in range(300) for x in "abc"]
                + ["key *** end", "fetch 100%"])
    for _ in range(3):  # a secret step is never cached: it runs every time
        result = env.run(steps, secrets={"TOKEN": "tok-abcdef"})
        assert result.ok, env.events
        assert env.output("order") == expected
        log = env.store.read_blob(result.steps["order"].log)
        assert log == ("\n".join(expected) + "\n").encode()


def test_sigkill_during_a_secret_step_leaves_no_secret_mount(tmp_path, containerd_daemon,
                                                             runtime):
    """The secrets tmpfs of a killed run is unmounted by the next run's sweep (it used to
    stay mounted, emptied, for ever)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    store_dir = tmp_path / "store"
    write_pipeline(repo, [FakeStep("deploy", commands=("echo started", "sleep 30"),
                                   inputs=("none",), secrets=("TOKEN",))], name="killsecret")
    proc = _kata(["run", "--secret", "TOKEN=s3cr3t-value"], cwd=repo, store=store_dir,
                 address=containerd_daemon.address)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("deploy | started"):
            break
    else:
        pytest.fail(f"kata ended before the step started (exit {proc.wait()})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = str((store_dir / "local").resolve())

    def mounts_below() -> list[str]:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            return [line.split()[4] for line in fh if line.split()[4].startswith(state)]

    assert any("/secrets-" in m for m in mounts_below())
    write_pipeline(repo, [FakeStep("other", commands=("true",), inputs=("none",))],
                   name="killsecret")
    again = _kata(["run"], cwd=repo, store=store_dir, address=containerd_daemon.address)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert mounts_below() == []
    assert list((store_dir / "local" / "work").iterdir()) == []
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left


def test_artifact_globs_match_and_an_empty_glob_is_not_produced(env):
    steps = [
        FakeStep("wheel", inputs=("none",), artifacts=("dist/*.whl",), commands=(
            "mkdir -p dist", "echo w1 > dist/a-1.0-py3-none-any.whl",
            "echo w2 > dist/b-2.0-py3-none-any.whl", "echo src > dist/a-1.0.tar.gz")),
        FakeStep("use", depends_on=("wheel",), inputs=("none",), commands=("ls dist",)),
        FakeStep("nothing", inputs=("none",), artifacts=("dist/*.whl",),
                 commands=("mkdir -p dist", "echo x > dist/a.tar.gz")),
    ]
    result = env.run(steps, fail_fast=False)
    assert result.steps["wheel"].status == "passed", env.events
    assert env.output("use") == ["a-1.0-py3-none-any.whl", "b-2.0-py3-none-any.whl"]
    fails = [e for e in env.events if isinstance(e, ev.StepFailed)]
    (fail,) = [e for e in fails if e.step == "nothing"]
    assert fail.reason == "artifact.missing", fails
    assert fail.message == "declared artifact dist/*.whl was not produced (no path matches it)"
