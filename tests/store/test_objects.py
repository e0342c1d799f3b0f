"""Blobs: streaming in bounded memory, concurrent identical writers, unpacked trees."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from store import Run, Store, StoreError

from .conftest import run_py


def test_streaming_a_big_blob_keeps_memory_bounded(tmp_path: Path) -> None:
    code = """
import hashlib, resource, sys
from store import Store
s = Store.open(sys.argv[1])
class Gen:
    def __init__(self): self.left = 512 << 20; self.sha = hashlib.sha256()
    def read(self, n=-1):
        n = min(n if n > 0 else 1 << 20, self.left, 1 << 20)
        self.left -= n
        block = bytes([self.left % 251]) * n
        self.sha.update(block)
        return block
g = Gen()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = s.put_blob(g)
assert d == "sha256:" + g.sha.hexdigest()
sha = hashlib.sha256(); n = 0
with s.open_blob(d) as f:
    while chunk := f.read(1 << 20):
        sha.update(chunk); n += len(chunk)
assert n == 512 << 20 and "sha256:" + sha.hexdigest() == d
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    res = run_py(code, str(tmp_path / "store"))
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) < 128  # MiB of growth for a 512 MiB blob in and out


def test_threads_writing_the_same_object(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        data = os.urandom(1 << 20)
        results: list[str] = []
        errors: list[BaseException] = []

        def put() -> None:
            try:
                results.append(s.objects.put(data))
            except BaseException as err:  # noqa: BLE001
                errors.append(err)
        threads = [threading.Thread(target=put) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(results)) == 1
        assert s.read_blob(results[0]) == data
        assert os.listdir(tmp_path / "store" / "tmp") == []


def test_truncated_object_is_corrupt(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        d = s.put_blob(os.urandom(100_000))
        path = s.objects.path(d)
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:-10])
        with pytest.raises(StoreError) as err:
            s.read_blob(d)
        assert err.value.reason == "store.corrupt_object"
        assert s.verify().corrupt == (d,)


def test_unpacked_is_read_only_reused_evictable_and_rebuilt(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("content")
    with Store.open(tmp_path / "store") as s:
        t = s.put_tree(src)
        p = Path(s.unpacked(t))
        assert (p / "d" / "f").read_text() == "content"
        assert os.stat(p / "d" / "f").st_mode & 0o222 == 0
        assert os.stat(p / "d").st_mode & 0o222 == 0
        assert s.unpacked(t) == str(p)
        assert s.evict_unpacked(t) == 1 and not p.exists()
        assert s.unpacked(t) == str(p) and (p / "d" / "f").read_text() == "content"
        assert not [n for n in os.listdir(s.unpacked_dir) if n.startswith(".")]
        s.objects.delete(t)
        s.gc(grace=0)
        assert not p.exists()  # gc drops unpacked copies of trees that left the store


def test_bad_inputs_are_store_errors(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        for call in (lambda: s.put_tree(tmp_path / "nope"),
                     lambda: s.get_realisation("../../etc/passwd"),
                     lambda: s.put_run(Run(id="../x")),
                     lambda: s.unpacked("sha256:xyz")):
            with pytest.raises(StoreError) as err:
                call()
            assert err.value.reason in ("store.tree.missing_path", "store.bad_key",
                                        "store.bad_run", "store.bad_digest")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "VERSION").write_text("something-else/9\n")
    with pytest.raises(StoreError) as err:
        Store.open(tmp_path / "other")
    assert err.value.reason == "store.version"


def test_putting_an_object_again_heals_a_damaged_copy(tmp_path: Path) -> None:
    """An intact object is never rewritten; a damaged one (a flipped byte, a truncation)
    is replaced by the copy a later put writes, so a rebuild heals what it re-creates."""
    data = os.urandom(300_000)
    with Store.open(tmp_path / "store") as s:
        d = s.put_blob(data)
        path = s.objects.path(d)
        ino = os.stat(path).st_ino
        assert s.put_blob(data) == d and os.stat(path).st_ino == ino  # intact: kept
        for damage in ("flip", "truncate"):
            raw = bytearray(Path(path).read_bytes())
            if damage == "flip":
                raw[len(raw) // 2] ^= 0xFF
            else:
                del raw[len(raw) // 2:]
            os.chmod(path, 0o644)
            Path(path).write_bytes(bytes(raw))
            with pytest.raises(StoreError) as err:
                s.read_blob(d)
            assert err.value.reason == "store.corrupt_object"
            assert s.put_blob(data) == d
            assert s.read_blob(d) == data, damage
