"""The content-addressed store: blobs, trees, realisations, an LMDB index.

A standalone package: it imports nothing from ``kata``.
"""
