"""Merged trees: one host-local read-only directory holding a stack of trees, keyed by the stack.

An overlay mount takes a bounded number of lower layers (one page of options, at most
500 layers), and every lookup in it walks its layers. A consumer of a deep artifact
stack (a fan-in of 1,000 producers, a chain of 1,000 steps) is therefore given the
bottom of its stack as *one* layer: a directory in which the trees are laid over each
other bottom to top with overlayfs' rules (BuildKit's merge-op, done with hard links):

- a later tree's non-directory hides whatever an earlier tree has at that path;
- a later tree's directory over an earlier directory merges them (the later mode wins);
  over an earlier non-directory it replaces it.

Files are hard links to the unpacked trees (same filesystem, ``<state_dir>``): building a
merged directory costs a link per file and a mkdir per directory, no data. The links share
inodes with the read-only unpacked copies; the merged directory is only ever an overlay
*lower* layer, so a step's write copies the file up and never reaches the shared inode.
Links fall back to copies across filesystems or past an inode's link limit.

Layout: ``<state_dir>/merged/<hex>`` where ``hex = sha256("kata-merged/1\\0" + digests
joined by "\\0")`` over the trees bottom first, and ``<hex>.trees`` beside it listing the
trees (one digest a line; gc evicts a merged directory once one of its trees left the
store). Built in ``.tmp.<pid>.<random>.<host>`` and published by rename, like unpacked
trees. A stack is built from the longest prefix of it that is already merged, so the
consumers of a chain share their bottoms and each new directory costs one copy of links.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Sequence

from .files import force_rmtree, publish_dir
from .objects import check_digest, tmp_name, tmp_owner_dead
from .tree import made_copy, settle_dir_mtimes

FORMAT = b"kata-merged/1"


def _prefix_names(trees: Sequence[str]) -> list[str]:
    """names[k] is the directory name of trees[:k + 1] (hashes grow with the prefix)."""
    h = hashlib.sha256(FORMAT)
    out = []
    for tree in trees:
        h.update(b"\0" + tree.encode())
        out.append(h.hexdigest())
    return out


def merged_name(trees: Sequence[str]) -> str:
    """The directory name (hex sha256) of a stack of tree digests, bottom first."""
    if not trees:
        raise ValueError("an empty stack has no merged directory")
    return _prefix_names(trees)[-1]


class MergedTrees:
    """Merged stacks under ``root``; ``unpacked(digest) -> path`` gives each tree's copy."""

    def __init__(self, root: str, unpacked: Callable[[str], str]) -> None:
        self.root = root
        self._unpacked = unpacked

    def get(self, trees: Sequence[str]) -> tuple[str, bool]:
        """(path of the merged directory of ``trees`` bottom first, whether built now).

        ``trees``: two or more tree digests, no duplicates. Raises what extraction raises
        (StoreError for a missing or damaged tree); nothing half-built stays visible.
        """
        assert len(trees) >= 2 and len(set(trees)) == len(trees), trees
        for tree in trees:
            check_digest(tree)
        names = _prefix_names(trees)
        final = os.path.join(self.root, names[-1])
        if made_copy(final):
            return final, False
        base = 0  # how many trees the longest merged prefix already holds
        for k in range(len(trees) - 1, 1, -1):
            if made_copy(os.path.join(self.root, names[k - 1])):  # its files: the new
                base = k                                            # stack's (hard links)
                break
        os.makedirs(self.root, exist_ok=True)
        work = os.path.join(self.root, "." + tmp_name("tmp"))
        def build(work: str) -> None:
            if base:
                _copy_links(os.path.join(self.root, names[base - 1]), work)
            else:
                os.mkdir(work, 0o755)
            os.chmod(work, 0o700)
            # (unpacking with a few threads measured no faster on this disk: not done)
            sources = [self._unpacked(tree) for tree in trees[base:]]
            for source in sources:
                _lay_over(work, source)
            os.chmod(work, stat.S_IMODE(os.lstat(sources[-1]).st_mode))  # the top tree's root
            settle_dir_mtimes(work)  # made here, so made now: one mtime, as extracted
            listing = "".join(t + "\n" for t in trees).encode()
            with open(final + ".trees", "wb") as f:  # before the directory: gc reads it
                f.write(listing)

        publish_dir(build, work, final)
        return final, True

    def trees_of(self, name: str) -> list[str] | None:
        """The trees a merged directory holds (None: no readable listing)."""
        try:
            with open(os.path.join(self.root, name + ".trees"), "rb") as f:
                return f.read().decode().split()
        except (OSError, UnicodeDecodeError):
            return None

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.root) if len(n) == 64]
        except FileNotFoundError:
            return []

    def evict(self, keep: Callable[[str], bool] = lambda name: False) -> int:
        """Remove merged directories (all, or those ``keep(name)`` refuses); leftovers of dead
        builders too. A merged directory is rebuilt on demand. Returns how many went."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        count = 0
        for name in entries:
            path = os.path.join(self.root, name)
            if name.startswith("."):
                if name.startswith(".trash-") or tmp_owner_dead(name[1:]):
                    force_rmtree(path)
                continue  # another process is building it right now
            if len(name) != 64 or keep(name):
                continue
            trash = os.path.join(self.root, f".trash-{uuid.uuid4().hex}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            try:
                os.unlink(path + ".trees")
            except FileNotFoundError:
                pass
            force_rmtree(trash)
            count += 1
        stale = time.time() - 3600  # a younger listing may belong to a build in progress
        for name in entries:  # listings whose directory is gone
            path = os.path.join(self.root, name)
            if name.endswith(".trees") and not os.path.isdir(path[:-6]):
                try:
                    if os.stat(path).st_mtime < stale:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
        return count


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


def _copy_links(src: str, dst: str) -> None:
    """A copy of directory ``src`` at ``dst``: new directories, hard-linked everything else."""
    os.mkdir(dst, 0o700)
    with os.scandir(src) as it:
        for entry in it:
            target = os.path.join(dst, entry.name)
            if entry.is_dir(follow_symlinks=False):
                _copy_links(entry.path, target)
            else:
                _link(entry.path, target)
    os.chmod(dst, stat.S_IMODE(os.lstat(src).st_mode))


def _lay_over(dst: str, src: str) -> None:
    """Put tree ``src`` over directory ``dst`` with overlayfs' rules (see the module doc)."""
    with os.scandir(src) as it:
        for entry in it:
            target = os.path.join(dst, entry.name)
            try:
                below = os.lstat(target).st_mode
            except FileNotFoundError:
                below = None
            if entry.is_dir(follow_symlinks=False):
                if below is not None and stat.S_ISDIR(below):
                    os.chmod(target, 0o700)
                    _lay_over(target, entry.path)
                else:
                    if below is not None:
                        os.unlink(target)
                    _copy_links(entry.path, target)
                    continue
                os.chmod(target, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
            else:
                if below is not None:
                    if stat.S_ISDIR(below):
                        force_rmtree(target)  # links only: the unpacked copies keep their files
                    else:
                        os.unlink(target)
                _link(entry.path, target)
