"""`kata run`, `kata build`, `kata logs`, `kata why` as a user types them (real processes,
real containerd, a store of their own): output lines, exit codes 0/1/2, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import FakeStep, write_pipeline
from support.cli import KataProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

STEPS = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/a.txt > dist/a", "echo built it"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep -q hello dist/a",), depends_on=("build",), inputs=("x",)),
    FakeStep("lint", commands=("test -s dist/a",), depends_on=("build",), inputs=("x",)),
]


@pytest.fixture
def kata(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    write_pipeline(repo, STEPS, name="cli")
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def test_run_then_cached_run(kata):
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == '[PARSE] Pipeline "cli": 3 steps, 2 parallel groups'
    assert "[CACHE] build: MISS" in lines
    assert "[RUN] build: mkdir -p dist && cat src/a.txt > dist/a && echo built it" in lines
    assert "build | built it" in lines
    # test and lint start together: one line, as the overview shows, before their verdicts
    assert "[RUN] test, lint (parallel)" in lines
    assert not any(x.startswith(("[RUN] test:", "[RUN] lint:")) for x in lines)
    assert lines.index("[RUN] test, lint (parallel)") < min(
        lines.index(x) for x in lines if x.startswith(("[PASS] test", "[PASS] lint")))
    assert lines[-1].startswith("[DONE] All 3 steps passed (")
    second = kata("run")
    assert second.returncode == 0
    assert second.stdout.splitlines()[-1].startswith("[DONE] 3 steps (3 cached, 0 ran) — ")
    assert any(x.startswith("[CACHE] build: HIT (key: ") for x in second.stdout.splitlines())


def test_dry_run_json_and_targets(kata):
    plan = kata("run", "--dry-run")
    assert plan.returncode == 0
    assert "[PLAN] build: MISS (not in the store)" in plan.stdout.splitlines()
    assert "[RUN]" not in plan.stdout
    out = kata("build", "//test", "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in out.stdout.splitlines()]
    assert events[0]["event"] == "parse" and events[-1]["event"] == "done"
    assert {e["step"] for e in events if e["event"] == "run"} == {"build", "test"}
    again = kata("run", "--step", "lint")
    assert "[CACHE] build: HIT" in again.stdout and "[RUN] lint" in again.stdout


def test_exit_codes(kata):
    assert kata("run", "--step", "nope").returncode == 2
    assert kata("build", "//nope").returncode == 2
    write_pipeline(kata.repo, [FakeStep("bad", commands=("echo oops", "exit 4"))], name="cli")
    failed = kata("run")
    assert failed.returncode == 1
    assert "[FAIL] bad (exit 4, " in failed.stdout
    (kata.repo / ".kata-ci.yaml").write_text("pipeline: x\nsteps: [{name: a, imag: b}]\n")
    broken = kata("run")
    assert broken.returncode == 2 and "error:" in broken.stderr


def test_logs_and_why(kata):
    first = kata("run", "--json")
    run_id = json.loads(first.stdout.splitlines()[-1])["run_id"]
    kata("run")
    logs = kata("logs", "--step", "build")
    assert logs.returncode == 0
    assert logs.stdout.splitlines()[0] == f"== build: cached — output of run {run_id} =="
    assert "built it" in logs.stdout
    assert "built it" in kata("logs", "--run", run_id, "--step", "build").stdout
    assert kata("logs", "--step", "nope").returncode == 2  # bad input
    assert kata("logs", "--run", "nope").returncode == 2
    assert "unchanged" in kata("why", "//build").stdout
    (kata.repo / "src/a.txt").write_text("hello again\n")
    why = kata("why", "//build")
    assert "src/a.txt" in why.stdout


def _run_until_napping(kata, address: str, tmp_path, step: str, **env_extra: str):
    """`kata run` as a process, returned once step ``step`` printed "napping"."""
    env = {**os.environ, "KATA_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT),
           **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "kata", "--containerd", address, "run"],
                            cwd=kata.repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(f"{step} | napping"):
            break
    return proc


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_terminate_and_hangup_cancel_cleanly(kata, containerd_daemon, runtime, tmp_path,
                                                    signame):
    """Ctrl-C, a CI runner's timeout or `kill` (SIGTERM) and a closed terminal or ssh
    session (SIGHUP) cancel the run: the last two ended kata at once, leaving its step's
    container, task, snapshot and workspace mounts behind."""
    import signal

    write_pipeline(kata.repo, [FakeStep("nap", commands=("echo napping", "sleep 60"))],
                   name="cli")
    proc = _run_until_napping(kata, containerd_daemon.address, tmp_path, "nap")
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "[CANCEL] nap (interrupted, " in out
    # a cancelled step is not a failed one (found by a review: "1 failed" read as a bug)
    assert out.splitlines()[-1].startswith("[DONE] Interrupted: 1 step: 1 cancelled — "), out
    assert "Traceback" not in err
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left
    work = tmp_path / "store" / "local" / "work"
    mounts = Path("/proc/mounts").read_text()
    assert str(work) not in mounts
    assert kata("run", "--dry-run").returncode == 0


def test_a_second_ctrl_c_kills_without_the_grace_and_still_leaves_nothing(
        kata, containerd_daemon, runtime, tmp_path):
    """The second Ctrl-C used to exit at once, leaving the step's container and snapshot
    for the next run to sweep. It now skips the stop grace (SIGKILL at once), waits for
    the deletes, and exits 130 with nothing left: here a step that ignores SIGTERM under
    a 600 s grace still ends within the test's timeout."""
    import signal

    write_pipeline(kata.repo, [FakeStep("stubborn", commands=(
        "trap '' TERM", "echo napping", "sleep 600"))], name="cli")
    (tmp_path / "host.yaml").write_text("containerd: {stop_grace: 600}\n")
    proc = _run_until_napping(kata, containerd_daemon.address, tmp_path, "stubborn",
                              KATA_CONFIG=str(tmp_path / "host.yaml"))
    proc.send_signal(signal.SIGINT)
    time.sleep(1)  # the first one has reached the step: SIGTERM sent, ignored
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted twice: killing the running steps" in err
    assert "Traceback" not in err
    left = runtime.leftovers()
    assert left == {k: [] for k in left}, left
    assert str(tmp_path / "store" / "local" / "work") not in Path("/proc/mounts").read_text()


def test_yaml_as_users_write_it(tmp_path, containerd_daemon, runtime):
    """A date-like env value reaches the step as written; x- keys hold the anchors."""
    repo = tmp_path / "yamlrepo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: yaml\n"
        "x-base: &base\n"
        "  image: kata.local/busybox:latest\n"
        "  inputs: []\n"
        "env: {DATE: 2024-01-02, VERSION: 1.10, DEBUG: yes}\n"
        "steps:\n"
        "  - <<: *base\n"
        "    name: show\n"
        "    commands: ['echo \"$DATE $VERSION $DEBUG\"']\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    ran = kata("run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "show | 2024-01-02 1.10 yes" in ran.stdout.splitlines()


def test_unavailable_image_dead_socket_and_command_not_found(tmp_path, containerd_daemon, runtime):
    """An image neither local nor fetchable: validate and run name the image, the steps
    that use it and the fix, exit 2, nothing runs; a dead containerd socket says so in
    words; exit 127 says the command is not in the image."""
    from support.registry import free_port

    repo = tmp_path / "imgrepo"
    repo.mkdir()
    missing = f"127.0.0.1:{free_port()}/team/node:20-alpine"  # nothing listens there
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: img\n"
        "steps:\n"
        f"  - {{name: test, image: '{missing}', commands: [npm test], inputs: []}}\n"
        f"  - {{name: lint, image: '{missing}', commands: [npm run lint], inputs: []}}\n"
        "  - {name: ok, image: kata.local/busybox:latest, commands: [echo hi], inputs: []}\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    for args in (("validate",), ("run",)):
        r = kata(*args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"image {missing} (used by test, lint) is neither in kata's image store nor " \
            "fetchable" in r.stderr
        assert f"fix: `kata image pull {missing}`" in r.stderr
        assert "`kata image import FILE`" in r.stderr
        assert "[RUN]" not in r.stdout
    offline = kata("validate", "--offline")
    assert (offline.returncode, offline.stdout) == (
        0, "Config valid. 3 steps, 0 cycles, 1 parallel group\n")
    dead = KataProcess(repo, store=tmp_path / "store", address=str(tmp_path / "no.sock"))("run")
    assert dead.returncode == 2
    assert dead.stderr.startswith(f"error: cannot reach containerd at {tmp_path / 'no.sock'}: "
                                  "no such socket (containerd is not running there). Start ")
    assert "FAILED_PRECONDITION" not in dead.stderr and "unix:" not in dead.stderr
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: img\n"
        "steps:\n"
        "  - {name: s, image: kata.local/busybox:latest, commands: [nosuchtool --x], inputs: []}\n")
    r = kata("run")
    assert r.returncode == 1
    assert "[FAIL] s (exit 127: a command was not found in the image " \
        "kata.local/busybox:latest (install it there, or use an image that has it)" in r.stdout
    # its tag recorded, a run that must run a step finds the dead socket before the first
    dead = KataProcess(repo, store=tmp_path / "store", address=str(tmp_path / "no.sock"))
    r = dead("run", "--no-cache")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: cannot reach containerd at "), r.stderr
    assert "[RUN]" not in r.stdout and "[FAIL]" not in r.stdout


def test_an_unavailable_pinned_image_is_reported_like_a_tag(tmp_path, containerd_daemon,
                                                             runtime, busybox_digest):
    """The same kind, pinned by digest: validate and run (once a step using it is to run)
    name it, its steps and the fix, exit 2, before any step; a pinned image that is stored
    runs; a step not selected does not need its image at all."""
    from support.registry import free_port

    repo = tmp_path / "pinrepo"
    repo.mkdir()
    missing = f"127.0.0.1:{free_port()}/team/tool@sha256:{'0' * 64}"  # nothing listens there
    stored = f"kata.local/busybox@{busybox_digest}"
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: pin\n"
        "steps:\n"
        f"  - {{name: ok, image: '{stored}', commands: [echo pinned-ok], inputs: []}}\n"
        f"  - {{name: tool, image: '{missing}', commands: [tool], inputs: []}}\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    for args in (("validate",), ("run",)):
        r = kata(*args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"image {missing} (used by tool) is neither in kata's image store nor " \
            "fetchable" in r.stderr, r.stderr
        assert "`kata image import FILE`" in r.stderr
        assert "[RUN]" not in r.stdout
    alone = kata("run", "--step", "ok")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "ok | pinned-ok" in alone.stdout
    # a tag that cannot be found, used by a step this run does not select, is no error
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: pin\n"
        "steps:\n"
        f"  - {{name: ok, image: '{stored}', commands: [echo pinned-ok], inputs: []}}\n"
        f"  - {{name: node, image: '127.0.0.1:{free_port()}/team/node:20', commands: [x],\n"
        "     inputs: []}\n"
        "  - {name: after, image: kata.local/busybox:latest, depends_on: [ok],\n"
        "     commands: [echo after-ok], inputs: []}\n")
    for args in (("run", "--step", "after"), ("build", "//after")):
        r = kata(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "after | after-ok" in r.stdout or "after: HIT" in r.stdout, r.stdout
    whole = kata("run")
    assert whole.returncode == 2 and "(used by node)" in whole.stderr, whole.stderr


def test_results_out_of_the_store(tmp_path, containerd_daemon, runtime):
    """build --out (one target: directly in DIR), run --out (DIR/<step>/), export --run ID:
    the artifacts with their exec bits and symlinks; exporting twice gives the same DIR."""
    repo = tmp_path / "outrepo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(
        "pipeline: out\n"
        "steps:\n"
        "  - name: package\n"
        "    image: kata.local/busybox:latest\n"
        "    inputs: []\n"
        "    artifacts: ['dist/*.whl', bin/]\n"
        "    commands:\n"
        "      - mkdir -p dist bin\n"
        "      - echo wheel > dist/app-1.0-py3-none-any.whl\n"
        "      - echo sdist > dist/app-1.0.tar.gz\n"
        "      - printf '#!/bin/sh\\necho tool\\n' > bin/tool && chmod 755 bin/tool\n"
        "      - ln -s tool bin/link\n"
        "  - {name: docs, image: kata.local/busybox:latest, inputs: [],\n"
        "     artifacts: [site/], commands: ['mkdir site', 'echo hi > site/index.html']}\n"
        "  - {name: check, image: kata.local/busybox:latest, inputs: [], commands: ['true']}\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)

    def files(root: Path) -> dict[str, str]:
        out = {}
        for p in sorted(root.rglob("*")):
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = oct(p.stat().st_mode & 0o777) + " " + p.read_text()
        return out

    single = tmp_path / "single"
    built = kata("build", "//package", "--out", str(single))
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"[OUT] package -> {single}" in built.stdout.splitlines()
    want = {"bin/link": "-> tool", "bin/tool": "0o755 #!/bin/sh\necho tool\n",
            "dist/app-1.0-py3-none-any.whl": "0o644 wheel\n"}
    assert files(single) == want
    again = kata("build", "//package", "--out", str(single))  # a cache hit, same files
    assert again.returncode == 0 and "[CACHE] package: HIT" in again.stdout
    assert files(single) == want

    every = tmp_path / "every"
    ran = kata("run", "--out", str(every))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(p.name for p in every.iterdir()) == ["docs", "package"]  # check declares none
    assert files(every / "package") == want
    assert files(every / "docs") == {"site/index.html": "0o644 hi\n"}

    from store import Store

    with Store.open(tmp_path / "store") as s:
        run_id = s.list_runs(pipeline="out", limit=1)[0].id
    later = tmp_path / "later"
    exp = kata("export", "--run", run_id, "--step", "docs", "--out", str(later))
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert files(later) == {"site/index.html": "0o644 hi\n"}
    as_json = kata("export", "--run", run_id, "--step", "docs", "--out",
                   str(tmp_path / "j"), "--json")
    row = json.loads(as_json.stdout)
    assert (row["event"], row["version"], row["step"], row["path"]) == (
        "export", 1, "docs", str(tmp_path / "j")) and row["time"].endswith("Z")
    bad = kata("export", "--run", run_id, "--step", "nope", "--out", str(later))
    assert bad.returncode == 2 and "has no step 'nope' (it has: " in bad.stderr
    bad = kata("export", "--run", "no-such-run", "--out", str(later))  # bad input: exit 2
    assert bad.returncode == 2 and "no run 'no-such-run'" in bad.stderr \
        and "kata runs" in bad.stderr and "Traceback" not in bad.stderr


def test_export_of_a_run_with_nothing_to_export_says_so(kata, tmp_path):
    """`kata run`, then `kata build //lint` (or `kata run --step lint`), then a deploy
    script's `kata export --out dist`: the last trusted run is the lint's, which has no
    artifacts, and export exited 0 with dist/ empty. It now fails (exit 1) naming the run
    it took and the last one that has artifacts."""
    first = kata("run", "--json")
    assert first.returncode == 0, first.stderr
    full = json.loads(first.stdout.splitlines()[-1])["run_id"]
    assert kata("run", "--step", "lint").returncode == 0
    proc = kata("export", "--out", str(tmp_path / "dist"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "has no artifacts to export" in proc.stderr
    # a repository without git: the run it took is not named "(ref:)"
    assert "(ref:)" not in proc.stderr and "(no git ref)" in proc.stderr, proc.stderr
    assert f"kata export --run {full}" in proc.stderr
    assert not (tmp_path / "dist").exists()
    proc = kata("export", "--run", full, "--out", str(tmp_path / "dist"))
    assert proc.returncode == 0 and (tmp_path / "dist/build/dist/a").read_text() == "hello\n"


def test_a_pipeline_timeout_says_so_in_the_done_line(kata):
    """Found by a review: a run ended by settings.timeout printed "[DONE] Interrupted:",
    as if someone had pressed Ctrl-C, and counted the step it cancelled as failed. The
    line names the timeout and counts cancelled, skipped and passed steps apart; --json's
    done event carries the same (``stop``, ``cancelled_steps``)."""
    write_pipeline(kata.repo, [FakeStep("nap", commands=("echo napping", "sleep 60")),
                               FakeStep("after", commands=("true",), depends_on=("nap",)),
                               FakeStep("quick", commands=("true",))],
                   name="cli", settings={"timeout": "4s", "max_parallel": 2})
    proc = kata("run")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("[DONE] Pipeline timeout (settings.timeout): 3 steps: 1 cancelled, 1 skipped, "
                           "1 passed — "), proc.stdout
    assert "Traceback" not in proc.stderr
    doc = [json.loads(x) for x in kata("run", "--json").stdout.splitlines()]
    done = [d for d in doc if d.get("event") == "done"][-1]
    assert (done["stop"], done["cancelled"], done["cancelled_steps"], done["failed"],
            done["skipped"]) == ("pipeline timeout", True, 1, 0, 1), done
    # kata runs counted the cancelled step as failed (last session's leftover)
    listed = kata("runs")
    assert listed.returncode == 0, listed.stderr
    header, newest = listed.stdout.splitlines()[:2]
    assert "RAN/CACHED/FAILED/CANCELLED" in header, header
    assert " 1/1/0/1 " in newest, listed.stdout  # the --json run: quick was cached
    runs = json.loads(kata("runs", "--json").stdout)["runs"]
    assert {k: runs[0]["steps"][k] for k in ("failed", "cancelled", "skipped")} == {
        "failed": 0, "cancelled": 1, "skipped": 1}, runs[0]


def test_run_warns_of_an_inputs_pattern_that_matches_nothing(kata):
    """Found by a review: the warning for an ``inputs``/``cache.key_files`` pattern that
    selects no file (a typo: scr/** for src/**) came from `kata validate` only, and most
    users never run it: `kata run` ran the blind step silently. `kata run` warns on stderr,
    once per pattern and matrix step, before the steps run, on every run: a no-op replay
    (nothing changed since an all-hit run) repeats the warnings that run gave, since the
    pattern is as wrong then and a CI log of any one run should show it
    (test_noop_replay.py::test_a_replay_warns_as_the_run_it_replays)."""
    write_pipeline(kata.repo, [FakeStep("build", commands=("true",),
                                        inputs=("scr/**", "src/**"))], name="cli")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    warning = (f"warning: {kata.repo / '.kata-ci.yaml'}:8:5: step 'build': inputs pattern "
               "'scr/**' matches no file of the repository")
    assert [x for x in first.stderr.splitlines() if x.startswith("warning:")] == [warning]
    assert warning not in first.stdout
    changed = kata("run", "--json")  # --json keeps its stdout JSON; the warning is on stderr
    assert warning in changed.stderr.splitlines()
    assert all(json.loads(x) for x in changed.stdout.splitlines())


def test_why_and_hit_keys_along_an_early_cutoff_chain(tmp_path, containerd_daemon, runtime):
    """build -> pack -> test, and an edit of build's input that leaves its output the same.
    Last session's leftovers: `kata why //test` said pack "runs again" (pack hits by early
    cutoff), and the HIT line of an early-cutoff hit gave the resolved hash where a direct
    hit, --dry-run and `kata graph` give the derivation hash: the next run's HIT line for
    the same result showed another key. Every HIT line now names the derivation hash."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    write_pipeline(repo, [
        FakeStep("build", commands=("mkdir -p dist", "tr -d ' ' < src/a.txt > dist/a"),
                 inputs=("src/**",), artifacts=("dist/",)),
        FakeStep("pack", commands=("mkdir -p pkg", "cp dist/a pkg/a"), depends_on=("build",),
                 inputs=("none",), artifacts=("pkg/",)),
        FakeStep("test", commands=("grep -q hello pkg/a",), depends_on=("pack",),
                 inputs=("none",))], name="chain")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    assert kata("run").returncode == 0
    (repo / "src/a.txt").write_text("hel lo\n")  # build's output comes out the same
    why = kata("why", "//test").stdout
    assert "runs again" not in why and "pack itself is unchanged, its key changed only " \
        "through build: it may hit by early cutoff if build's output comes out the same" in why, why
    assert "build itself changed (input file src/a.txt), so it runs unless a result for its " \
        "new key is stored" in kata("why", "//pack").stdout

    def hits(proc) -> dict[str, str]:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(x[len("[CACHE] "):].split(": HIT ", 1) for x in proc.stdout.splitlines()
                    if ": HIT " in x)

    cutoff = hits(kata("run"))
    assert sorted(cutoff) == ["pack", "test"] and all(
        v.endswith(", early cutoff)") for v in cutoff.values()), cutoff
    direct = hits(kata("run"))
    assert {k: v.replace(", early cutoff", "") for k, v in cutoff.items()} == \
        {k: direct[k] for k in cutoff}, (cutoff, direct)
    graph = {s["name"]: s["drv_hash"] for s in json.loads(kata("graph", "--format", "json")
                                                          .stdout)["steps"]}
    assert all(direct[k] == f"(key: {graph[k][:7]}...)" for k in direct), (direct, graph)
    events = [json.loads(x) for x in kata("run", "--json").stdout.splitlines()]
    assert all(e["key"] == graph[e["step"]] for e in events if e["event"] == "cache")
