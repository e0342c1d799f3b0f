"""Reporters: the realiser's event stream rendered for people or machines.

``plain`` writes the overview's lines (``[CACHE] build: HIT (key: a3f8c2d...)``),
``live`` a rich view on a terminal, ``jsonl`` one JSON object per event.
"""
