"""Triggers, only:/when: and git hooks against real git repositories and real containerd:
`kata run --event`, a bare remote with a post-receive hook (a git-native CI server),
a clone with a pre-push hook that blocks a failing push."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.git import git, git_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kata.local/busybox:latest"

PIPELINE = {
    "pipeline": "gitci",
    "triggers": [
        {"event": "push", "branches": ["main", "release/*", "feature/*"]},
        {"event": "tag", "pattern": "v*"},
    ],
    "steps": [
        {"name": "build", "image": IMAGE, "commands": ["cat src/app.txt"]},
        {"name": "docs", "image": IMAGE, "only": {"paths": ["docs/**"]},
         "commands": ["echo docs built"]},
        {"name": "docs-publish", "image": IMAGE, "depends_on": ["docs"],
         "commands": ["echo published"]},
        {"name": "release", "image": IMAGE, "depends_on": ["build"],
         "when": 'event == "tag" and tag =~ "v*"', "commands": ["echo releasing"]},
        {"name": "check", "image": IMAGE, "commands": ["test ! -e FAIL"]},
    ],
}


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def setup(tmp_path, containerd_daemon, runtime):
    """A bare remote and a clone holding the pipeline (pushed to main), and kata."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(remote), str(work))
    git(work, "checkout", "-q", "-b", "main")
    store = tmp_path / "store"
    env = {**git_env(), "PYTHONPATH": str(ROOT)}
    env.pop("KATA_STORE", None)
    base = [sys.executable, "-m", "kata", "--store", str(store), "--containerd",
            containerd_daemon.address]

    def kata(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        proc = subprocess.run([*base, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def push(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        proc = subprocess.run(["git", "push", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return proc

    return {"remote": remote, "work": work, "store": store, "kata": kata, "push": push}


def _initial(work: Path) -> str:
    (work / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    return commit(work, {"src/app.txt": "app v1\n", "docs/index.md": "# docs\n"}, "initial")


def _runs(store: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from store import Store

    with Store.open(store) as s:
        return s.list_runs(pipeline="gitci", limit=50)


def _status(run) -> dict[str, str]:
    return {s.name: s.status for s in run.steps}


def test_run_event_triggers_and_conditions(setup):
    kata, work = setup["kata"], setup["work"]
    _initial(work)
    commit(work, {"src/app.txt": "app v2\n"}, "src only")
    skipped = kata("run", "--event", "push", "--branch", "wip/x")
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.splitlines() == [
        '[SKIP] pipeline "gitci": no trigger matches (event push, branch \'wip/x\'); closest: '
        "trigger 1 (push): branch 'wip/x' does not match main, release/*, feature/*"]
    ran = kata("run", "--event", "push")  # the current branch, main, changed against its parent
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert "build | app v2" in lines
    assert "[SKIP] docs (only: no changed path matches docs/** (changed: src/app.txt))" in lines
    assert "[SKIP] docs-publish (dependency docs skipped)" in lines
    assert any(x.startswith("[SKIP] release (when: ") for x in lines)
    git(work, "tag", "v1.0")
    tag = kata("run", "--event", "tag", "--base", "HEAD~1")
    assert tag.returncode == 0, tag.stdout + tag.stderr
    assert "release | releasing" in tag.stdout.splitlines()
    assert "[SKIP] docs (only: " in tag.stdout
    # without --event: a local run ignores triggers; changed paths include the work tree
    (work / "docs/new.md").write_text("new\n")
    git(work, "checkout", "-q", "-b", "wip/y")
    local = kata("run")
    assert local.returncode == 0, local.stdout + local.stderr
    assert "docs | docs built" in local.stdout.splitlines()
    assert "[SKIP] pipeline" not in local.stdout
    bad = kata("run", "--event", "push", "--base", "no-such-ref")
    assert bad.returncode == 2 and "no-such-ref" in bad.stderr


def test_post_receive_is_a_git_native_ci_server(setup):
    kata, work, remote, push = setup["kata"], setup["work"], setup["remote"], setup["push"]
    installed = kata("hooks", "install", cwd=remote)
    assert installed.returncode == 0, installed.stderr
    assert (remote / "hooks/post-receive").exists()
    _initial(work)
    first = push("-q", "origin", "main")
    assert first.returncode == 0, first.stderr
    assert "build | app v1" in first.stderr and "docs | docs built" in first.stderr
    commit(work, {"src/app.txt": "app v2\n"}, "src only")
    second = push("-q", "origin", "main")
    assert "[SKIP] docs (only: no changed path matches docs/**" in second.stderr
    assert "[SKIP] docs-publish (dependency docs skipped)" in second.stderr
    git(work, "tag", "v2.0")
    tagged = push("-q", "origin", "v2.0")
    assert "release | releasing" in tagged.stderr
    git(work, "checkout", "-q", "-b", "wip/z")
    other = push("-q", "origin", "wip/z")
    assert other.returncode == 0
    assert "[SKIP] pipeline \"gitci\": no trigger matches" in other.stderr
    commit(work, {"FAIL": "x\n"}, "breaks check")
    git(work, "checkout", "-q", "-b", "feature/broken")
    broken = push("-q", "origin", "feature/broken")
    assert broken.returncode == 0  # post-receive cannot refuse: it records and reports
    assert "kata: failed: the pipeline failed for feature/broken" in broken.stderr
    runs = _runs(setup["store"])  # newest first; the wip/z push ran nothing
    assert [(r.branch, r.status) for r in runs] == [
        ("feature/broken", "failed"), ("", "passed"), ("main", "passed"), ("main", "passed")]
    assert _status(runs[1])["release"] == "passed"
    assert (runs[1].event, runs[1].tag) == ("tag", "v2.0") and runs[2].event == "push"
    assert _status(runs[2])["docs"] == "skipped" and _status(runs[3])["docs"] == "passed"
    assert _status(runs[0])["check"] == "failed"
    assert not list((remote / "worktrees").glob("*")) if (remote / "worktrees").exists() else True


def test_pre_push_blocks_a_failing_push(setup):
    kata, work, remote, push = setup["kata"], setup["work"], setup["remote"], setup["push"]
    _initial(work)
    assert push("-q", "origin", "main").returncode == 0  # no hook yet
    installed = kata("hooks", "install")
    assert installed.returncode == 0, installed.stderr
    hook = work / ".git/hooks/pre-push"
    assert hook.exists()
    git(work, "checkout", "-q", "-b", "feature/bad")
    commit(work, {"FAIL": "x\n"}, "breaks check")
    blocked = push("origin", "feature/bad")
    assert blocked.returncode != 0
    assert "[FAIL] check" in blocked.stderr
    assert "kata: push refused: the pipeline failed for feature/bad" in blocked.stderr
    assert git(remote, "branch", "--list", "feature/bad") == ""
    git(work, "checkout", "-q", "main")
    git(work, "checkout", "-q", "-b", "feature/good")
    commit(work, {"src/app.txt": "app v3\n"}, "good change")
    good = push("origin", "feature/good")
    assert good.returncode == 0, good.stderr
    assert "build | app v3" in good.stderr
    assert git(remote, "branch", "--list", "feature/good") != ""
    runs = _runs(setup["store"])
    assert [(r.branch, r.status) for r in runs] == [
        ("feature/good", "passed"), ("feature/bad", "failed")]


def test_install_does_not_clobber_a_foreign_hook(tmp_path):
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", str(repo))
    hook = repo / ".git/hooks/pre-push"
    hook.write_text("#!/bin/sh\nexit 0\n")
    env = {**git_env(), "PYTHONPATH": str(ROOT)}

    def kata(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "kata", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    refused = kata("hooks", "install")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    assert kata("hooks", "install", "--force").returncode == 0
    assert "kata hooks install" in hook.read_text() and os.access(hook, os.X_OK)
    assert kata("hooks", "install").returncode == 0  # ours: replaced without --force
    assert kata("hooks", "install", "--repo", str(tmp_path / "nope")).returncode == 2


TAGS_ARE_NOT_BRANCHES = {
    "pipeline": "gitci",
    "steps": [
        {"name": "release", "image": IMAGE, "only": {"tags": ["v*"]},
         "commands": ["echo releasing"]},
        {"name": "mainline", "image": IMAGE, "only": {"branches": ["main"]},
         "commands": ["echo on main"]},
    ],
}


def test_tags_are_not_branches(setup):
    """A push has no tag and a tag event has no branch, whatever points at the commit."""
    kata, work = setup["kata"], setup["work"]
    (work / ".kata-ci.yaml").write_text(yaml.safe_dump(TAGS_ARE_NOT_BRANCHES, sort_keys=False))
    commit(work, {"a.txt": "a\n"}, "initial")
    git(work, "tag", "v9.9.9")
    skip_release = "[SKIP] release (only: tag (no tag) does not match v*)"
    feature = kata("run", "--event", "push", "--branch", "feature")
    assert feature.returncode == 0, feature.stdout + feature.stderr
    assert skip_release in feature.stdout.splitlines()
    plain = kata("run")  # HEAD is main, tagged v9.9.9: still a push
    assert plain.returncode == 0, plain.stdout + plain.stderr
    lines = plain.stdout.splitlines()
    assert skip_release in lines and "mainline | on main" in lines
    tagged = kata("run", "--event", "tag")
    assert tagged.returncode == 0, tagged.stdout + tagged.stderr
    lines = tagged.stdout.splitlines()
    assert "release | releasing" in lines
    assert "[SKIP] mainline (only: branch (no branch) does not match main)" in lines
    alone = kata("run", "--tag", "v9.9.9")  # --tag implies the tag event
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "[CACHE] release: HIT" in alone.stdout and "[SKIP] mainline" in alone.stdout
    bad = kata("run", "--event", "push", "--tag", "v9.9.9")
    assert bad.returncode == 2 and "a push has no tag" in bad.stderr


def test_only_paths_match_like_inputs(setup):
    """`*.md` selects docs/guide.md in inputs: and in only.paths alike (gitignore rules)."""
    kata, work = setup["kata"], setup["work"]
    pipeline = {"pipeline": "gitci", "steps": [
        {"name": "docs", "image": IMAGE, "inputs": ["*.md"], "only": {"paths": ["*.md"]},
         "commands": ["cat docs/guide.md"]},
        {"name": "rootdocs", "image": IMAGE, "only": {"paths": ["/*.md"]},
         "commands": ["echo root"]}]}
    (work / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    commit(work, {"docs/guide.md": "v1\n", "README.md": "r\n"}, "initial")
    commit(work, {"docs/guide.md": "guide v2\n"}, "docs only")
    ran = kata("run", "--event", "push")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert "docs | guide v2" in lines
    assert "[SKIP] rootdocs (only: no changed path matches /*.md (changed: docs/guide.md))" in lines


def test_steps_see_the_context_they_ask_for(setup):
    """context: sets only the listed variables, and only they enter the key: a new commit
    is a miss for the step that reads the commit and a hit for the one that does not."""
    kata, work = setup["kata"], setup["work"]
    pipeline = {"pipeline": "gitci", "env": {"NAME": "app", "FULL": "${NAME}-$${x}"}, "steps": [
        {"name": "stamp", "image": IMAGE, "inputs": ["none"],
         "context": ["KATA_COMMIT_SHA", "KATA_BRANCH", "KATA_EVENT", "KATA_PIPELINE", "CI"],
         "commands": ['echo "$KATA_COMMIT_SHA $KATA_BRANCH $KATA_EVENT $KATA_PIPELINE $CI"',
                      'echo "tag=${KATA_TAG:-unset} full=$FULL"']},
        {"name": "plain", "image": IMAGE, "inputs": ["none"],
         "commands": ['echo "sha=${KATA_COMMIT_SHA:-unset} ci=${CI:-unset}"']}]}
    (work / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sha = commit(work, {"a.txt": "1\n"}, "one")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert f"stamp | {sha} main push gitci true" in lines
    assert "stamp | tag=unset full=app-${x}" in lines
    assert "plain | sha=unset ci=unset" in lines
    sha2 = commit(work, {"a.txt": "2\n"}, "two")
    second = kata("run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"stamp | {sha2} main push gitci true" in second.stdout.splitlines()
    assert "[CACHE] plain: HIT" in second.stdout


def test_hooks_install_outside_a_repository_names_the_directory_and_the_fix(tmp_path,
                                                                            monkeypatch):
    """Found by a review: `kata hooks install` in a plain directory said ". is not a git
    repository": neither the directory nor what to do."""
    from kata.errors import KataError
    from kata.hooks import install

    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    with pytest.raises(KataError) as e:
        install(".")
    assert e.value.reason == "git.not_a_repository"
    assert e.value.message == (f"{plain} is not a git repository: run `kata hooks install` "
                               "inside a clone, or name one with --repo DIR")
