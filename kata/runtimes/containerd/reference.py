"""Image references, parsed once: domain, repository path, tag, digest."""

from __future__ import annotations

from dataclasses import dataclass

from kata.errors import KataError
from kata.model import DIGEST_RE, ImageRef


def is_digest(text: str) -> bool:
    return bool(DIGEST_RE.fullmatch(text))


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The canonical name an image is stored under: by digest when pinned."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"

    def __str__(self) -> str:
        return self.name


def parse_reference(ref: str) -> Reference:
    """Parse ``busybox``, ``kata.local/x:1``, ``host:5000/a/b@sha256:…`` (docker's rules).

    The rules live in one place, ``kata.model.ImageRef`` (what the config loader uses);
    this is the runtime's view of the same parse.
    """
    try:
        parsed = ImageRef.parse(ref)
    except ValueError:
        raise KataError("image.bad_reference", f"not an image reference: {ref!r}", obj=ref) from None
    return Reference(domain=parsed.registry, path=parsed.repository, tag=parsed.tag,
                     digest=parsed.digest)
