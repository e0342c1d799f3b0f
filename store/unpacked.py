"""Unpacked trees live in :class:`store.core.Store` (``unpacked``/``evict_unpacked``).

Layout: ``<state_dir>/unpacked/<hex>`` is a read-only extraction of tree
``sha256:<hex>``, published by renaming a finished ``.tmp-*`` directory (so a
consumer never sees a half-extracted tree) and evicted by renaming it to
``.trash-*`` before deleting it.
"""
