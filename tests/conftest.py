"""Shared fixtures; tests/ is on sys.path (pyproject: pythonpath) so `support` imports."""

from support.fixtures import busybox_digest, containerd_daemon, runtime  # noqa: F401
