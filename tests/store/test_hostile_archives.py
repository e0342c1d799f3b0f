"""Hostile archives: each is rejected naming the offending entry, and nothing outside
the target changes (a sentinel directory beside it is compared before and after)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import msgpack
import pytest
import zstandard

from store import Limits, Store, StoreError
from store.tree import MAGIC, extract


def rec(*head: object) -> bytes:
    raw = msgpack.packb(list(head), use_bin_type=True)
    return struct.pack(">I", len(raw)) + raw


END = rec("e")


def archive(*parts: bytes, end: bool = True, magic: bytes = MAGIC) -> bytes:
    return magic + b"".join(parts) + (END if end else b"")


def f(path: bytes, content: bytes = b"x", kind: str = "f") -> bytes:
    return rec(kind, path, len(content)) + content


def d(path: bytes) -> bytes:
    return rec("d", path, 0)


def ln(path: bytes, target: bytes) -> bytes:
    return rec("l", path, target)


# (id, archive bytes, expected reason, expected entry named in .obj (None: not checked))
CASES = [
    ("dotdot", archive(f(b"../evil")), "path_escape", "../evil"),
    ("dotdot-nested", archive(d(b"a"), f(b"a/../../evil")), "path_escape", "a/../../evil"),
    ("dotdot-dir", archive(d(b"..")), "path_escape", ".."),
    ("absolute", archive(f(b"/etc/evil")), "absolute_path", "/etc/evil"),
    ("absolute-tmp", archive(d(b"/tmp")), "absolute_path", "/tmp"),
    ("nul-name", archive(f(b"a\0b")), "bad_name", "a\\0b"),
    ("nul-dir", archive(d(b"ok\0/../x")), "bad_name", None),
    ("dot-component", archive(f(b"./x")), "bad_name", "./x"),
    ("empty-component", archive(d(b"a"), f(b"a//b")), "bad_name", "a//b"),
    ("empty-name", archive(f(b"")), "bad_name", ""),
    ("trailing-slash", archive(d(b"a/")), "bad_name", "a/"),
    ("long-component", archive(f(b"n" * 300)), "bad_name", None),
    ("symlink-empty", archive(ln(b"l", b"")), "bad_symlink", "l"),
    ("symlink-nul", archive(ln(b"l", b"a\0b")), "bad_symlink", "l"),
    ("symlink-not-bytes", archive(rec("l", b"l", 5)), "bad_symlink", "l"),
    ("symlink-too-long", archive(ln(b"l", b"x" * 4097)), "bad_symlink", "l"),
    ("write-through-outside-link", archive(ln(b"evil", b"/tmp"), f(b"evil/x")), "no_parent", "evil/x"),
    ("write-through-dotdot-link", archive(ln(b"up", b".."), f(b"up/evil")), "no_parent", "up/evil"),
    ("dir-through-outside-link", archive(ln(b"evil", b"../sentinel"), d(b"evil/x")), "no_parent",
     "evil/x"),
    ("write-through-inside-link", archive(d(b"b"), ln(b"c", b"b"), f(b"c/x")), "no_parent", "c/x"),
    ("link-then-dir", archive(ln(b"a", b"b"), d(b"a")), "duplicate", "a"),
    ("dir-then-file", archive(d(b"a"), f(b"a")), "duplicate", "a"),
    ("duplicate-file", archive(f(b"x"), f(b"x")), "duplicate", "x"),
    ("unsorted", archive(f(b"b"), f(b"a")), "unsorted", "a"),
    ("no-parent", archive(f(b"nodir/x")), "no_parent", "nodir/x"),
    ("file-as-parent", archive(f(b"a"), f(b"a/x")), "no_parent", "a/x"),
    ("hardlink-outside", archive(rec("h", b"passwd", b"/etc/passwd")), "bad_entry", "passwd"),
    ("hardlink-inside", archive(f(b"a"), rec("h", b"b", b"a")), "bad_entry", "b"),
    ("char-device", archive(rec("c", b"null", 0)), "bad_entry", "null"),
    ("fifo", archive(rec("p", b"pipe", 0)), "bad_entry", "pipe"),
    ("absurd-size", archive(rec("f", b"big", 1 << 62)), "too_large", "big"),
    ("negative-size", archive(rec("f", b"neg", -1)), "bad_header", "neg"),
    ("size-not-int", archive(rec("f", b"s", b"12")), "bad_header", "s"),
    ("dir-with-size", archive(rec("d", b"dd", 5)), "bad_header", "dd"),
    ("truncated-no-end", archive(f(b"a"), end=False), "truncated", None),
    ("truncated-mid-file", archive(rec("f", b"half", 100) + b"abc", end=False), "truncated", "half"),
    ("trailing-data", archive(f(b"a")) + b"more", "trailing_data", None),
    ("bad-magic", archive(f(b"a"), magic=b"ustar\0\0\0\0\0\0\0"), "bad_header", None),
    ("garbage-header", MAGIC + struct.pack(">I", 3) + b"\xc1\xc1\xc1" + END, "bad_header", None),
    ("header-not-list", MAGIC + (lambda r: struct.pack(">I", len(r)) + r)(msgpack.packb({"a": 1})) + END,
     "bad_header", None),
    ("huge-header", MAGIC + struct.pack(">I", 1 << 30) + b"x" * 10, "bad_header", None),
    ("path-not-bytes", archive(rec("f", 7, 1) + b"x"), "bad_header", None),
]


def _snapshot(root: Path, skip: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p == skip:
                continue
            st = os.lstat(p)
            if p.is_symlink():
                out[str(p)] = ("l", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("f", p.read_bytes(), st.st_mode)
            else:
                out[str(p)] = ("d", st.st_mode)
    return out


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("untouched")
    (tmp_path / "evil").write_text("original")
    work = tmp_path / "work"
    work.mkdir()
    return tmp_path, work / "out"


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,raw,reason,entry", CASES, ids=[c[0] for c in CASES])
def test_hostile_archive_rejected(arena, name, raw, reason, entry) -> None:
    top, out = arena
    before = _snapshot(top, out)
    s = Store.open(top / "store", state_dir=top / "state")
    try:
        digest = s.put_blob(raw)
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, out)
        assert err.value.reason == f"store.archive.{reason}", err.value.message
        if entry is not None:
            assert err.value.obj == entry
        # The same archive through unpacked(): rejected, and no published copy.
        with pytest.raises(StoreError) as err2:
            s.unpacked(digest)
        assert err2.value.reason == f"store.archive.{reason}"
        assert not os.path.exists(os.path.join(s.unpacked_dir, digest[7:]))
    finally:
        s.close()
    after = _snapshot(top, out)
    for key in list(after):
        if key.startswith(str(top / "store")) or key.startswith(str(top / "state")):
            after.pop(key)
    assert after == before


def test_decompression_bomb_stops_at_the_limit(arena) -> None:
    top, out = arena
    s = Store.open(top / "store", state_dir=top / "state", limits=Limits(max_bytes=1 << 20))
    try:
        def chunks():
            yield MAGIC + rec("f", b"bomb", 256 << 20)
            zero = bytes(1 << 20)
            for _ in range(256):
                yield zero
            yield END
        digest, _ = s.objects.put_chunks(chunks())
        assert os.path.getsize(s.objects.path(digest)) < 1 << 20  # small on disk, huge inside
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, out)
        assert err.value.reason == "store.archive.too_large" and err.value.obj == "bomb"
        assert not os.path.exists(out / "bomb")
    finally:
        s.close()


def test_too_many_entries(arena) -> None:
    top, out = arena
    raw = archive(*(f(b"f%04d" % i) for i in range(20)))
    with pytest.raises(StoreError) as err:
        extract(zstandard.ZstdDecompressor().stream_reader(
            zstandard.ZstdCompressor().compress(raw)), str(out), limits=Limits(max_entries=10))
    assert err.value.reason == "store.archive.too_many_entries" and err.value.obj == "f0010"


def test_destination_planted_symlink_is_refused(arena) -> None:
    top, out = arena
    out.symlink_to(top / "sentinel")
    s = Store.open(top / "store", state_dir=top / "state")
    try:
        digest = s.put_blob(archive(f(b"keep", b"overwritten")))
        with pytest.raises(StoreError) as err:
            s.extract_tree(digest, out)
        assert err.value.reason == "store.tree.dest_not_a_directory"
        assert (top / "sentinel" / "keep").read_text() == "untouched"
    finally:
        s.close()


def test_packing_refuses_devices_and_bad_paths(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "store")
    try:
        src = tmp_path / "src"
        src.mkdir()
        os.mkfifo(src / "fifo")
        with pytest.raises(StoreError) as err:
            s.put_tree(src)
        assert err.value.reason == "store.tree.unsupported_file" and err.value.obj == "fifo"
        os.unlink(src / "fifo")
        with pytest.raises(StoreError) as err:
            s.put_tree(src, paths=("../x",))
        assert err.value.reason == "store.tree.bad_path"
        with pytest.raises(StoreError) as err:
            s.put_tree(src, paths=("missing/",))
        assert err.value.reason == "store.tree.missing_path"
    finally:
        s.close()


LINKS = {  # name -> target: every kind a real tree holds (a virtualenv, a Debian tree)
    "abs": "/etc/passwd", "abs-dir": "/etc", "up": "../..", "sneaky": "a/../../sentinel",
    "dangling": "nowhere", "inside": "d", "d/out": "../../sentinel/keep", "self": "self",
}


def test_links_are_data_stored_and_extracted_as_links_never_followed(arena) -> None:
    """Symlinks leading anywhere are stored as their target text and come back as the
    same links; packing never reads through them and extraction never writes through
    them (the sentinel beside the target is unchanged)."""
    top, out = arena
    src = top / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "file").write_text("x")
    for name, target in LINKS.items():
        os.symlink(target, src / name)
    before = _snapshot(top / "sentinel", out)
    s = Store.open(top / "store", state_dir=top / "state")
    try:
        manifest: dict[str, tuple[str, str]] = {}
        digest = s.put_tree(src, manifest=manifest)
        assert {p for p, (kind, _) in manifest.items() if kind == "l"} == set(LINKS)
        s.extract_tree(digest, out)
        got = {str(p.relative_to(out)): os.readlink(p) for p in out.rglob("*") if p.is_symlink()}
        assert got == LINKS
        assert (out / "d" / "file").read_text() == "x"
        ro = Path(s.unpacked(digest))  # the host-local copy steps mount: the same links
        assert {str(p.relative_to(ro)): os.readlink(p) for p in ro.rglob("*")
                if p.is_symlink()} == LINKS
        assert s.put_tree(out) == digest  # canonical: the round trip is the same tree
    finally:
        s.close()
    assert _snapshot(top / "sentinel", out) == before


def test_a_link_named_as_a_directory_carries_its_content(tmp_path: Path) -> None:
    """``dir_links``: a path that is a link packed as the real directory it leads to;
    every other link, inside it too, stays a link."""
    src = tmp_path / "src"
    (src / "build" / "out").mkdir(parents=True)
    (src / "build" / "out" / "app").write_text("bin")
    os.symlink("/usr/bin/python3", src / "build" / "out" / "python")
    os.symlink("build/out", src / "result")
    s = Store.open(tmp_path / "store")
    try:
        digest = s.put_tree(src, paths=("result",), dir_links={"result": "build/out"})
        s.extract_tree(digest, tmp_path / "x")
        assert (tmp_path / "x" / "result").is_dir() and not (tmp_path / "x" / "result").is_symlink()
        assert (tmp_path / "x" / "result" / "app").read_text() == "bin"
        assert os.readlink(tmp_path / "x" / "result" / "python") == "/usr/bin/python3"
        assert not (tmp_path / "x" / "build").exists()
        with pytest.raises(StoreError) as err:  # the directory given must have no link on it
            s.put_tree(src, paths=("result",), dir_links={"result": "result"})
        assert err.value.reason == "store.tree.bad_path"
    finally:
        s.close()


def test_a_tree_nested_deeper_than_the_open_file_limit_packs_and_extracts(tmp_path: Path) -> None:
    """A step can nest 1,500 directories (``mkdir -p d/d/...``): packing must not recurse
    per level, nor extraction hold one fd per level, under the usual soft limit of 1,024
    open files (a service's default; this machine's shells allow more)."""
    import io
    import resource
    import subprocess

    from procs.leftovers import remove_tree
    from store.tree import pack_bytes

    src, dest = tmp_path / "src", tmp_path / "dest"
    deep = "d/" * 1500
    src.mkdir()
    try:
        subprocess.run(f"mkdir -p {deep} {'d/' * 700}e && echo bottom > {deep}f && "
                       f"echo side > {'d/' * 700}e/g", shell=True, cwd=src, check=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        try:
            raw = pack_bytes(str(src))
            extract(io.BytesIO(raw), str(dest), readonly=True)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert pack_bytes(str(dest)) == raw
        fd = os.open(dest, os.O_RDONLY)  # below PATH_MAX from here
        try:
            assert os.stat(deep, dir_fd=fd).st_mode & 0o777 == 0o555  # closed read-only
            with open(os.open(deep + "f", os.O_RDONLY, dir_fd=fd)) as bottom:
                assert bottom.read() == "bottom\n"
        finally:
            os.close(fd)
    finally:  # pytest's own clean-up of old temporary directories recurses
        remove_tree(str(src))
        remove_tree(str(dest))
