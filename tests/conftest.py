"""Shared fixtures; tests/ is on sys.path (pyproject: pythonpath) so `support` imports."""

from support.fixtures import (  # noqa: F401
    busybox_digest, clean_runtime, containerd_daemon, debian_digest, debian_pytest_digest,
    each_oci_runtime, each_step_runner, probe_digest, runc_runtime, runtime, task_runtime,
)
from support.sshfs import sshd  # noqa: F401  (session: an sshd on 127.0.0.1 for sshfs stores)
