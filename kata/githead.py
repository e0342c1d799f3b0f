"""The cheap path to a run's commit and branch: read from ``.git`` without forking git.

Standard library only, and of it only ``os`` (``kata.gitctx`` holds the full git context;
the cached path, ``kata.realise.noop``, reads the head before anything heavy is imported:
``pathlib`` with ``re`` and ``urllib`` is ~20 M instructions a clean interpreter would
otherwise spend for it).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from os import PathLike


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _dirs(root: "str | PathLike[str]") -> tuple[str, str] | None:
    """(git dir, common dir holding the refs) of the work tree holding ``root``, found by
    reading ``.git`` (a directory, or a file ``gitdir: <path>`` in a linked worktree or a
    submodule); None outside a repository. OSError/IndexError on an unusual layout."""
    top = os.fspath(root)
    while True:
        dotgit = os.path.join(top, ".git")
        if os.path.isfile(dotgit):  # a worktree or submodule: "gitdir: <path>"
            gitdir = os.path.join(top, _read(dotgit).split(":", 1)[1].strip())
            common = os.path.join(gitdir, "commondir")
            return gitdir, (os.path.join(gitdir, _read(common).strip())
                            if os.path.exists(common) else gitdir)
        if os.path.isdir(dotgit):
            return dotgit, dotgit
        parent = os.path.dirname(top)
        if parent == top:
            return None
        top = parent


def _read_ref(refs: "str | PathLike[str]", ref: str) -> str | None:
    """The commit a ref names, from its loose file or packed-refs; None when absent."""
    loose = os.path.join(refs, ref)
    if os.path.isfile(loose):
        return _read(loose).strip()
    packed = os.path.join(refs, "packed-refs")
    if os.path.exists(packed):
        for line in _read(packed).splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    return None


def head(root: "str | PathLike[str]") -> tuple[str, str]:
    """(commit, branch) of the repository holding ``root``, read from .git without forking
    git (a cached run should not pay for two processes); git itself when the layout is
    unusual; ("", "") outside a repository."""
    try:
        found = _dirs(root)
        if found is None:
            return "", ""
        gitdir, refs = found
        head = _read(os.path.join(gitdir, "HEAD")).strip()
        if not head.startswith("ref: "):
            return head, "HEAD"
        ref = head[5:]
        branch = ref.removeprefix("refs/heads/")
        return _read_ref(refs, ref) or "", branch  # "": a branch with no commit yet
    except (OSError, IndexError, UnicodeDecodeError):
        from pathlib import Path

        from kata.gitctx import _git

        return _git(Path(root), "rev-parse", "HEAD"), _git(Path(root), "rev-parse",
                                                           "--abbrev-ref", "HEAD")
