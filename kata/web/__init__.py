"""``kata web``: a dashboard over the store's records (runs, a run's DAG, timeline and
logs, runs in progress, cache trends), served by Starlette on uvicorn.

``kata.web.data`` reads the store into values, ``kata.web.draw`` turns them into SVG,
``kata.web.app`` serves pages and ``/api/`` JSON. See docs/web.md.
"""
