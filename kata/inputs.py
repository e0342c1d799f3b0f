"""The files a step sees, and their digests.

The repository's file list is `git ls-files -co --exclude-standard` in a git
work tree, else every file below the root; `.kataignore` (gitignore syntax)
removes files in both cases. A step's `inputs:` globs narrow it further.

Hashing goes through a stat cache (absolute path -> size, mtime_ns, inode,
digest): a file whose lstat matches is not read again, so a warm run over an
unchanged tree costs one lstat per file. Files modified within the last
`RACY_NS` are hashed but not cached (git's "racily clean" problem: a second
write within the timestamp granularity would otherwise go unseen).
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

import msgpack

from kata.errors import KataError

KATAIGNORE = ".kataignore"
RACY_NS = 2_000_000_000
INPUTS_FORMAT = "kata-inputs/1"


class StatCache(Protocol):
    def get_many(self, paths: Sequence[str]) -> Mapping[str, tuple[int, int, int, str]]: ...
    def put_many(self, entries: Mapping[str, tuple[int, int, int, str]]) -> None: ...


class MemoryStatCache:
    """The in-memory StatCache (the store's LMDB index is the persistent one)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int, int, str]] = {}

    def get_many(self, paths: Sequence[str]) -> Mapping[str, tuple[int, int, int, str]]:
        e = self.entries
        return {p: e[p] for p in paths if p in e}

    def put_many(self, entries: Mapping[str, tuple[int, int, int, str]]) -> None:
        self.entries.update(entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFile:
    path: str    # relative to the repository root, '/'-separated
    digest: str  # "sha256:<hex>" of the content (of the link target text for a symlink)
    size: int
    mode: int    # 0o644, 0o755 or 0o120000 (symlink)


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSet:
    files: tuple[InputFile, ...]
    digest: str

    @classmethod
    def of(cls, files: Iterable[InputFile], presorted: bool = False) -> "InputSet":
        files = tuple(files) if presorted else tuple(sorted(files, key=lambda f: f.path))
        body = msgpack.packb([INPUTS_FORMAT, [[f.path, f.digest, f.mode] for f in files]],
                             use_bin_type=True)
        return cls(files=files, digest="sha256:" + hashlib.sha256(body).hexdigest())


EMPTY = InputSet.of(())


@functools.lru_cache(maxsize=256)
def _spec(patterns: tuple[str, ...]):
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def check_globs(patterns: Sequence[str]) -> None:
    """Raise ValueError for a pattern pathspec cannot compile."""
    try:
        _spec(tuple(patterns))
    except Exception as err:  # pathspec raises a few different types
        raise ValueError(str(err)) from None


def match(patterns: Sequence[str], paths: Iterable[str]) -> list[str]:
    spec = _spec(tuple(patterns))
    return [p for p in paths if spec.match_file(p)]


def _ignore_spec(root: str):
    try:
        with open(os.path.join(root, KATAIGNORE), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise KataError("inputs.kataignore", f"cannot read {KATAIGNORE}: {err}", obj=root) from None
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except Exception as err:
        raise KataError("inputs.kataignore", f"bad pattern in {KATAIGNORE}: {err}", obj=root) from None


def _git_files(root: str) -> list[str] | None:
    try:
        proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    except (FileNotFoundError, PermissionError):
        return None
    if proc.returncode != 0:
        return None
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _walk(root: str, ignore, stats: dict[str, os.stat_result]) -> list[str]:
    out: list[str] = []
    append = out.append
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        try:
            it = os.scandir(os.path.join(root, rel_dir) if rel_dir else root)
        except OSError:
            continue
        with it:
            for e in it:
                rel = prefix + e.name
                if e.is_dir(follow_symlinks=False):
                    if e.name == ".git" or (ignore is not None and ignore.match_file(rel + "/")):
                        continue
                    stack.append(rel)
                    continue
                if ignore is not None and ignore.match_file(rel):
                    continue
                append(rel)
                try:
                    stats[rel] = e.stat(follow_symlinks=False)
                except OSError:
                    pass
    return out


class Snapshot:
    """The repository's file list at one moment, hashed lazily and only once per file."""

    def __init__(self, root: str | os.PathLike, stat_cache: StatCache | None = None) -> None:
        self.root = os.path.abspath(root)
        self.stat_cache = stat_cache if stat_cache is not None else MemoryStatCache()
        self._stats: dict[str, os.stat_result] = {}
        ignore = _ignore_spec(self.root)
        files = _git_files(self.root)
        if files is None:
            files = _walk(self.root, ignore, self._stats)
        elif ignore is not None:
            files = [p for p in files if not ignore.match_file(p)]
        files.sort()
        self.paths: tuple[str, ...] = tuple(
            p for i, p in enumerate(files) if i == 0 or p != files[i - 1])
        self._hashed: dict[str, InputFile | None] = {}
        self._sets: dict[tuple[str, ...], InputSet] = {}

    def files(self, paths: Sequence[str]) -> list[InputFile]:
        """The hashed files among `paths` (sorted), skipping vanished ones."""
        hashed = self._hashed
        todo = [p for p in paths if p not in hashed] if hashed else list(paths)
        if todo:
            st = self._stats
            got = hash_files(self.root, todo, self.stat_cache,
                             [st.get(p) for p in todo] if st else None)
            if len(todo) == len(paths):
                hashed.update(zip(todo, got))
                return [f for f in got if f is not None]
            hashed.update(zip(todo, got))
        return [f for f in map(hashed.__getitem__, paths) if f is not None]

    def input_set(self, patterns: Sequence[str] = ()) -> InputSet:
        """The files `patterns` (gitignore-style) select; () selects every file."""
        key = tuple(patterns)
        got = self._sets.get(key)
        if got is None:
            chosen = match(key, self.paths) if key else self.paths
            got = self._sets[key] = InputSet.of(self.files(chosen), presorted=True)
        return got


def hash_files(root: str, paths: Sequence[str], cache: StatCache,
               stats: Sequence[os.stat_result | None] | None = None) -> list[InputFile | None]:
    """Digest every path (relative to root), in order; None for one that vanished or is
    not a regular file or symlink (a submodule, a socket). `stats`: lstat results already
    taken (aligned with `paths`), so a warm run costs one lstat per file."""
    prefix = root + os.sep
    absolute = [prefix + p for p in paths]
    known = cache.get_many(absolute).get
    fresh: dict[str, tuple[int, int, int, str]] = {}
    racy = time.time_ns() - RACY_NS
    out: list[InputFile | None] = []
    append = out.append
    lstat, S_ISREG, S_ISLNK = os.lstat, stat.S_ISREG, stat.S_ISLNK
    for rel, a, st in zip(paths, absolute, stats or [None] * len(paths)):
        if st is None:
            try:
                st = lstat(a)
            except OSError:
                append(None)
                continue
        m = st.st_mode
        c = known(a)
        if c is not None and c[1] == st.st_mtime_ns and c[0] == st.st_size and c[2] == st.st_ino \
                and S_ISREG(m):
            append(InputFile(path=rel, digest=c[3], size=c[0], mode=0o755 if m & 0o111 else 0o644))
        elif S_ISREG(m):
            try:
                with open(a, "rb") as f:
                    digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as err:
                raise KataError("inputs.unreadable", f"cannot read input {rel}: {err.strerror}",
                                obj=rel) from None
            if st.st_mtime_ns < racy:
                fresh[a] = (st.st_size, st.st_mtime_ns, st.st_ino, digest)
            append(InputFile(path=rel, digest=digest, size=st.st_size,
                             mode=0o755 if m & 0o111 else 0o644))
        elif S_ISLNK(m):
            target = os.fsencode(os.readlink(a))
            append(InputFile(path=rel, digest="sha256:" + hashlib.sha256(target).hexdigest(),
                             size=len(target), mode=0o120000))
        else:
            append(None)
    if fresh:
        cache.put_many(fresh)
    return out
