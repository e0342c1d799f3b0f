"""Which paths of a finished step's working directory its ``artifacts:`` name.

An entry without glob characters (``*``, ``?``, ``[``) is a literal path relative to the
working directory (``dist/``, ``build/app``) and must exist. An entry with them is a path
glob in the gitignore dialect (``kata.globs``), always anchored at the working directory:
``dist/*.whl`` takes the wheels in ``dist``, ``**/*.log`` every log file below it. A
directory the glob matches is taken whole. A glob that matches nothing is reported like a
missing literal path: the step declared an artifact it did not produce.

The walk never follows a symbolic link (the working directory is the step's, i.e. hostile:
``dist -> /`` must not make the host's root an artifact), and it starts at the glob's literal
prefix so ``dist/*.whl`` reads only ``dist``.

Symlinks are data: a link is stored as the link it is (a virtualenv's
``bin/python -> /usr/bin/python3`` stays that link, never the host's file). One exception,
for the path an entry names itself (a literal entry, or a glob's match): when it is a link
that leads, inside the working directory, to a directory, the artifact carries that
directory's content under the link's name (``result -> build/out``, as Nix's ``./result``).
That resolution (``dir_links``) reads links with ``readlink`` only and never leaves the
working directory: an absolute target counts only under the step's ``workdir`` (where the
container saw it), anything else is not followed and the link is stored as a link.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from pathlib import Path
from typing import Sequence

from kata.globs import path_spec

_GLOB_CHARS = frozenset("*?[")


def is_glob(entry: str) -> bool:
    """Whether an ``artifacts:`` entry is a glob rather than a literal path."""
    return any(c in _GLOB_CHARS for c in entry)


def select(workdir: Path, entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """(paths to store, entries that matched nothing): ``paths`` are workdir-relative,
    ``/``-separated, sorted and without duplicates (a glob's match inside a literal
    directory entry is kept once, by the directory)."""
    chosen: set[str] = set()
    missing: list[str] = []
    for entry in entries:
        if not is_glob(entry):
            path = entry.rstrip("/")
            if os.path.lexists(workdir / path):
                chosen.add(path)
            else:
                missing.append(entry)
            continue
        found = _expand(workdir, entry)
        if not found:
            missing.append(entry)
        chosen.update(found)
    # a path below another chosen directory is already in it
    paths = sorted(chosen)
    kept: list[str] = []
    for p in paths:
        if not any(p.startswith(k + "/") for k in kept):
            kept.append(p)
    return kept, missing


def missing_message(missing: Sequence[str], workdir: Path | None = None) -> str:
    """The ``artifact.missing`` text for the entries ``select`` found nothing for; with
    ``workdir``, the workspace paths (at most 3) whose name matches an entry's last part
    (``build/*.whl`` missing, ``dist/x.whl`` written: the tool wrote elsewhere)."""
    if len(missing) == 1:
        hint = " (no path matches it)" if is_glob(missing[0]) else ""
        text = f"declared artifact {missing[0]} was not produced{hint}"
    else:
        shown = ", ".join(f"{e} (no path matches it)" if is_glob(e) else e for e in missing)
        text = f"declared artifacts {shown} were not produced"
    found = _same_names(workdir, missing) if workdir is not None else []
    if found:
        text += f"; the workspace has {', '.join(found)}: fix the path in artifacts:"
    return text


def _same_names(workdir: Path, missing: Sequence[str], limit: int = 3,
                budget: int = 20000) -> list[str]:
    """Workspace paths (``/``-separated, sorted, at most ``limit``) whose file or directory
    name matches the last part of a ``missing`` entry; a walk of at most ``budget``
    entries that follows no symbolic link."""
    import fnmatch

    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in missing]
    names = [n for n in names if n and n not in ("*", "**")]
    found: list[str] = []
    seen = 0
    for top, dirs, files in os.walk(workdir):  # os.walk follows no link by default
        dirs.sort()
        for name in sorted(dirs + files):
            seen += 1
            if any(fnmatch.fnmatchcase(name, n) for n in names):
                found.append(os.path.relpath(os.path.join(top, name), workdir).replace(os.sep, "/"))
        if seen > budget or len(found) >= limit:
            break
    return sorted(found)[:limit]


def _expand(workdir: Path, pattern: str) -> list[str]:
    spec = path_spec(("/" + pattern.lstrip("/"),))
    segments = pattern.strip("/").split("/")
    prefix: list[str] = []
    for seg in segments[:-1]:
        if is_glob(seg):
            break
        prefix.append(seg)
    start = workdir.joinpath(*prefix)
    # every literal component must be a real directory, not a link out of the workspace
    probe = workdir
    for seg in prefix:
        probe = probe / seg
        try:
            if not stat.S_ISDIR(os.lstat(probe).st_mode):
                return []
        except OSError:
            return []
    out: list[str] = []
    base = "/".join(prefix)
    stack = [base]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(start if rel == base else workdir / rel) as it:
                children = list(it)
        except OSError:
            continue
        for child in children:
            path = f"{rel}/{child.name}" if rel else child.name
            is_dir = child.is_dir(follow_symlinks=False)
            if spec.match_file(path):
                out.append(path)
            elif is_dir:
                stack.append(path)
    return out


MAX_LINK_HOPS = 40  # as the kernel's own limit (ELOOP)


def dir_links(workdir: Path, paths: Sequence[str], mount: str) -> dict[str, str]:
    """{path: directory} for each of ``paths`` (workdir-relative) that is a symlink leading
    to a directory inside ``workdir``: the directory's workdir-relative path, with no link
    on it. ``mount`` is where the container saw ``workdir`` (the step's ``workdir:``), so an
    absolute target below it counts. Links are read, never followed by the kernel."""
    out = {}
    for path in paths:
        try:
            if not stat.S_ISLNK(os.lstat(workdir / path).st_mode):
                continue
        except OSError:
            continue
        real = _resolve_in(workdir, path, mount)
        if real is not None:
            out[path] = real
    return out


def _resolve_in(workdir: Path, rel: str, mount: str) -> str | None:
    """The real directory ``rel`` leads to inside ``workdir`` (never ``workdir`` itself),
    or None: dangling, a loop, not a directory, or out of the working directory."""
    done: list[str] = []  # real directories only, so ".." is lexical
    todo = deque(rel.split("/"))
    hops = 0
    root = mount.rstrip("/") + "/"
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        here = workdir.joinpath(*done, part)
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                if not (target + "/").startswith(root):
                    return None
                done, target = [], target[len(root):]
            todo.extendleft(reversed(target.split("/")))
        elif stat.S_ISDIR(mode):
            done.append(part)
        else:
            return None
    return "/".join(done) or None
