"""Unpacked trees: host-local read-only extracted copies, keyed by digest.

Layout: ``<state_dir>/unpacked/<hex>`` is a read-only extraction of tree
``sha256:<hex>``. It is extracted into ``.tmp.<pid>.<random>.<host>`` and published by
renaming (so a consumer never sees half a tree; when two consumers race, the second
rename fails and its copy is dropped), and evicted by renaming it to ``.trash-*``
before deleting it (a slow delete never exposes half a tree under the digest's name).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from .files import force_rmtree, publish_dir
from .index import LmdbIndex
from .objects import check_digest, tmp_name, tmp_owner_dead
from .tree import made_copy


class UnpackedTrees:
    def __init__(self, root: str, extract: Callable[..., None], index: LmdbIndex) -> None:
        self.root = root
        self._extract = extract
        self._index = index

    def get(self, digest: str) -> tuple[str, bool]:
        """(path, whether it was extracted just now)."""
        final = os.path.join(self.root, check_digest(digest))
        if made_copy(final):
            return final, False
        os.makedirs(self.root, exist_ok=True)
        work = os.path.join(self.root, "." + tmp_name("tmp"))
        publish_dir(lambda w: self._extract(digest, w, readonly=True), work, final)
        self._index.note_unpacked(digest)
        return final, True

    def evict(self, digest: str | None = None) -> int:
        try:
            names = [check_digest(digest)] if digest else os.listdir(self.root)
        except FileNotFoundError:
            return 0
        count = 0
        for name in names:
            path = os.path.join(self.root, name)
            if name.startswith(".") and not (name.startswith(".trash-")
                                             or tmp_owner_dead(name[1:])):
                continue  # another process is extracting it right now
            if not os.path.isdir(path):
                continue
            trash = os.path.join(self.root, f".trash-{uuid.uuid4().hex}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            force_rmtree(trash)
            if len(name) == 64:
                self._index.drop_unpacked("sha256:" + name)
                count += 1
        return count
