"""Image references, parsed once: domain, repository path, tag, digest."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kata.errors import KataError

DEFAULT_DOMAIN = "docker.io"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PATH = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))


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

    @property
    def tagged_name(self) -> str:
        return f"{self.repository}:{self.tag or 'latest'}"

    def __str__(self) -> str:
        return self.name


def parse_reference(ref: str) -> Reference:
    """Parse ``busybox``, ``kata.local/x:1``, ``host:5000/a/b@sha256:…`` (docker's rules)."""
    text = ref.strip()
    bad = KataError("image.bad_reference", f"not an image reference: {ref!r}", obj=ref)
    if not text or text != ref or any(c.isspace() for c in text):
        raise bad
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not is_digest(digest):
            raise bad
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise bad
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, text
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if not _PATH.match(path):
        raise bad
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
