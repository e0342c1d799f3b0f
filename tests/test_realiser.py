"""The realiser over the FakeRuntime (host shell in a real overlay workspace) and a store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fakes import FAKE_DIGEST, Behaviour, FakeRuntime, FakeStep, compile_steps
from kata.errors import KataError
from kata.realise import events as ev
from kata.realise.realiser import Realiser, RealiseOptions
from kata.realise.spec import HOME_FALLBACK
from kata.runtimes.base import Readiness
from store import Store


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.store = Store.open(tmp_path / "store")
        self.work = tmp_path / "work"
        self.runtime = FakeRuntime()
        self.events: list[ev.Event] = []

    def write(self, rel: str, text: str) -> None:
        path = self.repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def realiser(self, steps, **options) -> Realiser:
        self.events = []
        graph = compile_steps(self.repo, steps)
        options.setdefault("max_parallel", 4)
        opts = RealiseOptions(repo_root=self.repo, work_root=self.work, **options)
        return Realiser(graph, store=self.store, runtime=self.runtime, emit=self.events.append,
                        options=opts)

    def run(self, steps, **options):
        self.runtime.started.clear()
        return self.realiser(steps, **options).run()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


DAG = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/a.txt > dist/out.txt"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/out.txt",), depends_on=("build",)),
    FakeStep("lint", commands=("test -s dist/out.txt",), depends_on=("build",)),
    FakeStep("package", commands=("tar -cf pkg.tar dist",), depends_on=("test", "lint"),
             artifacts=("pkg.tar",)),
]


def test_first_run_misses_second_run_hits(env):
    env.write("src/a.txt", "hello\n")
    first = env.run(DAG)
    assert first.ok and first.exit_code == 0
    assert {r.cache for r in first.steps.values()} == {"MISS"}
    assert sorted(env.runtime.started) == ["build", "lint", "package", "test"]
    second = env.run(DAG)
    assert second.ok
    assert {r.cache for r in second.steps.values()} == {"HIT"}
    assert env.runtime.started == []
    done = env.of(ev.Done)[0]
    assert (done.cached, done.ran) == (4, 0)


def test_editing_an_input_reruns_that_step_and_early_cutoff_keeps_dependents(env):
    env.write("src/a.txt", "hello\n")
    env.write("README", "x")
    assert env.run(DAG).ok
    env.write("README", "y")  # outside build's inputs; the others read the whole repo
    env.run(DAG)
    assert sorted(env.runtime.started) == ["lint", "package", "test"]
    env.write("src/a.txt", "hello\n")  # same content: nothing changes
    env.run(DAG)
    assert env.runtime.started == []
    env.write("src/a.txt", "hello world\n")
    env.run(DAG)
    assert sorted(env.runtime.started) == ["build", "lint", "package", "test"]


def test_early_cutoff_identical_output_leaves_dependents_cached(env):
    steps = [
        FakeStep("build", commands=("mkdir -p dist", "tr -d ' ' < src/a.txt > dist/out.txt"),
                 inputs=("src/**",), artifacts=("dist/",)),
        FakeStep("test", commands=("grep -q hello dist/out.txt",), depends_on=("build",),
                 inputs=("nothing",)),
    ]
    env.write("src/a.txt", "hello\n")
    assert env.run(steps).ok
    env.write("src/a.txt", "hel lo\n")  # whitespace only; build's output is identical
    result = env.run(steps)
    assert env.runtime.started == ["build"]
    assert result.steps["test"].cache == "HIT"
    assert [e.source for e in env.of(ev.CacheChecked) if e.step == "test"] == ["resolved"]
    env.run(steps)  # the cutoff was recorded under test's new derivation hash
    assert env.runtime.started == []


def test_artifacts_keep_symlinks_empty_dirs_and_exec_bits(env):
    steps = [
        FakeStep("make", commands=("mkdir -p out/empty out/bin",
                                   "printf '#!/bin/sh\\necho ran\\n' > out/bin/tool",
                                   "chmod +x out/bin/tool", "ln -s bin/tool out/link"),
                 artifacts=("out/",), inputs=("none",)),
        FakeStep("use", commands=("test -d out/empty", "test -x out/bin/tool", "test -L out/link",
                                  "./out/link"),
                 depends_on=("make",), inputs=("none",)),
    ]
    result = env.run(steps)
    assert result.ok, env.events
    assert "ran" in [e.text for e in env.of(ev.OutputLine) if e.step == "use"]


def test_links_out_of_the_tree_are_artifacts_as_links(env):
    """Symlinks are data: a virtualenv-like artifact with absolute links and links out of
    the tree is stored and handed on as those links; a named link to a directory of the
    working directory carries the directory's content."""
    steps = [
        FakeStep("venv", commands=("mkdir -p venv/bin build/out", "ln -s /etc/passwd venv/bin/python",
                                   "ln -s ../../.. venv/up", "echo app > build/out/app",
                                   "ln -s build/out result"),
                 artifacts=("venv/", "result"), inputs=("none",)),
        FakeStep("use", commands=('test "$(readlink venv/bin/python)" = /etc/passwd',
                                  'test "$(readlink venv/up)" = ../../..',
                                  "test -d result", "test ! -L result", "cat result/app",
                                  "test ! -e build"),
                 depends_on=("venv",), inputs=("none",)),
    ]
    result = env.run(steps)
    assert result.ok, env.events
    assert "app" in [e.text for e in env.of(ev.OutputLine) if e.step == "use"]


def test_the_run_directory_is_private(env):
    """Every workspace of a run lives in a 0700 directory (SECURITY.md, "Group kata")."""
    steps = [FakeStep("s", commands=('stat -c %a "$(pwd)/../.."',), inputs=("none",))]
    assert env.run(steps).ok, env.events  # the workspace is <run dir>/<id>/m
    assert [e.text for e in env.of(ev.OutputLine)] == ["700"]


def test_a_dependent_cannot_see_non_artifact_files(env):
    steps = [
        FakeStep("a", commands=("mkdir -p dist", "echo x > dist/x", "echo secret > scratch"),
                 artifacts=("dist/",), inputs=("none",)),
        FakeStep("b", commands=("test -f dist/x", "test ! -e scratch"), depends_on=("a",),
                 inputs=("none",)),
    ]
    assert env.run(steps).ok, env.events


def test_a_step_sees_only_its_inputs(env):
    env.write("src/a.txt", "a")
    env.write("other/b.txt", "b")
    steps = [FakeStep("s", commands=("test -f src/a.txt", "test ! -e other"), inputs=("src/**",))]
    assert env.run(steps).ok, env.events


def test_missing_artifact_is_a_failure_and_not_cached(env):
    steps = [FakeStep("s", commands=("true",), artifacts=("dist/",), inputs=("none",))]
    result = env.run(steps)
    assert not result.ok and result.exit_code == 1
    (fail,) = env.of(ev.StepFailed)
    assert fail.reason == "artifact.missing"
    env.run(steps)
    assert env.runtime.started == ["s"]


def test_failure_is_not_cached_and_skips_dependents(env):
    steps = [FakeStep("a", commands=("exit 3",), inputs=("none",)),
             FakeStep("b", commands=("true",), depends_on=("a",), inputs=("none",))]
    result = env.run(steps)
    assert result.steps["a"].status == "failed" and result.steps["a"].exit_status == 3
    assert result.steps["b"].status == "skipped"
    env.run(steps)
    assert env.runtime.started == ["a"]


def test_workspace_is_thrown_away_and_inputs_untouched(env):
    env.write("src/a.txt", "a")
    steps = [FakeStep("s", commands=("echo changed > src/a.txt", "rm -f src/a.txt"),
                      inputs=("src/**",))]
    assert env.run(steps).ok
    assert (env.repo / "src/a.txt").read_text() == "a"
    assert not any(env.work.iterdir()) if env.work.exists() else True


def test_no_cache_forces_runs_and_cache_false_never_hits(env):
    steps = [FakeStep("a", commands=("true",), inputs=("none",)),
             FakeStep("b", commands=("true",), inputs=("none",), cache=False)]
    env.run(steps)
    env.run(steps)
    assert env.runtime.started == ["b"]
    env.run(steps, use_cache=False)
    assert sorted(env.runtime.started) == ["a", "b"]


def test_cache_paths_restored_and_keyed_on_key_files(env):
    env.write("lock", "v1")
    step = FakeStep("install", commands=("mkdir -p deps", "test -f deps/warm && echo WARM || true",
                                          "touch deps/warm", "echo $RANDOM > stamp"),
                    inputs=("lock", "src"), cache_paths=("deps/",), key_files=("lock",))
    env.write("src", "1")
    env.run([step])
    env.write("src", "2")  # the step reruns, its cache key is the same
    env.run([step])
    assert env.runtime.started == ["install"]
    assert "WARM" in [e.text for e in env.of(ev.OutputLine)]
    env.run([step], use_cache=False)  # --no-cache restores no cache.paths either
    assert "WARM" not in [e.text for e in env.of(ev.OutputLine)]
    env.write("lock", "v2")
    env.run([step])
    assert "WARM" not in [e.text for e in env.of(ev.OutputLine)]


def test_targets_realise_only_what_they_need(env):
    env.write("src/a.txt", "hello\n")
    r = env.run(DAG, targets=("test",))
    assert sorted(r.steps) == ["build", "test"]
    r = env.run(DAG, targets=("lint",))
    assert env.runtime.started == ["lint"]  # build is a hit
    with pytest.raises(KataError) as err:
        env.realiser(DAG, targets=("nope",))
    assert err.value.reason == "target.unknown"


def test_dry_run_says_hit_or_miss_without_running(env):
    env.write("src/a.txt", "hello\n")
    plan = env.realiser(DAG).dry_run()
    assert [p.hit for p in plan] == [False] * 4
    env.run(DAG)
    env.write("src/a.txt", "changed hello\n")
    plan = {p.step: p for p in env.realiser(DAG).dry_run()}
    assert not plan["build"].hit and not plan["test"].hit
    assert "early cutoff" in plan["test"].why
    assert env.runtime.started == list(env.runtime.started)


def test_step_timeout_is_reported(env):
    env.runtime.behaviours["slow"] = Behaviour(wait_for_cancel=True)
    steps = [FakeStep("slow", commands=("sleep 60",), inputs=("none",), timeout="200ms")]
    result = env.run(steps)
    (fail,) = env.of(ev.StepFailed)
    assert fail.reason == "step.timeout" and result.exit_code == 1


def test_fail_fast_cancels_a_running_sibling(env):
    env.runtime.behaviours["slow"] = Behaviour(wait_for_cancel=True)
    # bad fails once slow runs: else, under load, bad can fail before slow reaches the
    # runtime, and slow is cancelled without ever running (the runtime never sees it)
    env.runtime.behaviours["bad"] = Behaviour(exit_status=1, after=("slow",))
    steps = [FakeStep("slow", commands=("sleep 60",), inputs=("none",)),
             FakeStep("bad", commands=("exit 1",), inputs=("none",)),
             FakeStep("after", commands=("true",), depends_on=("slow",), inputs=("none",))]
    result = env.run(steps, fail_fast=True)
    assert result.steps["slow"].status == "cancelled"
    assert result.steps["bad"].status == "failed"
    assert result.steps["after"].status == "skipped"
    assert env.runtime.cancelled == ["slow"]


def test_secrets_are_masked_in_output_and_log(env):
    steps = [FakeStep("s", commands=("echo token=$TOKEN",), inputs=("none",), secrets=("TOKEN",))]
    result = env.run(steps, secrets={"TOKEN": "hunter2"})
    assert result.ok, env.events
    assert "token=***" in [e.text for e in env.of(ev.OutputLine)]
    assert b"hunter2" not in env.store.read_blob(result.steps["s"].log)
    spec = env.runtime.specs["s"]
    assert "hunter2" not in repr(spec)  # containerd writes the spec to disk: never a value
    missing = env.run([FakeStep("m", commands=("true",), inputs=("none",), secrets=("NOPE",))])
    assert [e.reason for e in env.of(ev.StepFailed)] == ["secret.missing"]
    assert missing.exit_code == 1


def test_run_is_recorded_with_step_results(env):
    env.write("src/a.txt", "hello\n")
    first = env.run(DAG, git_commit="abc", git_branch="main")
    env.run(DAG)
    run = env.store.list_runs()[0]
    assert [s.name for s in run.steps] == ["build", "test", "lint", "package"]
    assert {s.cache for s in run.steps} == {"HIT"}
    assert run.steps[0].produced_by == first.run_id
    assert env.store.get_run(first.run_id).commit == "abc"


def test_a_hit_whose_objects_were_collected_is_a_miss(env):
    env.write("src/a.txt", "hello\n")
    first = env.run(DAG)
    tree = first.steps["build"].outputs
    os.unlink(env.store.objects.path(tree))  # what a gc on another host can leave behind
    env.run(DAG)
    assert "build" in env.runtime.started


def test_pipeline_timeout_cancels_and_skips(env):
    env.runtime.behaviours["slow"] = Behaviour(wait_for_cancel=True)
    steps = [FakeStep("slow", commands=("sleep 60",), inputs=("none",)),
             FakeStep("after", depends_on=("slow",), inputs=("none",))]
    result = env.run(steps, timeout=0.3)
    assert result.stop_reason == "pipeline timeout"
    assert result.steps["slow"].status == "cancelled"
    assert result.steps["after"].status == "skipped"
    (fail,) = env.of(ev.StepFailed)
    assert fail.reason == "step.cancelled" and "pipeline timeout" in fail.message


def test_condition_skips_a_step_and_its_dependents(env):
    steps = [FakeStep("build", inputs=("none",)),
             FakeStep("deploy", depends_on=("build",), inputs=("none",)),
             FakeStep("notify", depends_on=("deploy",), inputs=("none",))]
    result = env.run(steps, skip={"deploy": "condition false: branch == \"main\""})
    assert env.runtime.started == ["build"]
    assert result.steps["deploy"].status == "skipped"
    assert result.steps["notify"].message == "dependency deploy skipped"
    # a step skipped by its condition is no failure (a deploy skipped on a feature branch
    # must not fail the pipeline, nor block a pre-push hook)
    assert result.exit_code == 0 and result.ok


def test_cancelled_before_start_never_runs_a_container(env):
    steps = [FakeStep("bad", commands=("exit 1",), inputs=("none",)),
             FakeStep("other", inputs=("none",))]
    result = env.run(steps, max_parallel=1)
    assert result.steps["bad"].status == "failed"
    assert result.steps["other"].status == "skipped"
    assert env.runtime.started == ["bad"]


def test_edits_during_a_run_change_nothing(env):
    env.write("src/a.txt", "before\n")
    steps = [FakeStep("first", commands=("cat src/a.txt",), inputs=("src/**",)),
             FakeStep("second", commands=("cat src/a.txt",), inputs=("src/**",),
                      depends_on=("first",))]

    def edit_when_started(event):
        env.events.append(event)
        if isinstance(event, ev.StepStarted) and event.step == "first":
            env.write("src/a.txt", "after\n")  # the user edits while the pipeline runs

    graph = compile_steps(env.repo, steps)
    opts = RealiseOptions(repo_root=env.repo, work_root=env.work, max_parallel=1)
    result = Realiser(graph, store=env.store, runtime=env.runtime, emit=edit_when_started,
                      options=opts).run()
    assert result.ok
    assert env.of(ev.OutputLine) and {e.text for e in env.of(ev.OutputLine)} == {"before"}


def test_an_unstorable_artifact_fails_the_step_clearly(env):
    steps = [FakeStep("s", commands=("mkdir -p out", "mkfifo out/pipe"),
                      inputs=("none",), artifacts=("out/",))]
    result = env.run(steps)
    (fail,) = env.of(ev.StepFailed)
    assert fail.reason == "store.tree.unsupported_file"  # the store names why it refuses
    assert "out/pipe" in fail.message
    assert result.exit_code == 1
    env.run(steps)
    assert env.runtime.started == ["s"]  # never cached


def test_services_reach_the_runtime_and_their_logs_are_recorded(env):
    steps = [FakeStep("it", inputs=("none",),
                      services=({"name": "db", "image": "kata.local/busybox:latest",
                                 "env": {"A": "1"}, "ready": {"tcp": 5432, "timeout": "7s"}},
                                {"name": "web", "image": "kata.local/busybox:latest",
                                 "commands": ["httpd -f"]}))]
    result = env.run(steps)
    assert result.exit_code == 0
    spec = env.runtime.specs["it"]
    db, web = spec.services
    assert db.name == "db" and db.image.endswith("@" + FAKE_DIGEST) and db.env == {"A": "1"}
    assert db.ready == Readiness(kind="tcp", target="5432", timeout=7.0) and db.argv == ()
    assert web.ready is None
    assert web.argv == ("/bin/sh", "-c", HOME_FALLBACK + "exec 2>&1\nset -e\nhttpd -f\n")
    logs = dict(result.steps["it"].service_logs)
    assert set(logs) == {"db", "web"}
    assert env.store.read_blob(logs["db"]) == b"db up\n"
    (run,) = env.store.list_runs(limit=1)
    assert dict(run.steps[0].service_logs) == logs


def test_a_service_secret_must_be_given(env):
    steps = [FakeStep("it", inputs=("none",),
                      services=({"name": "db", "image": "kata.local/busybox:latest",
                                 "secrets": ["DB_PASSWORD"]},))]
    result = env.run(steps)
    (fail,) = env.of(ev.StepFailed)
    assert fail.reason == "secret.missing" and result.exit_code == 1
    assert env.runtime.started == []


def test_an_untrusted_scope_withholds_secrets_and_refuses_the_host_network(env):
    from kata.keys import Scope

    ref = "refs/heads/feature/x"
    steps = [FakeStep("build", inputs=("none",)),
             FakeStep("deploy", commands=("echo $TOKEN",), depends_on=("build",),
                      inputs=("none",), secrets=("TOKEN",)),
             FakeStep("notify", depends_on=("deploy",), inputs=("none",)),
             FakeStep("it", inputs=("none",),
                      services=({"name": "db", "image": "kata.local/busybox:latest",
                                 "secrets": ["DB_PASSWORD"]},)),
             FakeStep("probe", inputs=("none",), network="host")]
    untrusted = Scope(ref=ref, default_ref="refs/heads/main", protected=False, trusted=False)
    # even if a value were handed over, an untrusted run passes none to a container
    result = env.run(steps, secrets={"TOKEN": "hunter2", "DB_PASSWORD": "pw-1234"}, scope=untrusted,
                     fail_fast=False)
    assert env.runtime.started == ["build"]
    assert result.steps["deploy"].status == "skipped"
    assert result.steps["deploy"].message == f"secret TOKEN withheld: untrusted run of {ref}"
    assert result.steps["it"].message == (
        f"secret DB_PASSWORD (service db) withheld: untrusted run of {ref}")
    assert result.steps["notify"].message == "dependency deploy skipped"
    (fail,) = env.of(ev.StepFailed)
    assert (fail.step, fail.reason) == ("probe", "trust.refused")
    assert fail.message == f"step probe: network: host refused: untrusted run of {ref}"
    assert result.exit_code == 1
    plan = env.realiser(steps, scope=untrusted).excluded()
    assert set(plan) == {"deploy", "notify", "it"}
    trusted = env.run(steps, secrets={"TOKEN": "hunter2", "DB_PASSWORD": "pw-1234"},
                      scope=Scope(ref="refs/heads/main", default_ref="refs/heads/main"))
    # build ran again: what the untrusted run realised is in its quarantine, never read here
    assert trusted.ok and sorted(env.runtime.started) == ["build", "deploy", "it", "notify",
                                                          "probe"]


def test_step_user_reaches_the_runtime(env):
    env.run([FakeStep("a", inputs=("none",), user="1000:1000"), FakeStep("b", inputs=("none",))])
    assert env.runtime.specs["a"].user == "1000:1000"
    assert env.runtime.specs["b"].user == "0:0"


def test_a_key_files_glob_edit_restores_no_stale_cache_directory(env):
    """Issue 9, case 2: `key_files: [req/*.txt]` is the compiler's glob digest; an edit of
    a file it matches changes the cache-directory key (it was read as a literal path)."""
    step = FakeStep("install", commands=(
        'echo "restored-cache: $(cat cachedir/stamp 2>/dev/null || echo none)"',
        "mkdir -p cachedir && cp req/deps.txt cachedir/stamp"),
        inputs=("req/**", "src"), cache_paths=("cachedir/",), key_files=("req/*.txt",))
    env.write("src", "1")
    env.write("req/deps.txt", "v1")
    env.run([step])
    assert "restored-cache: none" in [e.text for e in env.of(ev.OutputLine)]
    env.write("req/deps.txt", "v3")
    env.run([step])
    assert env.runtime.started == ["install"]
    assert "restored-cache: none" in [e.text for e in env.of(ev.OutputLine)]
    env.write("src", "2")  # an input edit outside the key files: the step reruns, restored
    env.run([step])
    assert "restored-cache: v3" in [e.text for e in env.of(ev.OutputLine)]


def _snapshot_key(graph, step):
    from kata import keys

    return keys.input_snapshot_key(graph.nodes[step].inputs.digest)


def test_an_edit_between_hashing_and_the_snapshot_fails_and_records_nothing(env):
    """The snapshot must hold the bytes the key covers: an edit after the compiler hashed a
    file but before the realiser packed it (same size, same mtime: nothing else tells)
    fails the run with inputs.changed naming the file; no snapshot record is written."""
    env.write("src/a.txt", "v1\n")
    env.write("src/b.txt", "same\n")
    steps = [FakeStep("s", commands=("cat src/a.txt",), inputs=("src/**",))]
    graph = compile_steps(env.repo, steps)
    p = env.repo / "src/a.txt"
    st = p.stat()
    p.write_text("v2\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    opts = RealiseOptions(repo_root=env.repo, work_root=env.work)
    with pytest.raises(KataError) as err:
        Realiser(graph, store=env.store, runtime=env.runtime, emit=env.events.append,
                 options=opts).run()
    assert (err.value.reason, err.value.obj, err.value.exit_code) == ("inputs.changed",
                                                                      "src/a.txt", 1)
    # "run again" alone loops for a file written on every run (kata run > build.log in
    # the repository): the message says how to leave such a file out
    assert ".gitignore" in err.value.message and ".kataignore" in err.value.message
    assert env.store.get_realisation(_snapshot_key(graph, "s")) is None
    assert env.runtime.started == []
    # a file deleted in between: the same error, naming it
    graph = compile_steps(env.repo, steps)
    (env.repo / "src/b.txt").unlink()
    with pytest.raises(KataError) as err:
        Realiser(graph, store=env.store, runtime=env.runtime, emit=env.events.append,
                 options=opts).run()
    assert (err.value.reason, err.value.obj) == ("inputs.changed", "src/b.txt")


def test_no_cache_never_reuses_a_stored_snapshot(env):
    """A snapshot record naming other bytes (written by an older kata, or poisoned) is
    what a cached run trusts; `use_cache=False` packs the inputs anew."""
    env.write("src/a.txt", "real\n")
    steps = [FakeStep("s", commands=("cat src/a.txt",), inputs=("src/**",))]
    graph = compile_steps(env.repo, steps)
    other = env.repo.parent / "other"
    (other / "src").mkdir(parents=True)
    (other / "src/a.txt").write_text("stale\n")
    from store import Realisation

    tree = env.store.put_tree(other, ["src/a.txt"])
    env.store.put_realisation(_snapshot_key(graph, "s"),
                              Realisation(outputs=tree, log=env.store.put_blob(b"")))

    def seen(**options):
        env.run(steps, **options)
        return [e.text for e in env.of(ev.OutputLine)]

    assert seen(use_cache=True) == ["stale"]  # the control: the record is what a run uses
    assert seen(use_cache=False) == ["real"]


def test_group_executable_inputs_pass_the_snapshot_check(env):
    """The compiler and the tree agree on what executable means (owner x bit): a file
    with only a group x bit is no 'changed' input."""
    env.write("src/a.txt", "x\n")
    (env.repo / "src/a.txt").chmod(0o654)
    result = env.run([FakeStep("s", commands=("test -f src/a.txt",), inputs=("src/**",))])
    assert result.ok and env.runtime.started == ["s"]


def test_a_step_after_one_that_always_runs_is_no_hit_until_it_passed(env):
    """depends_on means "must pass first": a step after one that is never cached (secrets,
    cache: false) is no hit before that one passed in this run; it is skipped when that
    one fails, and a hit by its resolved hash (early cutoff) when it passes unchanged."""
    steps = [FakeStep("gate", commands=('test "$TOKEN" = good',), inputs=("none",),
                      secrets=("TOKEN",)),
             FakeStep("after", commands=("echo after ran",), depends_on=("gate",),
                      inputs=("none",))]
    assert env.run(steps, secrets={"TOKEN": "good"}).ok
    assert env.runtime.started == ["gate", "after"]
    failed = env.run(steps, secrets={"TOKEN": "bad-value"})
    assert env.runtime.started == ["gate"] and not failed.ok
    assert failed.steps["after"].status == "skipped"
    assert not [e for e in env.of(ev.CacheChecked) if e.step == "after" and e.hit]
    again = env.run(steps, secrets={"TOKEN": "good"})
    assert again.ok and env.runtime.started == ["gate"]  # gate passed: after by its outputs
    (hit,) = [e for e in env.of(ev.CacheChecked) if e.step == "after"]
    assert hit.hit and hit.source == "resolved"


def test_done_wall_time_counts_writing_the_run_record(env):
    """[DONE]'s wall time is taken when the line is emitted, after the run record is written
    (a 1,000-step record takes a while): never less than what the user waited for it."""
    import time

    env.write("src/a.txt", "hello\n")
    realiser = env.realiser(DAG)
    write = realiser.records.run

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(0.3)
        return write(*args, **kwargs)

    realiser.records.run = slow
    result = realiser.run()
    done = env.of(ev.Done)[0]
    assert done.wall >= result.wall + 0.3


def test_a_miss_reports_the_key_the_dry_run_and_the_next_hit_name(env):
    """Found by a review: a miss's `cache` event carried the resolved hash (with
    `source: derivation`), while `--dry-run` and the next run's hit name the derivation
    hash: one step, two keys, and the event's `source` contradicted its `key`."""
    env.write("src/a.txt", "hello\n")
    planned = {p.step: p.key for p in env.realiser(DAG).dry_run()}
    assert env.run(DAG).ok
    missed = {e.step: (e.key, e.source) for e in env.of(ev.CacheChecked)}
    assert missed == {name: (key, "derivation") for name, key in planned.items()}
    assert env.run(DAG).ok
    hits = {e.step: e.key for e in env.of(ev.CacheChecked) if e.hit}
    assert hits == planned


def test_a_tree_handed_on_twice_is_mounted_where_it_first_comes(env):
    """``depends_on: [b, a]`` with b built on a: a's tree is already below b's in what b
    hands on, so c sees b's file in either order (docs/config.md, depends_on). Found by
    the key hunt of branch cache-trust: the doc said the later dependency (a) wins. The
    two orders are two keys for one view (dep_order): a needless miss, left as is, since
    changing which tree wins would change what existing keys mean."""
    env.write("x", "x")
    seen = {}
    for order in (("a", "b"), ("b", "a")):
        steps = [FakeStep("a", commands=("echo a > same.txt",), artifacts=("same.txt",),
                          inputs=("none",)),
                 FakeStep("b", commands=("rm -f same.txt", "echo b > same.txt"),
                          depends_on=("a",), artifacts=("same.txt",), inputs=("none",)),
                 FakeStep("c", commands=("cat same.txt",), depends_on=order, inputs=("none",))]
        result = env.run(steps)
        assert result.ok
        seen[order] = env.store.read_blob(result.steps["c"].log).decode().strip()
    assert seen == {("a", "b"): "b", ("b", "a"): "b"}


def test_the_container_gets_the_env_its_key_holds_from_the_graph_alone(env):
    """The pipeline's env reached the container through ``RealiseOptions.env``, beside the
    graph whose keys already held it: a caller that left it out (every test and bench
    building its options) ran steps without it under the same key. The spec now takes the
    derivation's env (branch cache-trust)."""
    from kata.compile import compile_pipeline
    from kata.loader import load_pipeline

    env.write(".kata-ci.yaml", "pipeline: p\nenv: {GLOBAL: g, SHARED: pipeline}\nsteps:\n"
              "  - {name: s, image: kata.local/busybox:latest, inputs: [],\n"
              "     env: {SHARED: step}, commands: ['echo $GLOBAL $SHARED']}\n")
    graph = compile_pipeline(load_pipeline(env.repo / ".kata-ci.yaml"),
                             resolver=lambda ref: FAKE_DIGEST, repo_root=env.repo)
    assert dict(graph.nodes["s"].derivation.env) == {"GLOBAL": "g", "SHARED": "step"}
    opts = RealiseOptions(repo_root=env.repo, work_root=env.work)  # no env given
    result = Realiser(graph, store=env.store, runtime=env.runtime, emit=env.events.append,
                      options=opts).run()
    assert result.ok
    spec_env = env.runtime.specs["s"].env
    assert (spec_env["GLOBAL"], spec_env["SHARED"]) == ("g", "step")
    assert env.store.read_blob(result.steps["s"].log).decode().strip() == "g step"


def test_a_rotated_secret_is_no_miss_for_a_step_that_says_cache_true(env):
    """The decision (docs/config.md, cache; architecture, "What is in a key"): a secret's
    value is never hashed (whoever sees keys could confirm a guess), so a step that opts
    in with ``cache: true`` is a hit after the value changed, and shows the output of
    the value it ran with; ``--no-cache`` runs it with the new one."""
    from kata.compile import compile_pipeline
    from kata.loader import load_pipeline

    env.write(".kata-ci.yaml", "pipeline: p\nsteps:\n"
              "  - {name: s, image: kata.local/busybox:latest, inputs: [], secrets: [TOKEN],\n"
              "     cache: true, commands: ['echo length ${#TOKEN}']}\n")

    def run(value: str, **options):
        graph = compile_pipeline(load_pipeline(env.repo / ".kata-ci.yaml"),
                                 resolver=lambda ref: FAKE_DIGEST, repo_root=env.repo)
        env.runtime.started.clear()
        opts = RealiseOptions(repo_root=env.repo, work_root=env.work,
                              secrets={"TOKEN": value}, **options)
        result = Realiser(graph, store=env.store, runtime=env.runtime, emit=env.events.append,
                          options=opts).run()
        assert result.ok
        return result, env.store.read_blob(result.steps["s"].log).decode().strip()

    first, said = run("first-value")
    assert (first.steps["s"].cache, said) == ("MISS", "length 11")
    rotated, said = run("a-rotated-value")
    assert (rotated.steps["s"].cache, said) == ("HIT", "length 11")
    assert env.runtime.started == []
    forced, said = run("a-rotated-value", use_cache=False)
    assert (forced.steps["s"].cache, said) == ("MISS", "length 15")
