"""Reporters: the realiser's event stream rendered for people or machines.

``plain`` writes the overview's lines (``[CACHE] build: HIT (key: a3f8c2d...)``),
``live`` a view on a terminal redrawn at a fixed rate, ``jsonl`` one JSON object per event.
"""

from __future__ import annotations


def human_size(n: int) -> str:
    """Bytes for people, the one size format of the CLI (``cache stats``, ``store gc``,
    ``image ls``, ``[PULL]`` lines and the live view): ``48MB`` style, decimal units (B, KB, MB, GB, TB), whole numbers, one
    decimal below 10 (``1.5KB``)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1000
    return f"{n}B"

