"""The realiser: runs a compiled graph's steps, with the store as cache and artifact carrier.

``scheduler`` walks the DAG, ``workspace`` mounts a step's overlay, ``realiser``
ties them to the store and a runtime, ``events`` is everything it reports.
"""
