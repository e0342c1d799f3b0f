"""Images never break a run: many steps starting at once on an image not yet unpacked.

Real containerd. The image is imported, then its snapshots are removed, so the first
steps to use it find content but no unpacked layers (what a fresh pull by digest, or an
image bump, leaves them). Before the fix the second unpacker failed with
``containerd: commit sha256:…: snapshot … already exists``.
"""

from __future__ import annotations

import secrets
import threading

import pytest

from kata.runtimes.base import StepSpec
from kata.runtimes.containerd import ContainerdRuntime
from kata.runtimes.containerd.client import SNAPSHOTTER, snapshots_pb2
from kata.runtimes.containerd.images import chain_ids
from support.fixtures import assert_clean
from support.images import busybox_layer, files_layer, make_image, write_oci_archive

pytestmark = pytest.mark.integration

STEPS = 5


def fresh_image(tmp_path):
    """An image whose every layer is unique to this test (bottom layer included)."""
    tag = secrets.token_hex(6)
    img = make_image([files_layer({f"/etc/kata-fresh-{tag}": tag.encode()}), busybox_layer()],
                     f"kata.local/fresh{tag}:v1")
    return img, tag, write_oci_archive(img, tmp_path / "fresh.tar")


def drop_snapshots(rt, img) -> None:
    """Remove the image's unpacked layers (top first): content stays, unpacking is due."""
    c = rt.client
    for chain in reversed(chain_ids(img.diff_ids)):
        c.call(c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=chain), f"remove {chain}")
    assert not rt.images.snapshot_exists(chain_ids(img.diff_ids)[-1])


def run_at_once(runtimes, digest: str, tag: str) -> list[tuple[int, list[bytes]] | BaseException]:
    barrier = threading.Barrier(len(runtimes))
    results: list = [None] * len(runtimes)

    def step(i: int, rt) -> None:
        lines: list[bytes] = []
        try:
            barrier.wait()
            status = rt.run(StepSpec(image=digest, argv=("cat", f"/etc/kata-fresh-{tag}")),
                            lambda s, line: lines.append(line), threading.Event())
            results[i] = (status, lines)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion
            results[i] = err

    threads = [threading.Thread(target=step, args=(i, rt)) for i, rt in enumerate(runtimes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.fixture
def connect(containerd_daemon):
    opened = []

    def make():
        rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                       state_dir=str(containerd_daemon.root.parent))
        opened.append(rt)
        return rt

    yield make
    for rt in opened:  # every runtime's deferred releases first: they share a namespace
        rt.drain()
    for rt in opened:
        assert_clean(rt)
        rt.close()


def test_five_steps_at_once_in_one_process_unpack_once(connect, tmp_path):
    rt = connect()
    img, tag, archive = fresh_image(tmp_path)
    rt.import_image(archive)
    drop_snapshots(rt, img)
    runner = connect()  # a new process's view: nothing known, nothing unpacked
    results = run_at_once([runner] * STEPS, img.digest, tag)
    assert results == [(0, [tag.encode()])] * STEPS
    assert runner.images.snapshot_exists(chain_ids(img.diff_ids)[-1])
    rt.remove_image(img.ref)


def test_five_processes_at_once_treat_already_exists_as_done(connect, tmp_path):
    rt = connect()
    img, tag, archive = fresh_image(tmp_path)
    rt.import_image(archive)
    drop_snapshots(rt, img)
    # one runtime each: no shared in-process lock, as with five kata processes
    results = run_at_once([connect() for _ in range(STEPS)], img.digest, tag)
    assert results == [(0, [tag.encode()])] * STEPS
    rt.remove_image(img.ref)
