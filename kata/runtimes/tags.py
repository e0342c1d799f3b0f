"""Image tags kata has seen, kept on the host: tag → manifest digest, no daemon needed.

A fully cached run must not connect to containerd (nor import gRPC) only to learn
which digest ``busybox:1.36`` stands for. Every tag kata pulls, imports or resolves is
recorded here, and the next run resolves it from this file. ``kata run --pull`` and
``kata image pull`` ask the registry again and overwrite the entry; ``kata image rm``
drops it. Like a lock file, the record pins what a tag meant when kata last looked.

File: one JSON object, ``{"format": "kata-image-tags/1", "tags": {NAME: DIGEST}}``,
NAME the canonical tagged reference (``docker.io/library/busybox:latest``, see
``kata.model.ImageRef``), DIGEST ``sha256:<64 hex>``. Written whole to a temporary file
and renamed into place (readers never see a partial file) under an flock on
``<file>.lock`` (two writers never lose each other's entries). An unreadable or
foreign file reads as empty: it is a cache of answers the runtime can give again.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from kata.atomicfile import write_atomic
from kata.model import DIGEST_RE, ImageRef

FORMAT = "kata-image-tags/1"
FILE_NAME = "image-tags.json"


def tag_name(ref: str) -> str | None:
    """The canonical tagged name of ``ref`` (``alpine`` → ``docker.io/library/alpine:latest``);
    None for a reference pinned by digest or one that does not parse."""
    try:
        parsed = ImageRef.parse(ref)
    except ValueError:
        return None
    if parsed.digest is not None:
        return None
    return parsed.stored_name


class ImageTags:
    """The tag record at ``path`` (usually ``<store state dir>/image-tags.json``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tags: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return {}
        tags = doc.get("tags")
        if not isinstance(tags, dict):
            return {}
        return {k: v for k, v in tags.items()
                if isinstance(k, str) and isinstance(v, str) and DIGEST_RE.fullmatch(v)}

    def get(self, ref: str) -> str | None:
        """The digest recorded for tag ``ref``, or None (not recorded, or ``ref`` pinned)."""
        name = tag_name(ref)
        if name is None:
            return None
        if self._tags is None:
            self._tags = self._read()
        return self._tags.get(name)

    def all(self) -> dict[str, str]:
        """Every recorded tag name → digest (read fresh)."""
        self._tags = self._read()
        return dict(self._tags)

    def record(self, entries: Mapping[str, str]) -> None:
        """Record ``{ref: digest}``; pinned references are ignored (they need no record)."""
        named = {n: d for r, d in entries.items() if (n := tag_name(r)) is not None}
        if named:
            self._update(lambda tags: tags.update(named))

    def forget(self, refs: Iterable[str] = (), digests: Iterable[str] = ()) -> None:
        """Drop the tags named by ``refs`` and every tag pointing at one of ``digests``."""
        names = {n for r in refs if (n := tag_name(r)) is not None}
        gone = set(digests)

        def drop(tags: dict[str, str]) -> None:
            for name in [n for n, d in tags.items() if n in names or d in gone]:
                del tags[name]

        self._update(drop)

    def _update(self, change) -> None:  # noqa: ANN001 - Callable[[dict[str, str]], None]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tags = self._read()
            change(tags)
            doc = {"format": FORMAT, "tags": dict(sorted(tags.items()))}
            write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o644)
            self._tags = tags


__all__ = ["FILE_NAME", "FORMAT", "ImageTags", "tag_name"]
