"""The git context a pipeline's triggers and conditions are evaluated against.

``read_context(repo, event=..., ...)`` asks ``git`` (a subprocess; no library) for the
branch, the tag(s) at the commit, the commit, the default branch and the paths that
changed, and returns a frozen ``GitContext``. The condition evaluator
(``kata.conditions``) consumes its fields; this module knows nothing of triggers.

What "changed" is compared against, first that applies:
1. ``base`` (``--base REF``): the merge-base of REF and the commit (what a pull request
   into REF changes, even when REF moved on since);
2. the branch's upstream (``@{upstream}``): the merge-base of the upstream and the commit,
   i.e. what a push would bring;
3. a branch with no upstream: the merge-base with the default branch (``origin/HEAD``,
   else ``origin/main``/``origin/master``, else a bare repository's HEAD, else a local
   ``main``/``master``) — a new branch is compared with where it forked, never with
   nothing;
4. otherwise (the default branch itself without upstream, a repository with one branch,
   or a merge-base equal to the commit in case 3): the commit's first parent, and for a
   root commit the empty tree (every file is new).
Renames count as both paths (``--no-renames``). With ``worktree=True`` (a local
``kata run`` on HEAD in a working repository) uncommitted changes and untracked,
non-ignored files count as changed too: a local run builds the working tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kata.conditions import EVENTS, PR_ACTIONS
from kata.errors import KataError
from kata.git import Git
from kata.githead import _dirs, _read_ref, head  # noqa: F401 - the cheap path lives there

_NULL_SHA = "0" * 40
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # sha1 of the empty tree


@dataclass(frozen=True, slots=True, kw_only=True)
class GitContext:
    """Everything triggers and ``only:``/``when:`` conditions may ask about a run.

    event: push | pull_request | tag | schedule.
    branch: the branch the commit is on (short name, e.g. ``release/1.2``), None when
        detached and not given.
    tag: the tag at the commit (the given one, else the newest of ``tags``), or None.
    action: the pull-request action (opened, synchronize, closed) or None.
    commit: the full commit id, None in a repository without commits.
    changed: repository-relative paths (``/``-separated) that changed against ``base``.
    tags: every tag pointing at the commit, newest first.
    default_branch: short name of the default branch (``main``), None if none is known.
    base: the commit ``changed`` was computed against (None: the empty tree).
    base_ref: how that base was chosen, for explanations (``--base origin/main``,
        ``upstream origin/feature``, ``merge-base with origin/main``, ``parent``,
        ``empty tree``).
    """

    event: str
    branch: str | None = None
    tag: str | None = None
    action: str | None = None
    commit: str | None = None
    changed: frozenset[str] = frozenset()
    tags: tuple[str, ...] = ()
    default_branch: str | None = None
    base: str | None = None
    base_ref: str = ""

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise KataError(
                "git.bad_event", f"unknown event {self.event!r} (expected one of {', '.join(EVENTS)})",
                obj=self.event,
            )
        if self.action is not None and self.action not in PR_ACTIONS:
            raise KataError(
                "git.bad_action",
                f"unknown pull request action {self.action!r} (expected one of {', '.join(PR_ACTIONS)})",
                obj=self.action,
            )
        if not isinstance(self.changed, frozenset):
            object.__setattr__(self, "changed", frozenset(self.changed))
        if self.tag is not None and self.tag not in self.tags:
            object.__setattr__(self, "tags", (self.tag, *self.tags))


def _open(repo: str | os.PathLike[str]) -> tuple[Git, bool]:
    """The git runner at the top of the repository (or the bare repository) and whether it is bare."""
    path = Path(repo)
    if not path.is_dir():
        raise KataError("git.not_a_repository", f"{repo} is not a directory", obj=str(repo))
    probe = Git.at(path)
    bare = probe.maybe("rev-parse", "--is-bare-repository")
    if bare is None:
        raise KataError("git.not_a_repository", f"{repo} is not inside a git repository", obj=str(repo))
    if bare == "true":
        return Git.at(probe.out("rev-parse", "--absolute-git-dir")), True
    top = probe.maybe("rev-parse", "--show-toplevel")
    if top is None:  # inside .git of a working repository
        raise KataError("git.not_a_repository", f"{repo} is not in a git work tree", obj=str(repo))
    return Git.at(top), False


def _commit(git: Git, rev: str) -> str | None:
    return git.maybe("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")


def _remotes(git: Git) -> list[str]:
    names = (git.maybe("remote") or "").split()
    return sorted(names, key=lambda r: (r != "origin", r))


def default_branch(repo: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(short name, ref to compare with) of the repository's default branch, or None.

    ``origin/HEAD`` first (what the clone recorded), then ``origin/main``/``origin/master``,
    then, in a bare repository, its HEAD; last a local ``main`` or ``master``.
    """
    git, bare = _open(repo)
    return _default_branch(git, bare)


def _default_branch(git: Git, bare: bool) -> tuple[str, str] | None:
    for remote in _remotes(git):
        head = git.maybe("symbolic-ref", "--quiet", f"refs/remotes/{remote}/HEAD")
        if head and _commit(git, head):
            return head.removeprefix(f"refs/remotes/{remote}/"), head
        for name in ("main", "master"):
            ref = f"refs/remotes/{remote}/{name}"
            if _commit(git, ref):
                return name, ref
    if bare:
        head = git.maybe("symbolic-ref", "--quiet", "HEAD")
        if head and head.startswith("refs/heads/") and _commit(git, head):
            return head.removeprefix("refs/heads/"), head
    for name in ("main", "master"):
        if _commit(git, f"refs/heads/{name}"):
            return name, f"refs/heads/{name}"
    return None


def _upstream(git: Git, branch: str) -> str | None:
    # for-each-ref, not `B@{upstream}`: a tag or a path named like the branch cannot confuse it
    ref = f"refs/heads/{branch}"
    listed = git.maybe("for-each-ref", "--format=%(refname)%00%(upstream)", ref) or ""
    for line in listed.splitlines():
        name, _, upstream = line.partition("\0")
        if name == ref and upstream and _commit(git, upstream):
            return upstream
    return None


def _short(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/remotes/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _merge_base(git: Git, a: str, b: str) -> str | None:
    return git.maybe("merge-base", a, b)


def read_context(
    repo: str | os.PathLike[str],
    *,
    event: str = "push",
    branch: str | None = None,
    tag: str | None = None,
    action: str | None = None,
    base: str | None = None,
    rev: str = "HEAD",
    worktree: bool | None = None,
) -> GitContext:
    """The git context of ``rev`` in ``repo`` (a working or a bare repository).

    branch/tag/action/base: ``--branch``/``--tag``/``--action``/``--base`` from the
    command line; given values win over what git says. A ``base`` of all zeros (a
    hook's "no old value") counts as not given.
    worktree: count uncommitted and untracked files as changed; default: True when
    ``rev`` is HEAD of a working repository.
    KataError: git.not_a_repository, git.bad_ref, git.no_tag, git.bad_event,
    git.bad_action, git.not_installed, git.failed.
    """
    if event not in EVENTS:
        raise KataError("git.bad_event", f"unknown event {event!r} (expected one of {', '.join(EVENTS)})", obj=event)
    git, bare = _open(repo)
    commit = _commit(git, rev)
    if commit is None and (rev != "HEAD" or git.maybe("rev-parse", "--verify", "--quiet", "HEAD")):
        raise KataError("git.bad_ref", f"{rev!r} is not a commit in {git.cwd}", obj=rev)
    if branch is None and rev == "HEAD":
        head = git.maybe("symbolic-ref", "--quiet", "HEAD")
        if head and head.startswith("refs/heads/"):
            branch = head.removeprefix("refs/heads/")
    tags: tuple[str, ...] = ()
    if commit is not None:
        listed = git.out("tag", "--points-at", commit, "--sort=-creatordate")
        tags = tuple(listed.splitlines()) if listed else ()
    if tag is None and tags:
        tag = tags[0]
    if event == "tag" and tag is None:
        raise KataError(
            "git.no_tag", f"event 'tag' but no tag points at {rev} (pass --tag T)", obj=commit or rev
        )
    found_default = _default_branch(git, bare)
    if worktree is None:
        worktree = rev == "HEAD" and not bare
    if worktree and (bare or rev != "HEAD"):
        raise KataError("git.no_worktree", "the working tree can only be compared at HEAD of a working repository")

    base_commit, base_ref = None, "empty tree"
    if commit is not None:
        base_commit, base_ref = _choose_base(git, commit, branch, base, found_default)
    changed: set[str] = set()
    if commit is not None:
        target = base_commit or _EMPTY_TREE
        if worktree:
            changed = set(git.paths("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", target, "--"))
            changed |= set(git.paths("ls-files", "-z", "--others", "--exclude-standard"))
        else:
            changed = set(git.paths("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", target, commit, "--"))
    elif worktree:  # no commit yet: everything in the work tree is new
        changed = set(git.paths("ls-files", "-z", "--cached", "--others", "--exclude-standard"))
    return GitContext(
        event=event,
        branch=branch,
        tag=tag,
        action=action,
        commit=commit,
        changed=frozenset(changed),
        tags=tags,
        default_branch=found_default[0] if found_default else None,
        base=base_commit,
        base_ref=base_ref,
    )


def _choose_base(
    git: Git, commit: str, branch: str | None, base: str | None, found_default: tuple[str, str] | None
) -> tuple[str | None, str]:
    if base is not None and base.strip("0") == "" and len(base) >= 40:
        base = None
    if base is not None:
        base_commit = _commit(git, base)
        if base_commit is None:
            raise KataError("git.bad_ref", f"--base {base!r} is not a commit", obj=base)
        merge_base = _merge_base(git, base_commit, commit)
        if merge_base is None:  # unrelated histories: compare with the tip itself
            return base_commit, f"--base {base}"
        return merge_base, f"--base {base}"
    if branch is not None:
        upstream = _upstream(git, branch)
        if upstream is not None:
            merge_base = _merge_base(git, upstream, commit)
            if merge_base is not None:
                return merge_base, f"upstream {_short(upstream)}"
    if found_default is not None:
        name, ref = found_default
        merge_base = _merge_base(git, ref, commit)
        if merge_base is not None and merge_base != commit:
            return merge_base, f"merge-base with {_short(ref)}"
    parent = _commit(git, f"{commit}^")
    if parent is not None:
        return parent, "parent"
    return None, "empty tree"


# -- the cheap path: commit and branch for a run record, without forking git --------------

def default_ref(root: Path) -> str:
    """The default branch's ref (``refs/heads/main``) of the work tree holding ``root``, read
    from .git without forking git, as ``default_branch`` decides it for a clone of
    ``origin``: ``origin/HEAD``, else ``origin/main``/``origin/master`` (any of them names
    the local branch ``refs/heads/<name>``), else a local ``main``/``master``. "" when none
    is known or outside a repository. Reads the repository's own files only: a CI server
    passes the default branch it knows instead (``kata.trust``)."""
    try:
        found = _dirs(root)
        if found is None:
            return ""
        refs = Path(found[1])
        symref = refs / "refs/remotes/origin/HEAD"
        if symref.is_file():
            target = symref.read_text().strip()
            if target.startswith("ref: refs/remotes/origin/"):
                return "refs/heads/" + target.removeprefix("ref: refs/remotes/origin/")
        for name in ("main", "master"):
            if _read_ref(refs, f"refs/remotes/origin/{name}"):
                return f"refs/heads/{name}"
        for name in ("main", "master"):
            if _read_ref(refs, f"refs/heads/{name}"):
                return f"refs/heads/{name}"
        return ""
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def _git(root: Path, *args: str) -> str:
    """Output of a query, "" when git is missing or the query fails (``head`` never fails)."""
    try:
        return Git.at(root).maybe(*args) or ""
    except KataError:
        return ""
