"""`kata run --remote-cache` against a real BuildGrid (cache-only), with two "hosts": two
stores (so two state directories), two copies of the repository, no shared filesystem,
one containerd. Host A runs the pipeline; host B gets every step as a HIT and fetches
nothing it does not need; an edit on B reruns one step and early cutoff keeps its
dependents cached (also for a third host); BuildGrid's CLI reads back what Kata uploaded;
secrets and untrusted runs never reach the remote; a remote killed mid-run costs one
warning line, never the run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from kata.remote.actioncache import action_for
from support.buildgrid import BuildGridConfig, buildgrid
from support.cli import KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
PIPELINE = {
    "pipeline": "remote",
    "steps": [
        {"name": "build", "image": IMAGE, "inputs": ["src/**"], "artifacts": ["dist/"],
         "commands": ["mkdir -p dist/bin dist/empty", "cat src/a.txt > dist/a",
                      "printf '#!/bin/sh\\necho app\\n' > dist/bin/app", "chmod 755 dist/bin/app",
                      "ln -s ../a dist/bin/link", "echo built it"]},
        {"name": "test", "image": IMAGE, "depends_on": ["build"], "inputs": ["x"],
         "artifacts": ["report"], "commands": ["grep -q hello dist/a", "dist/bin/app > report"]},
        {"name": "lint", "image": IMAGE, "depends_on": ["build"], "inputs": ["x"],
         "artifacts": ["lintlog"], "commands": ["test -L dist/bin/link", "echo ok > lintlog", "echo linted"]},
        {"name": "package", "image": IMAGE, "depends_on": ["test"], "inputs": ["x"],
         "artifacts": ["pkg"], "commands": ["cat report dist/a > pkg", "echo packaged"]},
        {"name": "deploy", "image": IMAGE, "depends_on": ["package"], "inputs": ["x"],
         "secrets": ["DEPLOY_TOKEN"], "cache": True, "commands": ["test -s pkg"]},
    ],
}
SECRET = "s3cr3t-deploy-token-value"


def _repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("hello\n")
    (root / "x").write_text("x\n")
    (root / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    return root


def _events(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _cache(proc) -> dict[str, dict]:
    return {e["step"]: e for e in _events(proc) if e["event"] == "cache"}


def _objects(store: Path) -> set[str]:
    return {"sha256:" + p.name for p in (store / "objects").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bg(tmp_path_factory):
    with buildgrid(tmp_path_factory.mktemp("bgd"), BuildGridConfig(instance="main")) as server:
        yield server


def _host(tmp_path: Path, name: str, repo: Path, address: str, bg) -> KataProcess:
    kata = KataProcess(repo, store=tmp_path / f"store-{name}", address=address)
    kata.remote = ("--remote-cache", bg.url, "--remote-instance", "main")  # type: ignore[attr-defined]
    return kata


def test_second_host_hits_everything_then_early_cutoff(bg, tmp_path, containerd_daemon, runtime):
    repo_a = _repo(tmp_path / "a")
    a = _host(tmp_path, "a", repo_a, containerd_daemon.address, bg)
    first = a("run", "--json", *a.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not any(e["hit"] for e in _cache(first).values())
    assert "warning" not in first.stderr

    # host B: its own copy of the repository, an empty store, no shared filesystem
    repo_b = tmp_path / "b"
    shutil.copytree(repo_a, repo_b)
    b = _host(tmp_path, "b", repo_b, containerd_daemon.address, bg)
    plan = b("run", "--dry-run", *b.remote)
    assert plan.returncode == 0, plan.stderr
    assert any(x.startswith("[PLAN] package: HIT (key: ") and x.endswith(", remote)")
               for x in plan.stdout.splitlines()), plan.stdout
    second = b("run", *b.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert second.returncode == 0, second.stdout + second.stderr
    lines = second.stdout.splitlines()
    for step in ("build", "test", "lint", "package"):
        assert any(x.startswith(f"[CACHE] {step}: HIT (key: ") and x.endswith(", remote)")
                   for x in lines), lines
    # a step that declares a secret is never shared: B runs it itself
    assert "[CACHE] deploy: MISS" in lines
    # kata why on B: a remote hit whose record B never fetched (lint) last passed with
    # the derivation hash it has now
    why = b("why", "//lint")
    assert why.returncode == 0 and "//lint: unchanged since" in why.stdout, why.stdout
    # lazily: deploy needs package's stack (build's, test's and package's trees); lint's
    # tree is needed by no step that runs, so it was not fetched
    a_cache = _cache(first)
    outputs = {e["step"]: e["outputs"] for e in json.loads(a("cache", "list", "--json").stdout)["entries"]
               if e["kind"] == "step"}
    fetched = _objects(tmp_path / "store-b")
    assert {outputs["build"], outputs["test"], outputs["package"]} <= fetched
    assert outputs["lint"] not in fetched

    # kata logs on B: package's log came with its trees; lint's stayed remote
    logs = b("logs", "--step", "package", "--step", "lint")
    assert logs.returncode == 0, logs.stderr
    assert "packaged" in logs.stdout and "linted" not in logs.stdout
    assert "in the remote cache; this host never fetched it" in logs.stdout
    # ...and says how to see it; with the remote named, it is fetched (found on redis-py:
    # a second host's `kata logs` of a remote hit had no way to show it)
    assert "--remote-cache" in logs.stdout, logs.stdout
    logs = b("logs", "--step", "lint", *b.remote)
    assert logs.returncode == 0, logs.stderr
    assert "linted" in logs.stdout and "never fetched" not in logs.stdout, logs.stdout

    # B again: everything local now that was fetched; deploy is a local hit too
    third = b("run", *b.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert third.returncode == 0
    assert third.stdout.splitlines()[-1].startswith("[DONE] 5 steps (5 cached, 0 ran)")

    # an edit on B that changes build's key but not its output: build reruns, and its
    # dependents hit by their resolved keys, found in the remote (A recorded them)
    (repo_b / "src" / "unused.txt").write_text("new input, same output\n")
    # build came to B only inside package's stack (deploy needed it): B recorded it, and
    # its derivation, so kata why compares against it
    why = b("why", "//build")
    assert why.returncode == 0 and "//build: 1 change(s)" in why.stdout, why.stdout
    assert "unused.txt" in why.stdout, why.stdout
    edited = b("run", "--json", *b.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    cache = _cache(edited)
    assert cache["build"]["hit"] is False
    for step in ("test", "lint", "package"):
        assert cache[step]["hit"] and cache[step]["source"] == "resolved", cache[step]
    ran = [e["step"] for e in _events(edited) if e["event"] == "run"]
    assert "build" in ran and not {"test", "lint", "package"} & set(ran)

    # host C with the same edit: build's result came from B, the cutoffs were recorded
    # under the new derivation hashes: everything hits by derivation hash
    repo_c = tmp_path / "c"
    shutil.copytree(repo_b, repo_c)
    c = _host(tmp_path, "c", repo_c, containerd_daemon.address, bg)
    fourth = c("run", "--json", *c.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    cache = _cache(fourth)
    for step in ("build", "test", "lint", "package"):
        assert cache[step]["hit"] and cache[step]["remote"] and cache[step]["source"] == "derivation"

    # BuildGrid's own CLI reads the ActionResult of build and the Directory tree in it
    build_key = a_cache["build"]["key"]
    ka = action_for(build_key)
    got = bg.bgd("actioncache", "get", "--json",
                 f"{ka.action_digest.hash}/{ka.action_digest.size_bytes}")
    assert got.returncode == 0, got.stdout + got.stderr
    result = json.loads(got.stdout[got.stdout.index("{"):])
    assert [f["path"] for f in result["outputFiles"]] == ["kata/record"]
    (tree,) = result["outputDirectories"]
    assert tree["path"] == "kata/trees/" + outputs["build"].partition(":")[2]
    root = f'{tree["rootDirectoryDigest"]["hash"]}/{tree["rootDirectoryDigest"]["sizeBytes"]}'
    dest = tmp_path / "bgd-build"
    res = bg.bgd("cas", "download-dir", root, str(dest))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (dest / "dist" / "a").read_text() == "hello\n"
    assert (dest / "dist" / "bin" / "link").readlink() == Path("../a")
    assert (dest / "dist" / "empty").is_dir()
    # the secret went nowhere near the remote
    assert not _grep_cas(bg, SECRET.encode())


def _grep_cas(bg, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in (bg.workdir / "cas").rglob("*") if p.is_file())


def test_untrusted_runs_are_not_uploaded(bg, tmp_path, containerd_daemon, runtime):
    repo = _repo(tmp_path / "u")
    (repo / "src" / "a.txt").write_text("hello from a fork\n")
    u = _host(tmp_path, "u", repo, containerd_daemon.address, bg)
    first = u("run", "--json", "--untrusted", *u.remote)
    assert first.returncode == 0, first.stdout + first.stderr
    # another host with the same change, trusted: nothing of the untrusted run is there
    repo_t = tmp_path / "t"
    shutil.copytree(repo, repo_t)
    t = _host(tmp_path, "t", repo_t, containerd_daemon.address, bg)
    second = t("run", "--json", *t.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert second.returncode == 0, second.stdout + second.stderr
    assert not any(e["hit"] for e in _cache(second).values())


def test_remote_killed_mid_run_finishes_locally(tmp_path, containerd_daemon, runtime):
    pipeline = {"pipeline": "slow", "steps": [
        {"name": "one", "image": IMAGE, "inputs": ["x"], "artifacts": ["o"],
         "commands": ["echo one > o"]},
        {"name": "two", "image": IMAGE, "depends_on": ["one"], "inputs": ["x"],
         "artifacts": ["t"], "commands": ["echo started", "sleep 4", "cat o > t"]},
        {"name": "three", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "commands": ["cat t"]},
        {"name": "four", "image": IMAGE, "depends_on": ["two"], "inputs": ["x"],
         "commands": ["cat o"]},
    ]}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    with buildgrid(tmp_path / "bgd") as server:
        kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
        proc = subprocess.Popen([*kata.base, "run", "--remote-cache", server.url], cwd=repo,
                                env=kata.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out = []
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("two | started"):
                server.kill()  # BuildGrid dies while a step runs
                break
            assert time.monotonic() < deadline, out
        rest, err = proc.communicate(timeout=120)
        out += rest.splitlines()
    assert proc.returncode == 0, "\n".join(out) + err
    assert "Traceback" not in err
    warnings = [x for x in err.splitlines() if "remote cache" in x]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"kata: warning: remote cache {server.url} unavailable (")
    assert out[-1].startswith("[DONE] All 4 steps passed")
    # and a run with the remote still down: a local hit for all, one warning again
    again = kata("run", "--remote-cache", server.url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")


def test_bad_remote_settings_are_usage_errors(tmp_path, containerd_daemon, runtime):
    repo = _repo(tmp_path / "r")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    bad = kata("run", "--remote-cache", "http://127.0.0.1:1")
    assert bad.returncode == 2 and "grpc://HOST:PORT" in bad.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text("remote:\n  cache: grpc://127.0.0.1:1\n  tokn_file: /x\n")
    typo = kata("run", KATA_CONFIG=str(cfg))
    assert typo.returncode == 2 and f"{cfg}:3:3" in typo.stderr and "tokn_file" in typo.stderr
    cfg.write_text("remote:\n  cache: grpc://127.0.0.1:1\n  token_file: /nonexistent/token\n")
    missing = kata("run", KATA_CONFIG=str(cfg))
    assert missing.returncode == 2 and "/nonexistent/token" in missing.stderr
    assert f"{cfg}:3:3" in missing.stderr
    # an instance for no remote at all: the user believes a remote is in use
    cfg.write_text("offline: false\n")
    alone = kata("run", "--remote-instance", "main", KATA_CONFIG=str(cfg))
    assert alone.returncode == 2 and "--remote-instance" in alone.stderr, alone.stderr
    assert "--remote-cache" in alone.stderr and not alone.stdout


def test_a_secret_steps_artifacts_never_go_up_with_a_dependent(bg, tmp_path, containerd_daemon,
                                                               runtime):
    """A step that declares no secret but depends on one that does hands on that step's
    artifacts (its stack), which may hold the value: neither it nor anything downstream
    is uploaded, and the value is nowhere in the remote CAS."""
    value = "dependent-leak-check-9f3a1c"
    pipeline = {"pipeline": "taint", "steps": [
        {"name": "sign", "image": IMAGE, "inputs": ["x"], "secrets": ["SIGNING_KEY"],
         "cache": True, "artifacts": ["sig"], "commands": ["echo \"$SIGNING_KEY\" > sig"]},
        {"name": "bundle", "image": IMAGE, "depends_on": ["sign"], "inputs": ["x"],
         "artifacts": ["bundle"], "commands": ["cat sig > bundle.tmp", "wc -c < sig > bundle"]},
        {"name": "publish", "image": IMAGE, "depends_on": ["bundle"], "inputs": ["x"],
         "artifacts": ["out"], "commands": ["cat bundle > out"]},
        {"name": "clean", "image": IMAGE, "inputs": ["x"], "artifacts": ["c"],
         "commands": ["echo clean > c"]},
    ]}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    a = _host(tmp_path, "taint-a", repo, containerd_daemon.address, bg)
    first = a("run", *a.remote, "--secret", f"SIGNING_KEY={value}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not _grep_cas(bg, value.encode())
    repo_b = tmp_path / "repo-b"
    shutil.copytree(repo, repo_b)
    b = _host(tmp_path, "taint-b", repo_b, containerd_daemon.address, bg)
    dry = b("run", "--json", "--dry-run", *b.remote, "--secret", f"SIGNING_KEY={value}")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plans = {e["step"]: e for e in _events(dry) if e["event"] == "plan"}
    assert plans["clean"]["hit"] and plans["clean"].get("remote"), plans["clean"]
    assert not any(plans[s]["hit"] for s in ("sign", "bundle", "publish")), plans


def test_a_fully_cached_run_does_not_touch_the_remote(bg, tmp_path, containerd_daemon, runtime):
    """Lookups go local first: when every step is a local hit (a team's no-op, with the
    remote in the host config) the remote is not asked, so a remote that hangs costs
    nothing; a dry run likewise. A local miss still asks it."""
    from support.listeners import LoopbackListener

    repo = _repo(tmp_path / "r")
    (repo / "src" / "a.txt").write_text("hello, built here only\n")  # no other test's keys
    a = _host(tmp_path, "nop", repo, containerd_daemon.address, bg)
    first = a("run", *a.remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert first.returncode == 0, first.stdout + first.stderr
    with LoopbackListener() as hung:  # accepts, never answers: each call would time out
        remote = ("--remote-cache", f"grpc://127.0.0.1:{hung.port}")
        for args in (("run",), ("run", "--dry-run")):
            again = a(*args, *remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
            assert again.returncode == 0, again.stdout + again.stderr
            assert "warning" not in again.stderr, again.stdout + again.stderr
        assert hung.count == 0
        (repo / "src" / "a.txt").write_text("changed\n")
        missed = a("run", "--dry-run", *remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
        assert missed.returncode == 0 and hung.count >= 1, missed.stdout + missed.stderr


def test_a_remote_hit_shows_the_test_report_of_the_run_that_built_it(bg, tmp_path,
                                                                     containerd_daemon, runtime):
    """A step's JUnit totals come with its remote hit: the report blob goes up with the
    record (an ActionResult output file), and a host that hits fetches it (small), so its
    [PASS] line and `kata logs` agree with the host that ran it; nothing is 'unreadable'."""
    xml = ('<testsuite name="s" tests="3" failures="0"><testcase classname="c" name="a"/>'
           '<testcase classname="c" name="b"/><testcase classname="c" name="d"/></testsuite>')
    pipeline = {"pipeline": "junit-remote", "steps": [
        {"name": "test", "image": IMAGE, "inputs": ["x"], "reports": {"junit": ["r.xml"]},
         "commands": [f"echo '{xml}' > r.xml"]},
        {"name": "after", "image": IMAGE, "depends_on": ["test"], "inputs": ["x"],
         "commands": ["true"]}]}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("junit\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    a = _host(tmp_path, "junit-a", repo, containerd_daemon.address, bg)
    first = a("run", *a.remote)
    assert first.returncode == 0 and "[PASS] test (" in first.stdout, first.stdout + first.stderr
    assert "— 3 passed" in first.stdout
    b = _host(tmp_path, "junit-b", repo, containerd_daemon.address, bg)
    hit = b("run", *b.remote)
    assert hit.returncode == 0, hit.stdout + hit.stderr
    assert "[CACHE] test: HIT" in hit.stdout and "remote)" in hit.stdout, hit.stdout
    assert "[PASS] test (cached) — 3 passed" in hit.stdout, hit.stdout + hit.stderr
    assert "unreadable" not in hit.stderr + hit.stdout, hit.stderr


def test_results_built_while_the_remote_was_down_reach_it_later(tmp_path, containerd_daemon,
                                                                runtime):
    """A laptop offline (BuildGrid not up yet): the run passes with one warning and queues
    its shareable results (not deploy's: it declares a secret); `kata remote push` says
    what is still pending (exit 1). Once BuildGrid is up, the next `kata run` (a local
    no-op) sends them beside its work, and another host hits every shareable step."""
    from support.buildgrid import BuildGrid, _free_port

    repo = _repo(tmp_path / "r")
    (repo / "src" / "a.txt").write_text("hello, built offline\n")  # keys of its own
    server = BuildGrid(tmp_path / "bgd")
    server.port = _free_port()
    remote = ("--remote-cache", server.url)
    a = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address)
    first = a("run", *remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert len([x for x in first.stderr.splitlines() if "remote cache" in x]) == 1, first.stderr
    # an untrusted run (a fork's change) while the remote is down queues nothing
    (repo / "src" / "a.txt").write_text("hello from a fork, offline\n")
    fork = a("run", "--untrusted", *remote)
    assert fork.returncode == 0 and "[RUN] build" in fork.stdout, fork.stdout + fork.stderr
    (repo / "src" / "a.txt").write_text("hello, built offline\n")
    offline = a("remote", "push", *remote)
    assert offline.returncode == 1, offline.stdout + offline.stderr
    assert offline.stdout.strip() == f"pushed 0 result(s) to {server.url}; 4 still pending"
    assert f"remote cache {server.url} unavailable (" in offline.stderr
    server.start()
    try:
        again = a("run", *remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
        assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
        assert again.stdout.splitlines()[-1].startswith("[DONE] 5 steps (5 cached, 0 ran)")
        done = a("remote", "push", "--json", *remote)
        assert done.returncode == 0, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        assert (doc["sent"], doc["dropped"], doc["left"], doc["error"]) == (0, 0, 0, None)
        repo_b = tmp_path / "b"
        shutil.copytree(repo, repo_b)
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address)
        hit = b("run", "--json", *remote, "--secret", f"DEPLOY_TOKEN={SECRET}")
        assert hit.returncode == 0, hit.stdout + hit.stderr
        cache = _cache(hit)
        for step in ("build", "test", "lint", "package"):
            assert cache[step]["hit"] and cache[step]["remote"], cache[step]
        assert not cache["deploy"]["hit"]
        assert not _grep_cas(server, SECRET.encode())
    finally:
        server.stop()
    # no remote anywhere: a usage error, not a silent success
    cfg = tmp_path / "config.yaml"
    cfg.write_text("offline: false\n")
    none = a("remote", "push", KATA_CONFIG=str(cfg))
    assert none.returncode == 2 and "--remote-cache" in none.stderr, none.stderr


def test_a_hung_remote_is_left_alone_by_the_runs_that_follow(tmp_path, containerd_daemon,
                                                             runtime):
    """A remote that accepts connections and never answers (the host config's
    remote.connect_timeout 1s, remote.timeout 60s): the first run waits for the connect
    timeout only, with one warning; the next runs do not connect at all while the
    back-off lasts, and their one warning line says so and how to ask now."""
    from support.listeners import HungListener

    repo = _repo(tmp_path / "r")
    (repo / "src" / "a.txt").write_text("hello, hung\n")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    with HungListener() as hung:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f"remote:\n  cache: grpc://127.0.0.1:{hung.port}\n  timeout: 60s\n"
                       "  connect_timeout: 1s\n  backoff: 10m\n")
        started = time.monotonic()
        first = kata("run", "--secret", f"DEPLOY_TOKEN={SECRET}", KATA_CONFIG=str(cfg))
        took = time.monotonic() - started
        assert first.returncode == 0, first.stdout + first.stderr
        (warning,) = [x for x in first.stderr.splitlines() if "remote cache" in x]
        assert "GetCapabilities: DEADLINE_EXCEEDED" in warning
        assert "not asked again until" in warning
        assert hung.count == 1
        (repo / "x").write_text("edited\n")  # steps run again: they would upload
        second = kata("run", "--secret", f"DEPLOY_TOKEN={SECRET}", KATA_CONFIG=str(cfg))
        assert second.returncode == 0, second.stdout + second.stderr
        (warning,) = [x for x in second.stderr.splitlines() if "remote cache" in x]
        assert "timed out in an earlier run" in warning and "kata remote push" in warning
        assert hung.count == 1  # not asked
    assert took < 45, took  # the connect timeout, not the 60 s per call
