"""pytest fixtures shared by the integration tests (imported by tests/conftest.py).

    containerd_daemon  session: DaemonPaths of this worker's embedded containerd
    runtime            session: a ContainerdRuntime on it with the busybox image imported
    busybox_digest     session: manifest digest of kata.local/busybox:latest in it
    clean_runtime      function: `runtime`, asserted to hold no leftovers afterwards
    runc_runtime       session: a ContainerdRuntime on the same daemon that runs runc
    task_runtime       session: one on the same daemon with containerd.step_runner: task
    each_step_runner   function, twice: `clean_runtime` (direct steps), then task_runtime
    each_oci_runtime   function, twice: `clean_runtime` on crun, then on runc
    debian_digest      session: a Debian minbase image (slow the first time: mmdebstrap)
    probe_digest       session: busybox + /bin/probe (sandbox_probe.c, built with gcc)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .images import busybox_image, write_oci_archive


@pytest.fixture(scope="session")
def containerd_daemon():
    from .daemon import embedded_containerd  # grpc only for tests that use a daemon

    with embedded_containerd() as paths:
        yield paths


@pytest.fixture(scope="session")
def runtime(containerd_daemon, tmp_path_factory) -> Iterator[object]:
    from kata.runtimes.containerd import ContainerdRuntime

    rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent))
    archive = write_oci_archive(busybox_image(), tmp_path_factory.mktemp("img") / "busybox.tar")
    rt.import_image(archive)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="session")
def busybox_digest(runtime) -> str:
    return runtime.resolve_image(busybox_image().ref)


def assert_clean(rt) -> None:
    """Nothing but images left in kata's namespace: no container, task, active snapshot,
    lease, mount or FIFO."""
    left = rt.leftovers()
    assert left == {k: [] for k in left}, left


@pytest.fixture
def clean_runtime(runtime):
    """The session runtime, checked to hold nothing but images after the test."""
    yield runtime
    assert_clean(runtime)


@pytest.fixture(scope="session")
def runc_runtime(runtime, containerd_daemon) -> Iterator[object]:
    """A runtime on the session's daemon (its images included) whose containers runc runs,
    whatever ``containerd.oci_runtime: auto`` picks on this host."""
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.config import RuntimeConfig

    rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent),
                                   config=RuntimeConfig(oci_runtime="runc"))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(params=["crun", "runc"])
def each_oci_runtime(request, runtime, runc_runtime):
    """The sandbox holds on either OCI runtime: the session runtime (``auto``, which must
    pick crun here: .ci/install-kata installs it and makes the cgroups fit), then runc;
    each asserted to hold no leftovers afterwards."""
    rt = runtime if request.param == "crun" else runc_runtime
    assert rt.oci.name == request.param, rt.oci
    yield rt
    assert_clean(rt)


@pytest.fixture(scope="session")
def task_runtime(runtime, containerd_daemon) -> Iterator[object]:
    """A runtime on the session's daemon (its images included) that runs every step as a
    containerd task (``containerd.step_runner: task``); the session runtime runs steps
    without services directly (kata/runtimes/containerd/direct.py)."""
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.config import RuntimeConfig

    rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent),
                                   config=RuntimeConfig(step_runner="task"))
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(params=["direct", "task"])
def each_step_runner(request, runtime, task_runtime):
    """The session runtime (direct steps), then one on containerd tasks; each asserted to
    hold no leftovers afterwards."""
    rt = runtime if request.param == "direct" else task_runtime
    assert (rt.direct_unusable == "") == (request.param == "direct"), rt.direct_unusable
    yield rt
    assert_clean(rt)


@pytest.fixture(scope="session")
def debian_digest(runtime) -> str:
    """A Debian bookworm minbase image (mmdebstrap, cached under /var/cache/kata-test)."""
    from .images import DEBIAN_REF, debian_image_archive

    runtime.import_image(debian_image_archive())
    return runtime.resolve_image(DEBIAN_REF)


@pytest.fixture(scope="session")
def debian_pytest_digest(runtime) -> str:
    """The Debian image with python3 and pytest (JUnit reports from a real test runner)."""
    from .images import DEBIAN_PYTEST_REF, debian_pytest_image_archive

    runtime.import_image(debian_pytest_image_archive())
    return runtime.resolve_image(DEBIAN_PYTEST_REF)


@pytest.fixture(scope="session")
def probe_digest(runtime, tmp_path_factory) -> str:
    """busybox plus /bin/probe, the static sandbox probe (tests/support/sandbox_probe.c)."""
    from .images import PROBE_REF, probe_image

    archive = write_oci_archive(probe_image(), tmp_path_factory.mktemp("probe") / "probe.tar")
    runtime.import_image(archive)
    return runtime.resolve_image(PROBE_REF)
