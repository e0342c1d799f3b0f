"""The git context (kata/gitctx.py), against real repositories: a bare remote, clones, pushes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.gitctx import GitContext, default_branch, read_context
from support.git import git

if shutil.which("git") is None:  # a missing system dependency fails loudly, never skips
    raise RuntimeError("git is required by tests/test_gitctx.py")


@pytest.fixture(autouse=True)
def _git_identity(tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Kata Test\n\temail = kata@example.invalid\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def commit(repo: Path, files: dict[str, str | None], message: str = "change") -> str:
    for name, content in files.items():
        path = repo / name
        if content is None:
            git(repo, "rm", "-q", name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path) -> Path:
    """A bare remote with main: README.md, src/app.py, docs/guide.md."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    commit(seed, {"README.md": "hi\n", "src/app.py": "print(1)\n", "docs/guide.md": "guide\n"}, "initial")
    git(seed, "push", "-q", "origin", "main")
    return bare


def clone(remote: Path, dest: Path) -> Path:
    git(dest.parent, "clone", "-q", str(remote), str(dest))
    return dest


# ----------------------------------------------------------------------------- branch, commit, default


def test_fresh_clone_is_on_main_with_nothing_changed(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    ctx = read_context(work)
    assert isinstance(ctx, GitContext)
    assert ctx.event == "push"
    assert ctx.branch == "main"
    assert ctx.commit == git(work, "rev-parse", "HEAD")
    assert ctx.default_branch == "main"
    assert ctx.changed == frozenset()
    assert ctx.tag is None and ctx.tags == ()
    assert ctx.base == ctx.commit and ctx.base_ref == "upstream origin/main"
    assert default_branch(work) == ("main", "refs/remotes/origin/main")


def test_unpushed_commits_are_changed_against_the_upstream_until_pushed(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    commit(work, {"src/app.py": "print(2)\n"})
    commit(work, {"src/lib/util.py": "x = 1\n", "docs/guide.md": None})
    ctx = read_context(work)
    assert ctx.changed == {"src/app.py", "src/lib/util.py", "docs/guide.md"}  # a deletion is a change
    assert ctx.base_ref == "upstream origin/main"
    git(work, "push", "-q", "origin", "main")
    assert read_context(work).changed == frozenset()


def test_new_branch_without_upstream_compares_with_where_it_forked(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    git(work, "switch", "-q", "-c", "feature/login")
    commit(work, {"src/login.py": "ok\n"})
    commit(work, {"README.md": "hello\n"})
    # main moves on in another clone after the fork; that must not count as changed here
    other = clone(remote, tmp_path / "other")
    commit(other, {"docs/other.md": "x\n"})
    git(other, "push", "-q", "origin", "main")
    git(work, "fetch", "-q", "origin")
    ctx = read_context(work)
    assert ctx.branch == "feature/login"
    assert ctx.changed == {"src/login.py", "README.md"}
    assert ctx.base_ref == "merge-base with origin/main"
    assert ctx.base == git(work, "merge-base", "HEAD", "origin/main")
    # once pushed with an upstream, it compares with the upstream: nothing new
    git(work, "push", "-q", "-u", "origin", "feature/login")
    ctx = read_context(work)
    assert ctx.changed == frozenset() and ctx.base_ref == "upstream origin/feature/login"


def test_explicit_base_uses_the_merge_base(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    git(work, "switch", "-q", "-c", "topic")
    commit(work, {"src/topic.py": "t\n"})
    git(work, "push", "-q", "-u", "origin", "topic")
    other = clone(remote, tmp_path / "other")
    commit(other, {"docs/news.md": "n\n"})
    git(other, "push", "-q", "origin", "main")
    git(work, "fetch", "-q")
    ctx = read_context(work, event="pull_request", action="opened", base="origin/main")
    assert ctx.event == "pull_request" and ctx.action == "opened"
    assert ctx.changed == {"src/topic.py"}
    assert ctx.base_ref == "--base origin/main"
    # a base that is a plain ancestor commit
    first = git(work, "rev-list", "--max-parents=0", "HEAD")
    assert read_context(work, base=first).changed == {"src/topic.py"}


def test_bad_base_and_bad_rev(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    with pytest.raises(KataError) as e:
        read_context(work, base="no-such-ref")
    assert e.value.reason == "git.bad_ref"
    with pytest.raises(KataError) as e:
        read_context(work, rev="deadbeef" * 5, worktree=False)
    assert e.value.reason == "git.bad_ref"
    with pytest.raises(KataError) as e:
        read_context(work, rev="--output=/tmp/x", worktree=False)
    assert e.value.reason == "git.bad_ref"


def test_renames_count_both_paths(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    git(work, "mv", "src/app.py", "src/main.py")
    git(work, "commit", "-q", "-m", "rename")
    assert read_context(work).changed == {"src/app.py", "src/main.py"}


def test_default_branch_follows_origin_head(tmp_path):
    bare = tmp_path / "trunk.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "trunk", str(bare))
    seed = clone(bare, tmp_path / "seed")
    git(seed, "switch", "-q", "-c", "trunk")
    commit(seed, {"a.txt": "a\n"})
    git(seed, "push", "-q", "origin", "trunk")
    work = clone(bare, tmp_path / "work")
    git(work, "switch", "-q", "-c", "wip")
    commit(work, {"b.txt": "b\n"})
    ctx = read_context(work)
    assert ctx.default_branch == "trunk"
    assert ctx.changed == {"b.txt"}
    assert ctx.base_ref == "merge-base with origin/trunk"


# ----------------------------------------------------------------------------- tags


def test_tags_at_head_lightweight_and_annotated(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    assert read_context(work).tags == ()
    git(work, "tag", "v1.0.0")
    git(work, "tag", "-a", "-m", "release", "release-2026")
    git(work, "push", "-q", "origin", "--tags")
    ctx = read_context(work, event="tag")
    assert set(ctx.tags) == {"v1.0.0", "release-2026"}
    assert ctx.tag in ctx.tags
    # an explicit --tag wins
    assert read_context(work, event="tag", tag="v9").tag == "v9"
    # a tag on another commit is not at HEAD
    commit(work, {"x.txt": "x\n"})
    assert read_context(work).tags == ()


def test_tag_event_without_a_tag_is_an_error(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    with pytest.raises(KataError) as e:
        read_context(work, event="tag")
    assert e.value.reason == "git.no_tag"


def test_tag_pushed_from_one_clone_is_seen_in_another(remote, tmp_path):
    a = clone(remote, tmp_path / "a")
    git(a, "tag", "v2")
    git(a, "push", "-q", "origin", "v2")
    b = clone(remote, tmp_path / "b")
    assert read_context(b, event="tag").tag == "v2"


# ----------------------------------------------------------------------------- work tree


def test_uncommitted_and_untracked_files_count_in_a_local_run(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    (work / ".gitignore").write_text("build/\n")
    (work / "build").mkdir()
    (work / "build" / "out.o").write_text("o")
    (work / "docs" / "guide.md").write_text("edited\n")
    (work / "notes.txt").write_text("new\n")
    (work / "staged.txt").write_text("s\n")
    git(work, "add", "staged.txt")
    ctx = read_context(work)
    assert ctx.changed == {".gitignore", "docs/guide.md", "notes.txt", "staged.txt"}
    assert read_context(work, worktree=False).changed == frozenset()


def test_subdirectory_paths_are_repository_relative(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    commit(work, {"src/deep/x y/ünï.txt": "u\n"})
    (work / "src" / "new.txt").write_text("n\n")
    ctx = read_context(work / "src")
    assert ctx.changed == {"src/deep/x y/ünï.txt", "src/new.txt"}


# ----------------------------------------------------------------------------- no remote, detached, bare, empty


def test_repository_without_remote_compares_with_the_parent(tmp_path):
    repo = tmp_path / "solo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    commit(repo, {"a.txt": "a\n", "b/c.txt": "c\n"})
    ctx = read_context(repo)
    assert ctx.base is None and ctx.base_ref == "empty tree"
    assert ctx.changed == {"a.txt", "b/c.txt"}  # a root commit: everything is new
    assert ctx.default_branch == "main"
    commit(repo, {"a.txt": "a2\n"})
    ctx = read_context(repo)
    assert ctx.changed == {"a.txt"} and ctx.base_ref == "parent"
    # a local branch off main compares with main, not with nothing
    git(repo, "switch", "-q", "-c", "dev")
    commit(repo, {"d.txt": "d\n"})
    commit(repo, {"e.txt": "e\n"})
    ctx = read_context(repo)
    assert ctx.changed == {"d.txt", "e.txt"} and ctx.base_ref == "merge-base with main"


def test_detached_head_has_no_branch_unless_given(remote, tmp_path):
    work = clone(remote, tmp_path / "work")
    sha = commit(work, {"z.txt": "z\n"})
    git(work, "checkout", "-q", "--detach", sha)
    ctx = read_context(work)
    assert ctx.branch is None and ctx.commit == sha
    assert ctx.changed == {"z.txt"}  # against origin/main's merge-base
    assert read_context(work, branch="release/1.x").branch == "release/1.x"


def test_bare_repository_with_pushed_refs(remote, tmp_path):
    # what a post-receive hook sees: old and new commit of each pushed ref
    work = clone(remote, tmp_path / "work")
    old = git(work, "rev-parse", "HEAD")
    new = commit(work, {"src/app.py": "print(3)\n"})
    git(work, "push", "-q", "origin", "main")
    ctx = read_context(remote, rev=new, branch="main", base=old)
    assert ctx.commit == new and ctx.branch == "main"
    assert ctx.changed == {"src/app.py"}
    assert ctx.default_branch == "main"
    # a new branch (old = zeros): compared with the bare repository's HEAD, where it forked
    git(work, "switch", "-q", "-c", "feature")
    feat = commit(work, {"feature.txt": "f\n"})
    git(work, "push", "-q", "origin", "feature")
    ctx = read_context(remote, rev=feat, branch="feature", base="0" * 40)
    assert ctx.changed == {"feature.txt"}
    assert ctx.base == new and ctx.base_ref == "merge-base with main"
    # an annotated tag pushed: the hook sees the tag object; the context has its commit
    git(work, "tag", "-a", "-m", "v3", "v3")
    git(work, "push", "-q", "origin", "v3")
    tag_object = git(remote, "rev-parse", "refs/tags/v3")
    assert tag_object != feat
    ctx = read_context(remote, rev=tag_object, event="tag", tag="v3")
    assert ctx.commit == feat and ctx.tag == "v3" and "v3" in ctx.tags
    with pytest.raises(KataError) as e:
        read_context(remote, rev=feat, worktree=True)
    assert e.value.reason == "git.no_worktree"


def test_repository_without_commits(tmp_path):
    repo = tmp_path / "empty"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / "new.txt").write_text("n\n")
    ctx = read_context(repo)
    assert ctx.commit is None and ctx.branch == "main"
    assert ctx.changed == {"new.txt"}
    assert ctx.default_branch is None


def test_not_a_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for where in (plain, tmp_path / "missing"):
        with pytest.raises(KataError) as e:
            read_context(where)
        assert e.value.reason == "git.not_a_repository"


def test_git_missing_fails_with_a_reason(tmp_path, monkeypatch):
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(KataError) as e:
        read_context(tmp_path)
    assert e.value.reason == "git.not_installed"


# ----------------------------------------------------------------------------- the value


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"event": "merge"}, "git.bad_event"), ({"event": "pull_request", "action": "reopened"}, "git.bad_action")],
)
def test_bad_event_or_action(remote, tmp_path, kwargs, reason):
    work = clone(remote, tmp_path / "work")
    with pytest.raises(KataError) as e:
        read_context(work, **kwargs)
    assert e.value.reason == reason
    with pytest.raises(KataError) as e:
        GitContext(**kwargs)
    assert e.value.reason == reason


def test_context_is_a_frozen_hashable_value():
    ctx = GitContext(event="push", branch="main", changed={"a", "b"}, tag="v1")
    assert ctx.changed == frozenset({"a", "b"}) and isinstance(ctx.changed, frozenset)
    assert ctx.tags == ("v1",)
    assert hash(ctx) == hash(GitContext(event="push", branch="main", changed=frozenset({"b", "a"}), tag="v1"))
    with pytest.raises(AttributeError):
        ctx.branch = "x"  # type: ignore[misc]
    assert GitContext(event="schedule").changed == frozenset()


def test_a_repository_git_refuses_for_its_owner_is_named_with_the_fix(tmp_path):
    """Not "not inside a git repository": a run then went on without its branch and commit."""
    from test_inputs import _someone_elses_repository

    repo = _someone_elses_repository(tmp_path)
    with pytest.raises(KataError) as err:
        read_context(repo)
    assert err.value.reason == "git.unsafe_repository"
    assert "git config --global --add safe.directory" in str(err.value)
