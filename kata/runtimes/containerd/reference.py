"""The runtime's entry to ``kata.model.ImageRef`` (the one image-reference type)."""

from __future__ import annotations

from kata.errors import KataError
from kata.model import DIGEST_RE, ImageRef


def is_digest(text: str) -> bool:
    """``sha256:<64 lowercase hex>`` and nothing else."""
    return bool(DIGEST_RE.fullmatch(text))


def parse_reference(ref: str) -> ImageRef:
    """``ImageRef.parse`` for text from the command line or an archive.

    KataError ``image.bad_reference`` (exit 2) for anything the OCI reference grammar refuses.
    """
    try:
        return ImageRef.parse(ref)
    except ValueError:
        raise KataError("image.bad_reference", f"not an image reference: {ref!r}", obj=ref) from None
