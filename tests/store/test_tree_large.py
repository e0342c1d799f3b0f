"""Extraction of archives bigger than one read chunk: the read-ahead thread, chunk
boundaries inside headers and contents, and errors or corruption found late."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest

from store import Store, StoreError
from store.tree import CHUNK, SMALL_FILE

from .test_hostile_archives import archive, d, f
from .test_tree_roundtrip import snapshot


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kata-extract-read"]


def _big_tree(root: Path) -> None:
    rng = random.Random(7)
    for i in range(40):
        sub = root / f"d{i % 5}" / f"s{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        # sizes straddle the small-file limit and the chunk size, so headers and
        # contents fall across chunk boundaries
        size = rng.choice([0, 1, 3, 4093, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1,
                           CHUNK - 7, CHUNK + 13, 2 * CHUNK + 1])
        (sub / f"f{i}").write_bytes(rng.randbytes(size))
        if i % 4 == 0:
            (sub / f"f{i}").chmod(0o755)
    (root / "d0" / "link").symlink_to("s0/f0")
    (root / "empty").mkdir()


def test_many_chunk_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _big_tree(src)
    with Store.open(tmp_path / "store") as s:
        digest = s.put_tree(src)
        assert len(s.read_blob(digest)) > 8 * CHUNK
        out = tmp_path / "out"
        s.extract_tree(digest, out)
        assert snapshot(out) == snapshot(src)
        ro = Path(s.unpacked(digest))
        assert snapshot(ro) == snapshot(src)
        for dirpath, _, files in os.walk(ro):
            for name in files:
                st = os.lstat(Path(dirpath) / name)
                if not os.path.islink(Path(dirpath) / name):
                    assert st.st_mode & 0o777 in (0o444, 0o555)
        assert s.put_tree(out) == digest
    assert _readers() == []


def test_error_after_many_chunks_stops_the_reader(tmp_path: Path) -> None:
    big = os.urandom(CHUNK)
    raw = archive(d(b"a"), *(f(b"a/f%02d" % i, big) for i in range(6)), f(b"a/f05", b"dup"))
    with Store.open(tmp_path / "store") as s:
        digest = s.put_blob(raw)
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, tmp_path / "out")
        assert err.value.reason == "store.archive.duplicate" and err.value.obj == "a/f05"
        with pytest.raises(StoreError) as err:
            s.unpacked(digest)
        assert err.value.reason == "store.archive.duplicate"
        assert not os.path.exists(os.path.join(s.unpacked_dir, digest[7:]))
    assert _readers() == []


def test_truncated_big_archive(tmp_path: Path) -> None:
    raw = archive(*(f(b"f%02d" % i, os.urandom(CHUNK // 5)) for i in range(8)), end=False)
    with Store.open(tmp_path / "store") as s:
        digest = s.put_blob(raw[:-1000])
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, tmp_path / "out")
        assert err.value.reason == "store.archive.truncated" and err.value.obj == "f07"
        assert not os.path.exists(tmp_path / "out" / "f07")
    assert _readers() == []


def test_corruption_late_in_a_big_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}").write_bytes(os.urandom(CHUNK // 2))
    with Store.open(tmp_path / "store") as s:
        digest = s.put_tree(src)
        path = s.objects.path(digest)
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) * 4 // 5] ^= 0x40
        open(path, "wb").write(raw)
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, tmp_path / "out")
        assert err.value.reason == "store.corrupt_object" and err.value.obj == digest
        with pytest.raises(StoreError) as err:
            s.unpacked(digest)
        assert err.value.reason == "store.corrupt_object"
        assert not os.path.exists(os.path.join(s.unpacked_dir, digest[7:]))
    assert _readers() == []


def test_disk_error_mid_extraction_stops_the_reader(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(CHUNK // 2))
    with Store.open(tmp_path / "store") as s:
        digest = s.put_tree(src)
        real_open = os.open
        calls = {"n": 0}

        def full_at_third_file(path, flags, mode=0o777, *, dir_fd=None):
            if dir_fd is not None and flags & os.O_CREAT:
                calls["n"] += 1
                if calls["n"] == 3:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, mode, dir_fd=dir_fd)

        monkeypatch.setattr(os, "open", full_at_third_file)
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, tmp_path / "out")
        monkeypatch.undo()
        assert err.value.reason == "store.disk_full"
        assert sorted(os.listdir(tmp_path / "out")) == ["f0", "f1"]
        assert s.read_blob(digest)  # the blob reads back whole afterwards
    assert _readers() == []


def test_corruption_stays_reported_to_later_reads(tmp_path: Path) -> None:
    """The read-ahead thread may meet a damaged blob's mismatch first; the store's check
    for damage after a parse error reads the same blob afterwards and must see it too."""
    with Store.open(tmp_path / "store") as s:
        digest = s.put_blob(os.urandom(3 * CHUNK))
        path = s.objects.path(digest)
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 2] ^= 0x01
        open(path, "wb").write(raw)
        with s.open_blob(digest) as blob:
            with pytest.raises(StoreError) as first:
                while blob.read(CHUNK):
                    pass
            with pytest.raises(StoreError) as again:
                blob.read(CHUNK)
        assert first.value.reason == again.value.reason == "store.corrupt_object"
