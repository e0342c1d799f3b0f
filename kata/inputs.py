"""The files a step sees, and their digests.

The repository's file list is `git ls-files -co --exclude-standard` in a git
work tree, else every file below the root; `.kataignore` (gitignore syntax)
removes files in both cases. A step's `inputs:` globs narrow it further.

Hashing goes through a stat cache (absolute path -> the file's stat key and
digest): a file whose lstat still shows the same key is not read again, so a
warm run over an unchanged tree costs one lstat per file. The key is what git's
index compares (``ie_match_stat``): device, inode, mode, size, mtime_ns and
ctime_ns. ctime is the field that makes it sound: the kernel sets it on every
write, chmod, chown or rename and no system call can set it back, so a file
rewritten with the same size and mtime (``cp -p``, ``touch -d``, an unpacked
reproducible archive, a checkout with fixed times) is read again.

On a filesystem that does not keep ctime (FUSE: sshfs reports mtime as ctime) the
stat cache is not trusted at all (`ctime_is_kept`): every input is read every run.

Racily clean (git's rule, ``racy-git.txt``): timestamps have a granularity (a
kernel tick on ext4, 1 s on some network filesystems, 2 s on FAT), so a write
in the same tick as the one a hash saw leaves every stat field unchanged. A
file is therefore put in the stat cache only when its ctime is older than
`RACY_NS` before the hashing began; a fresher one is hashed, used, and hashed
again next time. A file whose fstat changes while it is read is not cached
either.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import operator
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Protocol, Sequence

import msgpack

from kata.errors import KataError
from kata.git import Git
from kata.globs import check_path_globs as check_globs  # noqa: F401 - the loader's check
from kata.globs import PathGlobError, PathGlobs
from kata.globs import path_match as match

KATAIGNORE = ".kataignore"
# A cache key file names a cache (a lock file, go.sum): 64 MiB is far beyond any real one
# and keeps a hostile pattern from making every run hash gigabytes.
MAX_KEY_FILE = 64 << 20
RACY_NS = 2_000_000_000
INPUTS_FORMAT = "kata-inputs/1"

# What a file's lstat must still say for its cached digest to be trusted, in this order:
# (st_dev, st_ino, st_mode, st_size, st_mtime_ns, st_ctime_ns).
StatKey = tuple[int, int, int, int, int, int]
# One stat cache entry: the StatKey's six fields, then the digest "sha256:<hex>".
StatEntry = tuple[int, int, int, int, int, int, str]
# the StatKey of an os.stat_result (a C-level getter: the warm path calls it per file)
stat_key = operator.attrgetter("st_dev", "st_ino", "st_mode", "st_size", "st_mtime_ns",
                               "st_ctime_ns")


class StatCache(Protocol):
    """Absolute path -> StatEntry. The store's LMDB index implements it persistently
    (versioned encoding: entries of another format read as absent)."""

    def get_many(self, paths: Sequence[str]) -> Mapping[str, StatEntry]:
        """The entries known for `paths` (a superset is allowed); absent paths are left out."""
        ...

    def put_many(self, entries: Mapping[str, StatEntry]) -> None:
        """Record entries, replacing what each path had."""
        ...


class MemoryStatCache:
    """The in-memory StatCache (the store's LMDB index is the persistent one)."""

    def __init__(self) -> None:
        self.entries: dict[str, StatEntry] = {}

    def get_many(self, paths: Sequence[str]) -> Mapping[str, StatEntry]:
        # a read-only view of everything: a superset of what was asked, at no cost
        return MappingProxyType(self.entries)

    def put_many(self, entries: Mapping[str, StatEntry]) -> None:
        self.entries.update(entries)


class RehashStatCache:
    """A StatCache that trusts nothing it holds: every file is read again (`--no-cache`),
    and what is hashed is still recorded in `inner`, so the next cached run starts from
    entries just checked."""

    def __init__(self, inner: StatCache) -> None:
        self._inner = inner

    def get_many(self, paths: Sequence[str]) -> Mapping[str, StatEntry]:
        return {}

    def put_many(self, entries: Mapping[str, StatEntry]) -> None:
        self._inner.put_many(entries)



def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (blocking reads until EOF or the bound), so a
    caller tells "at most ``limit``" from "larger" by the length alone, without reading
    an endless file (``/dev/zero``, a pipe that never closes) further than that."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

@dataclass(frozen=True, slots=True, kw_only=True)
class InputFile:
    path: str    # relative to the repository root, '/'-separated
    digest: str  # "sha256:<hex>" of the content (of the link target text for a symlink)
    size: int
    mode: int    # 0o644, 0o755 (owner-executable, git's rule and the tree's) or 0o120000


# one file as hashed: (path, digest, size, mode); plain tuples on the hot path
Entry = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSet:
    """The files a step sees, sorted by path; the digest is sha256 over the msgpack of
    `["kata-inputs/1", [[path, digest, size, mode], ...]]`."""

    entries: tuple[Entry, ...]
    digest: str

    @property
    def files(self) -> tuple[InputFile, ...]:
        return tuple(InputFile(path=p, digest=d, size=s, mode=m) for p, d, s, m in self.entries)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(e[0] for e in self.entries)

    @classmethod
    def of(cls, files: Iterable[InputFile]) -> "InputSet":
        return cls.of_entries(sorted((f.path, f.digest, f.size, f.mode) for f in files))

    @classmethod
    def of_entries(cls, entries: Iterable[Entry]) -> "InputSet":
        """From entries already sorted by path."""
        entries = tuple(entries)
        # non-UTF-8 file names arrive surrogate-escaped (as os gives them): keep them exact
        body = msgpack.packb([INPUTS_FORMAT, entries], use_bin_type=True,
                             unicode_errors="surrogatepass")
        return cls(entries=entries, digest="sha256:" + hashlib.sha256(body).hexdigest())


EMPTY = InputSet.of(())


MAX_KATAIGNORE = 1 << 20


def _ignore_spec(root: str) -> PathGlobs | None:
    # a regular file of the repository only: a link (to /etc/shadow, whose lines a
    # pattern error would quote) or a device (/dev/zero) is refused, its size bounded
    try:
        fd = os.open(os.path.join(root, KATAIGNORE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise KataError("inputs.kataignore", f"{KATAIGNORE} is a symlink; it must be a "
                            "regular file", obj=root) from None
        raise KataError("inputs.kataignore", f"cannot read {KATAIGNORE}: {err}", obj=root) from None
    try:
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise KataError("inputs.kataignore", f"{KATAIGNORE} is not a regular file",
                                obj=root)
            os.set_blocking(f.fileno(), True)
            data = f.read(MAX_KATAIGNORE + 1)
        if len(data) > MAX_KATAIGNORE:
            raise KataError("inputs.kataignore", f"{KATAIGNORE} is larger than 1 MiB", obj=root)
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
            raise KataError("inputs.kataignore", f"{os.path.join(root, KATAIGNORE)}:{line}:{col}: "
                            "the file is not valid UTF-8", obj=root) from None
    except OSError as err:
        raise KataError("inputs.kataignore", f"cannot read {KATAIGNORE}: {err.strerror}",
                        obj=root) from None
    try:
        return PathGlobs(lines)
    except PathGlobError as err:
        raise KataError("inputs.kataignore", f"{os.path.join(root, KATAIGNORE)}:{err.index + 1}:1: "
                        f"bad pattern {err.text!r}: {err}", obj=root) from None


def _work_tree_top(root: str) -> str | None:
    """The directory at or above ``root`` holding ``.git`` (None: none)."""
    d = root
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


GITLINK = "160000"  # the index mode of a submodule's entry (git's S_IFGITLINK)


def _git_files(root: str) -> list[str] | None:
    top = _work_tree_top(root)
    if top is None:
        return None  # spare the subprocess
    try:
        git = Git.at(root)
        files = git.paths("ls-files", "-co", "--exclude-standard", "-z")
        if os.path.exists(os.path.join(top, ".gitmodules")):
            files = _with_submodules(root, git, files)
        return files
    except KataError as err:  # no git, or not a work tree after all: walk the directory instead
        if err.reason == "git.unsafe_repository":
            raise  # a work tree git will not read: walking it would take its ignored files
        return None


def _with_submodules(root: str, git: Git, files: list[str]) -> list[str]:
    """``files`` with each checked-out submodule's own listing in place of its entry.

    git lists a submodule as one entry (a gitlink: a directory, no file), so its files were
    neither seen by a step nor in its key, and a build needing them failed with a missing
    file. A submodule checked out as a real directory (not a link: its files must be the
    repository's) is listed as the repository is (``ls-files -co --exclude-standard``),
    recursively; one not checked out (no ``.git`` in it) has nothing to see."""
    staged = git.run("ls-files", "-z", "--stage").stdout.decode("utf-8", "surrogateescape")
    links = set()
    for record in staged.split("\0"):
        meta, _, path = record.partition("\t")
        if meta.startswith(GITLINK + " "):
            links.add(path)
    if not links:
        return files
    out = [p for p in files if p not in links]
    for sub in sorted(links):
        where = os.path.join(root, sub)
        try:
            st = os.lstat(where)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or not os.path.exists(os.path.join(where, ".git")):
            continue
        inner = Git.at(where)
        try:
            found = inner.paths("ls-files", "-co", "--exclude-standard", "-z")
            if os.path.exists(os.path.join(where, ".gitmodules")):
                found = _with_submodules(where, inner, found)
        except KataError as err:  # a broken checkout (its .git names no repository):
            if err.reason == "git.unsafe_repository":  # unseen, as before, not a walk
                raise
            continue
        out.extend(f"{sub}/{p}" for p in found)
    return out


def _walk(root: str, ignore: PathGlobs | None) -> list[str]:
    """The absolute path of every non-directory below root (not descending into .git),
    unsorted. Only names: the lstat comes later, in one C-level pass."""
    paths: list[str] = []
    add = paths.append
    cut = len(os.path.join(root, ""))
    stack = [root]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name == ".git" or (ignore is not None and
                                            ignore.match_file(e.path[cut:] + "/")):
                        continue
                    stack.append(e.path)
                elif ignore is None or not ignore.match_file(e.path[cut:]):
                    add(e.path)
    return paths


def _lstat_all(paths: Sequence[str]) -> list[os.stat_result | None]:
    """lstat of every path; None for one that vanished. `map` keeps the loop in C."""
    try:
        return list(map(os.lstat, paths))
    except OSError:
        pass
    out: list[os.stat_result | None] = []
    for p in paths:
        try:
            out.append(os.lstat(p))
        except OSError:
            out.append(None)
    return out


@contextmanager
def _gc_paused():
    """Tens of thousands of small allocations would trigger the cyclic GC over and over
    (none of them can form a cycle): pause it around the walk and the hashing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Snapshot:
    """The repository's file list at one moment, hashed lazily and only once per file."""

    def __init__(self, root: str | os.PathLike, stat_cache: StatCache | None = None,
                 exclude: Iterable[str] = ()) -> None:
        """`exclude`: paths (relative to root) never to list, e.g. the config file itself."""
        self.root = os.path.abspath(root)
        self.stat_cache = stat_cache if stat_cache is not None else MemoryStatCache()
        if not ctime_is_kept(self.root):  # no stat field tells a same-size, same-mtime edit
            self.stat_cache = RehashStatCache(self.stat_cache)
        ignore = _ignore_spec(self.root)
        files = _git_files(self.root)
        cut = len(os.path.join(self.root, ""))
        self._absolute: list[str] | None = None  # aligned with self.paths when known
        with _gc_paused():
            if files is None:
                absolute = _walk(self.root, ignore)  # unique already
                absolute.sort()  # the same order as the relative paths: one common prefix
                rel = list(map(operator.itemgetter(slice(cut, None)), absolute))
                if exclude:
                    skip = set(exclude)
                    keep = [i for i, p in enumerate(rel) if p not in skip]
                    rel, absolute = [rel[i] for i in keep], [absolute[i] for i in keep]
                self.paths: tuple[str, ...] = tuple(rel)
                self._absolute = absolute
            else:
                if ignore is not None:
                    files = ignore.select(files, invert=True)
                files = set(files)
                files.difference_update(exclude)
                self.paths = tuple(sorted(files))
        self._hashed: dict[str, Entry | None] = {}
        self._everything: list[Entry | None] | None = None
        self._sets: dict[tuple[str, ...] | None, InputSet] = {}

    def files(self, paths: Sequence[str]) -> list[InputFile]:
        return [InputFile(path=p, digest=d, size=s, mode=m) for p, d, s, m in self.entries(paths)]

    def entries(self, paths: Sequence[str]) -> list[Entry]:
        """The hashed entries among `paths` (in their order), skipping vanished files."""
        hashed = self._hashed
        with _gc_paused():
            if paths is self.paths and not hashed and self._everything is None:
                # the common case, every file once: keep the results by position and
                # build the by-path dict only if a narrower set is asked for later
                got = self._everything = hash_files(self.root, paths, self.stat_cache,
                                                    self._absolute)
                return [f for f in got if f is not None]
            if self._everything is not None and not hashed:
                hashed.update(zip(self.paths, self._everything))
            todo = [p for p in paths if p not in hashed]
            if todo:
                hashed.update(zip(todo, hash_files(self.root, todo, self.stat_cache)))
            return [f for f in map(hashed.__getitem__, paths) if f is not None]

    def key_set(self, patterns: Sequence[str], *, what: str,
                max_size: int = MAX_KEY_FILE) -> InputSet:
        """``input_set(patterns)`` for ``cache.key_files``: files of the repository listing
        only (symlinks hashed as links, never followed; devices and FIFOs are not listed
        files), each at most ``max_size`` bytes, checked before anything is read.

        Raises KataError ``inputs.key_file_too_large`` naming ``what`` and the file.
        """
        chosen = match(tuple(patterns), self.paths)
        for rel, st in zip(chosen, _lstat_all([os.path.join(self.root, p) for p in chosen])):
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > max_size:
                raise KataError("inputs.key_file_too_large",
                                f"{what}: {rel} is {st.st_size / (1 << 20):.1f} MiB; key files "
                                f"are limited to {max_size >> 20} MiB (a lock file names a "
                                "cache): narrow the pattern", obj=rel)
        return self.input_set(patterns)

    def input_set(self, patterns: Sequence[str] | None = None) -> InputSet:
        """The files `patterns` (gitignore-style) select; None selects every file, () none."""
        key = None if patterns is None else tuple(patterns)
        got = self._sets.get(key)
        if got is None:
            chosen = self.paths if key is None else match(key, self.paths) if key else []
            got = self._sets[key] = InputSet.of_entries(self.entries(chosen))
        return got


def _leads_out(root: str, rel: str, checked: dict[str, bool]) -> bool:
    """Whether a directory on ``rel``'s path is a symlink leading out of ``root``
    (``git ls-files`` lists index entries, which a symlinked directory in the work tree
    could redirect); ``checked`` caches the answer per directory for one walk."""
    parent = os.path.dirname(rel)
    if not parent:
        return False
    if parent not in checked:
        real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, parent))
        checked[parent] = not (real == real_root or real.startswith(real_root.rstrip("/") + "/"))
    return checked[parent]


def hash_files(root: str, paths: Sequence[str], cache: StatCache,
               absolute: Sequence[str] | None = None) -> list[Entry | None]:
    """Digest every path (relative to root), in order; None for one that vanished or is
    not a regular file or symlink (a submodule, a socket). A file whose lstat still
    shows the StatKey its cache entry was recorded with costs that lstat and is not read;
    any other is read, and cached when its ctime is older than `RACY_NS` before this call
    began (the racily-clean rule, module docstring).

    Raises KataError ``inputs.unreadable`` for a file that cannot be read and
    ``inputs.changed`` for one replaced by another kind of file while it was read."""
    racy = time.time_ns() - RACY_NS  # before any lstat: a write after it is never trusted
    if absolute is None:
        prefix = root + os.sep
        absolute = [prefix + p for p in paths]
    stats = _lstat_all(absolute)
    known = cache.get_many(absolute).get
    # the warm check in C-level passes: the stat key now vs as cached
    cached = list(map(known, absolute))
    fresh: dict[str, StatEntry] = {}
    checked: dict[str, bool] = {}  # directory (relative) -> leads out of the repository
    out: list[Entry | None] = []
    append = out.append
    key_of = stat_key
    S_ISREG, S_ISLNK, S_IXUSR = stat.S_ISREG, stat.S_ISLNK, stat.S_IXUSR
    for rel, a, st, c in zip(paths, absolute, stats, cached):
        if st is None:
            append(None)
            continue
        m = st.st_mode
        if c is not None and c[:6] == key_of(st) and S_ISREG(m):
            append((rel, c[6], c[3], 0o755 if m & S_IXUSR else 0o644))
        elif S_ISREG(m):
            if _leads_out(root, rel, checked):
                raise KataError("inputs.unreadable", f"cannot read input {rel}: a directory on "
                                "its path leads outside the repository", obj=rel)
            digest, seen, stable = _read_digest(a, rel)
            if stable and seen.st_ctime_ns < racy:
                fresh[a] = (*key_of(seen), digest)
            append((rel, digest, seen.st_size, 0o755 if seen.st_mode & S_IXUSR else 0o644))
        elif S_ISLNK(m):
            target = os.fsencode(os.readlink(a))
            append((rel, "sha256:" + hashlib.sha256(target).hexdigest(), len(target), 0o120000))
        else:
            append(None)
    if fresh:
        cache.put_many(fresh)
    return out


def ctime_is_kept(path: str) -> bool:
    """Whether the filesystem holding `path` keeps ctime as the kernel does (set on every
    change, never settable), the premise of the stat cache.

    FUSE filesystems (``fuse``, ``fuse.*`` in /proc/self/mountinfo) answer with what
    their daemon says: sshfs, for one, reports mtime as ctime (SFTP v3 has no ctime), so a
    same-size rewrite that restores the mtime changes no stat field. On those every input
    is read on every run. Found by the mount's device number (mountinfo field 3)."""
    try:
        st = os.stat(path)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == dev and "-" in fields:
                    fstype = fields[fields.index("-") + 1]
                    return not (fstype == "fuse" or fstype.startswith("fuse."))
    except (OSError, IndexError):
        pass
    return True


def _open_nofollow(path: str, flags: int) -> int:
    # O_NONBLOCK: a FIFO put in a regular file's place since its lstat must not block
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)


def _read_digest(path: str, rel: str) -> tuple[str, os.stat_result, bool]:
    """(digest, fstat before reading, whether the fstat was the same after reading).

    The stat that goes into the cache is the open file's own, taken before its
    bytes are read: a file replaced or rewritten during the read then shows a
    different key next time, and one changing while it is read is not cached."""
    try:
        with open(path, "rb", opener=_open_nofollow) as f:
            before = os.fstat(f.fileno())
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            stable = stat_key(os.fstat(f.fileno())) == stat_key(before)
    except OSError as err:
        if err.errno == errno.ELOOP:  # became a symlink since its lstat
            raise KataError("inputs.changed", f"input {rel} changed while it was hashed "
                            "(a file became a symlink): run again", obj=rel) from None
        raise KataError("inputs.unreadable", f"cannot read input {rel}: {err.strerror}",
                        obj=rel) from None
    if not stat.S_ISREG(before.st_mode):
        raise KataError("inputs.changed", f"input {rel} changed while it was hashed "
                        "(no longer a regular file): run again", obj=rel)
    return digest, before, stable


def mismatch(inputs: InputSet, manifest: Mapping[str, tuple[str, str]]) -> str | None:
    """The first path whose stored form differs from what `inputs` hashed, else None.

    `manifest`: path -> (kind, digest) of a stored tree as the store read it while
    packing (`store.Store.put_tree(..., manifest=)`): kind "f" (0644), "x" (0755) or
    "l" (symlink, digest of the target text); directories are not listed."""
    kinds = {0o644: "f", 0o755: "x", 0o120000: "l"}
    if len(manifest) != len(inputs.entries):
        extra = sorted(set(manifest) - set(inputs.paths))
        missing = sorted(set(inputs.paths) - set(manifest))
        return (extra or missing)[0]
    for path, digest, _size, mode in inputs.entries:
        if manifest.get(path) != (kinds[mode], digest):
            return path
    return None
