"""A store on a small tmpfs that fills up: a clear error, no partial object, and a
working store once space is freed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.mounts import small_tmpfs

from store import Realisation, Store, StoreError


@pytest.fixture
def small_fs(tmp_path: Path):
    with small_tmpfs(tmp_path, "2m") as mnt:
        yield mnt


def test_disk_full_is_clear_and_recoverable(small_fs: Path, tmp_path: Path) -> None:
    s = Store.open(small_fs / "store", state_dir=tmp_path / "state")
    try:
        written: list[tuple[str, bytes]] = []
        with pytest.raises(StoreError) as err:
            for _ in range(100):
                data = os.urandom(300_000)
                written.append((s.put_blob(data), data))
        assert err.value.reason == "store.disk_full"
        assert os.listdir(small_fs / "store" / "tmp") == []  # the partial write is gone
        for digest, data in written:
            assert s.read_blob(digest) == data
        report = s.verify()
        assert report.ok and report.objects == len(written)

        src = tmp_path / "tree"
        src.mkdir()
        (src / "big").write_bytes(os.urandom(1_500_000))
        with pytest.raises(StoreError) as err:
            s.put_tree(src)
        assert err.value.reason == "store.disk_full"
        assert os.listdir(small_fs / "store" / "tmp") == []
        assert s.verify().objects == len(written)

        for digest, _ in written:  # free the space
            s.objects.delete(digest)
        tree = s.put_tree(src)
        log = s.put_blob(b"log")
        s.put_realisation("f" * 64, Realisation(outputs=tree, log=log))
        out = tmp_path / "out"
        s.extract_tree(tree, out)
        assert (out / "big").read_bytes() == (src / "big").read_bytes()
        assert s.verify().ok
    finally:
        s.close()


def test_gc_on_a_full_disk_frees_it(small_fs: Path, tmp_path: Path) -> None:
    """gc is what a full store needs, yet its store-clock probe (a one-byte file in the
    store's tmp, ``gc.filesystem_now``) failed with ENOSPC and took gc down with it. The
    probe falls back to this host's clock, gc frees the space, and no probe file is left."""
    s = Store.open(small_fs / "store", state_dir=tmp_path / "state", grace=0)
    try:
        old = s.put_blob(os.urandom(500_000))
        with open(small_fs / "filler", "wb") as f:  # the disk full, to its last block
            try:
                while True:
                    f.write(os.urandom(65536))
                    f.flush()
            except OSError:
                pass
        report = s.gc(older_than=0)
        assert old in report.deleted_objects and not s.objects.has(old), report
        assert os.listdir(small_fs / "store" / "tmp") == []
    finally:
        (small_fs / "filler").unlink()
        s.close()
