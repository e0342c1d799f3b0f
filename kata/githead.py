"""The cheap path to a run's commit and branch: read from ``.git`` without forking git.

Standard library only (``kata.gitctx`` holds the full git context; the cached path,
``kata.realise.noop``, reads the head before anything heavy is imported).
"""

from __future__ import annotations

from pathlib import Path


def _dirs(root: Path) -> tuple[Path, Path] | None:
    """(git dir, common dir holding the refs) of the work tree holding ``root``, found by
    reading ``.git`` (a directory, or a file ``gitdir: <path>`` in a linked worktree or a
    submodule); None outside a repository. OSError/IndexError on an unusual layout."""
    for top in (root, *root.parents):
        dotgit = top / ".git"
        if dotgit.is_file():  # a worktree or submodule: "gitdir: <path>"
            gitdir = Path(dotgit.read_text().split(":", 1)[1].strip())
            gitdir = gitdir if gitdir.is_absolute() else top / gitdir
            common = gitdir / "commondir"
            return gitdir, ((gitdir / common.read_text().strip()) if common.exists() else gitdir)
        if dotgit.is_dir():
            return dotgit, dotgit
    return None


def _read_ref(refs: Path, ref: str) -> str | None:
    """The commit a ref names, from its loose file or packed-refs; None when absent."""
    loose = refs / ref
    if loose.is_file():
        return loose.read_text().strip()
    packed = refs / "packed-refs"
    if packed.exists():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    return None


def head(root: Path) -> tuple[str, str]:
    """(commit, branch) of the repository holding ``root``, read from .git without forking
    git (a cached run should not pay for two processes); git itself when the layout is
    unusual; ("", "") outside a repository."""
    try:
        found = _dirs(root)
        if found is None:
            return "", ""
        gitdir, refs = found
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head, "HEAD"
        ref = head[5:]
        branch = ref.removeprefix("refs/heads/")
        return _read_ref(refs, ref) or "", branch  # "": a branch with no commit yet
    except (OSError, IndexError, UnicodeDecodeError):
        from kata.gitctx import _git

        return _git(root, "rev-parse", "HEAD"), _git(root, "rev-parse", "--abbrev-ref", "HEAD")
