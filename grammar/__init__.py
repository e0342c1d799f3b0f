"""Lark grammars shipped with Kata CI (target labels, condition expressions)."""

from importlib import resources


def load(name: str) -> str:
    """The text of ``<name>.lark`` shipped in this package."""
    return resources.files(__name__).joinpath(f"{name}.lark").read_text(encoding="utf-8")
