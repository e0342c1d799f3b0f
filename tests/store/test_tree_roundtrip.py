"""Trees: pack -> store -> extract reproduces the directory; the digest is canonical."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import Store
from store.tree import pack_bytes

NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1, max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)

# A tree: name -> bytes (file), ("x", bytes) executable, ("l", target) symlink, dict (directory)
LEAF = st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.just("x"), st.binary(max_size=200)),
)
TREE = st.recursive(
    st.dictionaries(NAME, LEAF, max_size=4),
    lambda children: st.dictionaries(NAME, st.one_of(LEAF, children), max_size=4),
    max_leaves=25,
)


def _norm(name: str) -> str:
    import unicodedata
    return unicodedata.normalize("NFC", name)


def build(root: Path, spec: dict, links: list[tuple[Path, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for name, value in spec.items():
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        p = root / name
        if isinstance(value, dict):
            build(p, value, links)
        elif isinstance(value, tuple):
            p.write_bytes(value[1])
            p.chmod(0o700)
        else:
            p.write_bytes(value)
            p.chmod(0o600)
    if spec:
        first = sorted(spec)[0]
        links.append((root / ("link-" + str(len(links))), first))


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("d",)
            else:
                out[rel] = ("f", p.read_bytes(), bool(st_.st_mode & 0o100))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=TREE)
def test_round_trip(tmp_path_factory, spec) -> None:
    base = tmp_path_factory.mktemp("rt")
    src = base / "src"
    links: list[tuple[Path, str]] = []
    build(src, spec, links)
    for where, target in links:
        if not where.exists():
            where.symlink_to(target)
    (src / "empty-dir").mkdir(exist_ok=True)
    with Store.open(base / "store") as s:
        digest = s.put_tree(src)
        out = base / "out"
        s.extract_tree(digest, out)
        assert snapshot(out) == snapshot(src)
        for dirpath, dirnames, filenames in os.walk(out):
            for name in filenames:
                st_ = os.lstat(Path(dirpath) / name)
                if stat.S_ISREG(st_.st_mode):
                    assert stat.S_IMODE(st_.st_mode) in (0o644, 0o755)
        ro = Path(s.unpacked(digest))
        assert snapshot(ro) == snapshot(src)
        assert s.put_tree(out) == digest


def test_digest_ignores_mtime_owner_order_and_level(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, names in ((a, ["z", "m", "a"]), (b, ["a", "z", "m"])):
        for n in names:  # different creation order, so a different directory listing order
            (root / "sub").mkdir(parents=True, exist_ok=True)
            (root / "sub" / n).write_text(n)
            (root / n).write_text(n * 3)
    os.utime(b / "a", (1, 1))
    os.chown(b / "z", 1234, 1234)
    (a / "m").chmod(0o600)
    (b / "m").chmod(0o664)
    assert pack_bytes(str(a)) == pack_bytes(str(b))
    with Store.open(tmp_path / "s1", level=1) as s1, Store.open(tmp_path / "s2", level=19) as s2:
        assert s1.put_tree(a) == s2.put_tree(b)


def test_subset_hard_links_and_exec_bits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dist" / "deep").mkdir(parents=True)
    (src / "bin").mkdir()
    (src / "dist" / "deep" / "f").write_text("f")
    (src / "bin" / "app").write_text("#!/bin/sh\n")
    (src / "bin" / "app").chmod(0o755)
    (src / "bin" / "other").write_text("no")
    os.link(src / "dist" / "deep" / "f", src / "dist" / "hard")
    (src / "secret").write_text("not packed")
    with Store.open(tmp_path / "store") as s:
        digest = s.put_tree(src, paths=("dist/", "bin/app"))
        out = tmp_path / "out"
        s.extract_tree(digest, out)
        assert snapshot(out) == {
            "bin": ("d",), "dist": ("d",), "dist/deep": ("d",),
            "bin/app": ("f", b"#!/bin/sh\n", True),
            "dist/deep/f": ("f", b"f", False), "dist/hard": ("f", b"f", False),
        }
        assert os.lstat(out / "dist" / "hard").st_nlink == 1


def test_golden_archive_bytes(tmp_path: Path) -> None:
    """The on-disk format is a contract: a change to it must show up here as a diff."""
    src = tmp_path / "g"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    (src / "bin" / "run").chmod(0o755)
    (src / "empty").mkdir()
    (src / "a.txt").write_bytes(b"hello")
    (src / "link").symlink_to("a.txt")
    raw = pack_bytes(str(src))
    assert raw == (
        b"kata-tree/1\n"
        b"\x00\x00\x00\x0b\x93\xa1f\xc4\x05a.txt\x05hello"
        b"\x00\x00\x00\x09\x93\xa1d\xc4\x03bin\x00"
        b"\x00\x00\x00\x0d\x93\xa1x\xc4\x07bin/run\x0a#!/bin/sh\n"
        b"\x00\x00\x00\x0b\x93\xa1d\xc4\x05empty\x00"
        b"\x00\x00\x00\x10\x93\xa1l\xc4\x04link\xc4\x05a.txt"
        b"\x00\x00\x00\x03\x91\xa1e"
    )
    with Store.open(tmp_path / "store") as s:
        import hashlib
        assert s.put_tree(src) == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_put_tree_manifest_is_what_was_stored(tmp_path: Path) -> None:
    """`put_tree(manifest=)` reports each file's and link's digest from the stored stream:
    small files (batched), a file bigger than one chunk, an empty file, an executable,
    a link, a non-UTF-8 name; directories are not listed."""
    import hashlib

    from store.tree import SMALL_FILE, tap_manifest

    def sha(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    root = tmp_path / "t"
    (root / "d" / "e").mkdir(parents=True)
    big = os.urandom(SMALL_FILE * 5 + 17)
    files = {"a": b"one", "d/e/big": big, "d/empty": b"", "run": b"#!/bin/sh\n"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
        (root / rel).chmod(0o644)
    (root / "run").chmod(0o755)
    os.symlink("a", root / "d" / "ln")
    with open(os.path.join(os.fsencode(root), b"caf\xe9"), "wb") as f:
        f.write(b"latin")
    expected = {"a": ("f", sha(b"one")), "d/e/big": ("f", sha(big)), "d/empty": ("f", sha(b"")),
                "run": ("x", sha(b"#!/bin/sh\n")), "d/ln": ("l", sha(b"a")),
                os.fsdecode(b"caf\xe9"): ("f", sha(b"latin"))}
    with Store.open(tmp_path / "store") as s:
        got: dict = {}
        digest = s.put_tree(root, manifest=got)
        assert got == expected
        # the manifest describes the stored object: the same digests read back from it
        assert digest == "sha256:" + hashlib.sha256(pack_bytes(str(root))).hexdigest()
    # chunk boundaries anywhere give the same manifest: every byte apart, odd-sized pieces
    raw = pack_bytes(str(root), ["a", "d/ln", "d/empty", "run"])
    split: dict = {}
    assert b"".join(tap_manifest((raw[i:i + 1] for i in range(len(raw))), split)) == raw
    assert split == {k: v for k, v in expected.items() if k in ("a", "d/ln", "d/empty", "run")}
    raw = pack_bytes(str(root))
    split = {}
    assert b"".join(tap_manifest((raw[i:i + 4099] for i in range(0, len(raw), 4099)), split)) == raw
    assert split == expected
