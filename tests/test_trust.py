"""kata.trust as values: protected refs from the host config, the trust table, and what an
untrusted run may not do (the attacks themselves run end to end in test_trust_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kata.errors import KataError
from kata.hostconfig import load_host_config
from kata.keys import Scope
from kata.loader import load_text
from kata.trust import (
    Protection, decide, full_ref, load_protection, protection, refused, scope_for, skips,
    withheld,
)
from support.git import git

MAIN = "refs/heads/main"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_protects_the_default_branch_only(tmp_path, monkeypatch):
    monkeypatch.setenv("KATA_CONFIG", str(_config(tmp_path, "offline: false\n")))
    p = load_protection()
    assert p == Protection(branches=(), tags=(), default_branch=True)
    assert p.covers(MAIN, MAIN)
    assert p.covers("refs/heads/trunk", "refs/heads/trunk")
    assert not p.covers("refs/heads/main", "refs/heads/trunk")
    assert not p.covers("refs/heads/feature", MAIN)
    assert not p.covers("refs/tags/v1", MAIN)
    assert not p.covers("", "")  # outside git nothing is protected
    assert not p.covers(MAIN, "")  # the default branch unknown: nothing by default


@pytest.mark.parametrize("ref, expected", [
    ("refs/heads/main", True),
    ("refs/heads/release/1.2", True),
    ("refs/heads/release/1.2/hotfix", False),  # * does not cross /
    ("refs/heads/release", False),
    ("refs/heads/hotfix/a/b", True),  # ** does
    ("refs/heads/mainline", False),  # whole-name match
    ("refs/heads/x/main", False),
    ("refs/tags/v1.0", True),
    ("refs/tags/release/1.2", False),  # branch patterns do not protect tags
    ("refs/heads/v1.0", False),  # nor tag patterns branches
    ("refs/tags/x-v1", False),
    ("refs/remotes/origin/main", False),
    ("refs/pull/1/head", False),
])
def test_glob_rule(tmp_path, ref, expected):
    cfg = _config(tmp_path, 'protected:\n  branches: ["main", "release/*", "hotfix/**"]\n'
                  '  tags: ["v*"]\n')
    p = load_protection(cfg)
    assert p.covers(ref, "refs/heads/trunk") is expected


def test_a_protected_section_replaces_the_default(tmp_path):
    p = load_protection(_config(tmp_path, "protected:\n  tags: [v*]\n"))
    assert p == Protection(branches=(), tags=("v*",), default_branch=False)
    assert not p.covers(MAIN, MAIN)  # listed or not protected
    assert not load_protection(_config(tmp_path, "protected: {}\n")).covers(MAIN, MAIN)
    assert load_protection(_config(tmp_path, "protected: {branches: [main]}\n")).covers(MAIN, "")


@pytest.mark.parametrize("text, reason, where", [
    ("protected: [main]\n", "config.bad_value", (1, 1)),
    ("protected:\n  branch: [main]\n", "config.unknown_key", (2, 3)),
    ("protected:\n  branches: main\n", "config.bad_value", (2, 3)),
    ("protected:\n  branches:\n    - main\n    - 7\n", "config.bad_value", (4, 7)),
    ("protected:\n  tags: ['']\n", "config.bad_value", (2, 10)),
    ("protected:\n  branches: [refs/heads/main]\n", "config.bad_value", (2, 14)),
    ("protect: {branches: [main]}\n", "config.unknown_key", (1, 1)),
])
def test_bad_protected_config_names_file_line_column(tmp_path, text, reason, where):
    cfg = _config(tmp_path, text)
    with pytest.raises(KataError) as err:
        load_protection(cfg)
    assert err.value.reason == reason and err.value.exit_code == 2
    pos = err.value.position
    assert (pos.file, pos.line, pos.column) == (str(cfg), *where), err.value


def test_the_host_config_is_one_loader_shared_with_the_runtime(tmp_path):
    from kata.runtimes.containerd.config import load_runtime_config

    cfg = _config(tmp_path, "offline: true\nprotected: {branches: [main]}\n")
    assert load_runtime_config(cfg).offline
    assert protection(load_host_config(cfg)).branches == ("main",)
    with pytest.raises(KataError) as err:
        load_host_config(tmp_path / "missing.yaml")
    assert err.value.reason == "config.not_found"


def test_full_ref():
    assert full_ref(branch="main") == MAIN
    assert full_ref(branch="release/1", event="push") == "refs/heads/release/1"
    assert full_ref(tag="v1", event="tag") == "refs/tags/v1"
    assert full_ref(branch="main", tag="v1", event="tag") == "refs/tags/v1"
    assert full_ref(branch="main", tag="v1") == MAIN  # a local run builds the branch
    assert full_ref(branch="HEAD") == "" and full_ref() == ""
    assert full_ref(branch="HEAD", tag="v1") == "refs/tags/v1"
    # with an event the branch is the one given (the hook's pushed ref), and only a tag
    # event is named by its tag: a pushed branch called HEAD at v1's commit is no tag
    assert full_ref(branch="HEAD", tag="v1", event="push") == "refs/heads/HEAD"
    assert full_ref(branch="HEAD", event="push") == "refs/heads/HEAD"
    assert full_ref(tag="v1", event="pull_request") == ""  # quarantined by its commit
    assert full_ref(branch="x", tag="v1", event="pull_request") == "refs/heads/x"


TABLE = Protection(branches=("main", "release/*"), tags=("v*",), default_branch=False)


@pytest.mark.parametrize("ref, event, hook, untrusted, protected, trusted", [
    # the server: a post-receive run is trusted exactly when its ref is protected
    (MAIN, "push", "post-receive", False, True, True),
    ("refs/heads/release/2", "push", "post-receive", False, True, True),
    ("refs/tags/v2", "tag", "post-receive", False, True, True),
    ("refs/heads/feature/x", "push", "post-receive", False, False, False),
    ("refs/tags/nightly", "tag", "post-receive", False, False, False),
    ("", "push", "post-receive", False, False, False),
    # a pull request is its author's code, whatever it targets
    (MAIN, "pull_request", "", False, True, False),
    ("refs/heads/feature/x", "pull_request", "", False, False, False),
    # --untrusted forces it, even on a protected ref
    (MAIN, "", "", True, True, False),
    (MAIN, "push", "post-receive", True, True, False),
    # a local run in a working copy, and pre-push on the developer's machine: trusted
    ("refs/heads/feature/x", "", "", False, False, True),
    ("refs/heads/feature/x", "push", "", False, False, True),
    ("refs/heads/feature/x", "push", "pre-push", False, False, True),
    ("", "", "", False, False, True),
])
def test_trust_table(ref, event, hook, untrusted, protected, trusted):
    scope = decide(ref=ref, default_ref=MAIN, protection=TABLE, event=event, hook=hook,
                   untrusted=untrusted)
    assert scope == Scope(ref=ref, default_ref=MAIN, protected=protected, trusted=trusted)


def test_bad_hook_is_an_error():
    with pytest.raises(KataError) as err:
        decide(ref=MAIN, default_ref=MAIN, protection=TABLE, hook="update")
    assert err.value.reason == "trust.bad_hook"


def test_a_hook_run_never_guesses_the_default_branch(tmp_path, monkeypatch):
    """A pusher can create a branch called master or main; on the server only the bare
    repository's HEAD (which the hook passes) names the default branch."""
    monkeypatch.setenv("KATA_CONFIG", str(_config(tmp_path, "{}\n")))
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "trunk")
    git(repo, "commit", "-q", "--allow-empty", "-m", "x")
    git(repo, "branch", "master")  # the attacker's branch
    hook = scope_for(repo, branch="master", event="push", hook="post-receive")
    assert hook == Scope(ref="refs/heads/master", default_ref="", protected=False,
                         trusted=False)
    told = scope_for(repo, branch="master", event="push", hook="post-receive",
                     default_branch="trunk")
    assert (told.protected, told.trusted) == (False, False)
    told = scope_for(repo, branch="trunk", event="push", hook="post-receive",
                     default_branch="trunk")
    assert (told.default_ref, told.protected, told.trusted) == ("refs/heads/trunk", True, True)
    # a local run reads the repository's files (no git process): trusted either way
    local = scope_for(repo, branch="master")
    assert (local.default_ref, local.protected, local.trusted) == ("refs/heads/master", True,
                                                                   True)
    assert scope_for(tmp_path / "nogit", branch="") == Scope(ref="", default_ref="",
                                                             protected=False, trusted=True)


PIPELINE = """
pipeline: p
steps:
  - name: build
    image: busybox
    commands: [make]
  - name: deploy
    image: busybox
    secrets: [DEPLOY_TOKEN, OTHER]
    commands: [deploy]
  - name: it
    image: busybox
    network: host
    services:
      - name: db
        image: postgres
        secrets: [DB_PASSWORD]
    commands: [test]
  - name: probe
    image: busybox
    network: host
    commands: [nc 127.0.0.1 80]
"""


def test_untrusted_runs_get_no_secret_and_no_host_network():
    pipeline = load_text(PIPELINE)
    steps = {s.name: s for s in pipeline.steps}
    ref = "refs/heads/feature/x"
    untrusted = Scope(ref=ref, default_ref=MAIN, protected=False, trusted=False)
    trusted = Scope(ref=MAIN, default_ref=MAIN, protected=True, trusted=True)
    assert skips(pipeline.steps, untrusted) == {
        "deploy": f"secret DEPLOY_TOKEN and 1 more withheld: untrusted run of {ref}",
        "it": f"secret DB_PASSWORD (service db) withheld: untrusted run of {ref}",
    }
    assert skips(pipeline.steps, trusted) == {}
    assert refused(steps["probe"], untrusted) == (
        f"step probe: network: host refused: untrusted run of {ref}")
    assert refused(steps["build"], untrusted) is None
    assert refused(steps["probe"], trusted) is None
    assert withheld(steps["build"], untrusted) is None
    local = Scope(ref="", trusted=False, protected=False)
    assert withheld(steps["deploy"], local).endswith("untrusted run of this working copy")


@pytest.mark.parametrize("data, reason, where", [
    (b"protected: [1\n", "config.bad_yaml", (2, 1)),
    (b"offline: \xff\n", "config.bad_yaml", (1, 10)),
    (b"offline: true\n\toffline: false\n", "config.bad_yaml", (2, 1)),
])
def test_a_host_config_that_is_no_yaml_names_file_line_column(tmp_path, data, reason, where):
    """Found by a review: a YAML error in /etc/kata/config.yaml printed pyyaml's four
    lines with `in "<unicode string>"`, and a byte that is no UTF-8 was a traceback."""
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(data)
    with pytest.raises(KataError) as info:
        load_host_config(cfg)
    assert info.value.reason == reason
    assert info.value.message.startswith(f"{cfg}:{where[0]}:{where[1]}: ")
    assert "<unicode string>" not in info.value.message and "\n" not in info.value.message
