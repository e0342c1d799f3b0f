"""A step's realisation under its two keys: one record file, hard-linked (issue 11: an inode
allocation less per step), the same records as two writes would leave; and the one-batch
tree packed without threads, byte for byte as the threaded packer would."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from store import Realisation, Store, StoreError
from store import tree as trees

K1, K2, K3 = "1" * 64, "2" * 64, "3" * 64


def _real(s: Store, tmp_path: Path, stack_size: int = 3) -> Realisation:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    stack = []
    for i in range(stack_size):
        (out / "f").write_text(str(i))
        stack.append(s.put_tree(out))
    return Realisation(outputs=stack[-1], log=s.put_blob(b"log"), step="build",
                       stack=tuple(stack), created=1.0, host="h")


def test_both_keys_share_one_record_file(tmp_path) -> None:
    with Store.open(tmp_path / "store") as s:
        real = _real(s, tmp_path)
        s.put_realisations([K1, K2], real)
        p1, p2 = (Path(s._realisation_path(k)) for k in (K1, K2))
        assert p1.stat().st_ino == p2.stat().st_ino and p1.stat().st_nlink == 2
        assert p1.read_bytes() == real.encode()
        assert s.get_realisation(K1) == s.get_realisation(K2) == real
        assert os.listdir(s.tmp) == []
        assert s.verify().ok
        # immutable: a key already realised keeps its first record, the other is written
        other = Realisation(outputs=real.outputs, log=real.log, step="other", created=2.0,
                            host="h")
        s.put_realisations([K2, K3], other)
        assert s.get_realisation(K2) == real and Path(s._realisation_path(K2)).read_bytes() \
            == real.encode()
        assert s.get_realisation(K3) == other
        # one key's record goes alone (gc, a heal): the other stays
        assert s.delete_realisation(K1)
        assert s.get_realisation(K1) is None and s.get_realisation(K2) == real


def test_without_hard_links_each_key_gets_its_copy(tmp_path, monkeypatch) -> None:
    def refuse(src, dst, *a, **k):  # noqa: ANN001, ANN002, ANN003 - os.link's shape
        raise OSError(errno.EPERM, "Operation not permitted")

    with Store.open(tmp_path / "store") as s:
        real = _real(s, tmp_path)
        monkeypatch.setattr(os, "link", refuse)
        s.put_realisations([K1, K2], real)
        p1, p2 = (Path(s._realisation_path(k)) for k in (K1, K2))
        assert p1.stat().st_ino != p2.stat().st_ino
        assert p1.read_bytes() == p2.read_bytes() == real.encode()
        assert s.get_realisation(K2) == real


def test_an_object_collected_meanwhile_leaves_no_record_under_any_key(tmp_path,
                                                                     monkeypatch) -> None:
    with Store.open(tmp_path / "store") as s:
        real = _real(s, tmp_path)
        victim = real.stack[0]
        real_link = os.link

        def link_then_collect(src, dst, *a, **k):  # noqa: ANN001, ANN002, ANN003
            real_link(src, dst, *a, **k)
            s.objects.delete(victim)  # a gc elsewhere, between the touch and the re-check

        monkeypatch.setattr(os, "link", link_then_collect)
        with pytest.raises(StoreError) as err:
            s.put_realisations([K1, K2], real)
        assert err.value.reason == "store.missing_object" and err.value.obj == victim
        assert not os.path.lexists(s._realisation_path(K1))
        assert not os.path.lexists(s._realisation_path(K2))
        assert s.get_realisation(K1) is None and s.get_realisation(K2) is None


def test_a_missing_object_is_refused_before_anything_is_written(tmp_path) -> None:
    with Store.open(tmp_path / "store") as s:
        real = _real(s, tmp_path)
        s.objects.delete(real.stack[1])
        with pytest.raises(StoreError) as err:
            s.put_realisations([K1, K2], real)
        assert err.value.reason == "store.missing_object" and err.value.obj == real.stack[1]
        assert not os.path.exists(os.path.join(s.root, "realisations", "11"))


@pytest.mark.parametrize("files", [1, 3, 1500], ids=["one", "one batch", "three batches"])
def test_the_packed_stream_is_the_records_in_order(tmp_path, files) -> None:
    """One batch is packed inline (no threads), several through the read-ahead pool: the
    bytes are the same concatenation of records either way."""
    root = tmp_path / "t"
    root.mkdir()
    for i in range(files):
        (root / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    entries = trees.scan(str(root), None)
    expected = trees.MAGIC + b"".join(trees._read_batch([e]) for e in entries) \
        + trees.END_RECORD
    assert b"".join(trees.stream(entries)) == expected
    with Store.open(tmp_path / "store") as s:
        import hashlib

        assert s.put_tree(root) == "sha256:" + hashlib.sha256(expected).hexdigest()
