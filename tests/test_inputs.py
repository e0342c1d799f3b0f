"""Input files: listing (git / .kataignore), narrowing by inputs:, hashing with a stat cache."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from kata import inputs
from kata.inputs import InputSet, MemoryStatCache, Snapshot
from support.git import git


def _tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o644)


def _git(root, *args) -> None:
    assert shutil.which("git"), "git is required (apt-get install git)"
    git(root, *args)


FILES = {"src/a.c": "int a;", "src/b.c": "int b;", "src/gen/x.o": "obj", "README.md": "hi",
         "docs/guide.md": "guide", "build/out.bin": "bin"}


def test_walk_honours_kataignore(tmp_path) -> None:
    _tree(tmp_path, FILES)
    (tmp_path / ".kataignore").write_text("build/\n*.o\n")
    snap = Snapshot(tmp_path)
    assert snap.paths == (".kataignore", "README.md", "docs/guide.md", "src/a.c", "src/b.c")


def test_git_lists_tracked_and_untracked_not_ignored(tmp_path) -> None:
    _tree(tmp_path, FILES)
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("build/\n")
    (tmp_path / ".kataignore").write_text("docs/\n")
    _git(tmp_path, "add", "src/a.c", "README.md")
    (tmp_path / "README.md").unlink()  # tracked but deleted: listed by git, skipped here
    snap = Snapshot(tmp_path)
    assert "build/out.bin" not in snap.paths and "docs/guide.md" not in snap.paths
    assert "src/b.c" in snap.paths  # untracked, not ignored
    names = [f.path for f in snap.input_set().files]
    assert names == [".gitignore", ".kataignore", "src/a.c", "src/b.c", "src/gen/x.o"]


def test_inputs_globs_narrow(tmp_path) -> None:
    _tree(tmp_path, FILES)
    snap = Snapshot(tmp_path)
    assert [f.path for f in snap.input_set(["src/**", "!*.o"]).files] == ["src/a.c", "src/b.c"]
    assert [f.path for f in snap.input_set(["*.md"]).files] == ["README.md", "docs/guide.md"]
    assert snap.input_set(["nothing/"]).files == ()


def test_digests_modes_symlinks(tmp_path) -> None:
    _tree(tmp_path, {"a": "x", "run.sh": "#!/bin/sh"})
    (tmp_path / "run.sh").chmod(0o755)
    os.symlink("a", tmp_path / "link")
    files = {f.path: f for f in Snapshot(tmp_path).input_set().files}
    assert files["a"].digest == "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert (files["a"].mode, files["run.sh"].mode, files["link"].mode) == (0o644, 0o755, 0o120000)
    assert files["link"].digest == "sha256:" + hashlib.sha256(b"a").hexdigest()


def test_set_digest_depends_on_content_path_and_mode(tmp_path) -> None:
    _tree(tmp_path, {"a": "x"})
    d0 = Snapshot(tmp_path).input_set().digest
    assert Snapshot(tmp_path).input_set().digest == d0
    (tmp_path / "a").chmod(0o755)
    d1 = Snapshot(tmp_path).input_set().digest
    (tmp_path / "a").rename(tmp_path / "b")
    d2 = Snapshot(tmp_path).input_set().digest
    (tmp_path / "b").write_text("y")
    d3 = Snapshot(tmp_path).input_set().digest
    assert len({d0, d1, d2, d3}) == 4
    assert InputSet.of(()).digest == inputs.EMPTY.digest


@pytest.fixture
def count_reads(monkeypatch):
    calls = []
    real = hashlib.file_digest

    def counting(f, name):
        calls.append(f.name)
        return real(f, name)

    monkeypatch.setattr(inputs.hashlib, "file_digest", counting)
    return calls


def test_warm_run_reads_nothing(tmp_path, monkeypatch, count_reads) -> None:
    monkeypatch.setattr(inputs, "RACY_NS", -10**18)  # treat fresh files as settled
    _tree(tmp_path, FILES)
    cache = MemoryStatCache()
    cold = Snapshot(tmp_path, cache).input_set()
    assert len(count_reads) == len(FILES)
    assert set(cache.entries) == {str(tmp_path / p) for p in FILES}
    count_reads.clear()
    warm = Snapshot(tmp_path, cache).input_set()
    assert warm == cold and count_reads == []
    # a change of content and mtime is seen; only that file is read again
    p = tmp_path / "src/a.c"
    p.write_text("int A;")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    again = Snapshot(tmp_path, cache).input_set()
    assert count_reads == [str(p)] and again.digest != cold.digest


def test_racily_fresh_files_are_not_cached(tmp_path) -> None:
    _tree(tmp_path, {"new": "1", "old": "2"})
    past = 1_600_000_000 * 10**9
    os.utime(tmp_path / "old", ns=(past, past))
    cache = MemoryStatCache()
    Snapshot(tmp_path, cache).input_set()
    assert set(cache.entries) == {str(tmp_path / "old")}


def test_stat_cache_entries_have_the_protocol_shape(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(inputs, "RACY_NS", -10**18)
    _tree(tmp_path, {"f": "data"})
    cache = MemoryStatCache()
    Snapshot(tmp_path, cache).input_set()
    st = (tmp_path / "f").stat()
    assert cache.get_many([str(tmp_path / "f"), "/nope"]) == {
        str(tmp_path / "f"): (st.st_size, st.st_mtime_ns, st.st_ino,
                              "sha256:" + hashlib.sha256(b"data").hexdigest())}


def test_non_utf8_file_names_hash(tmp_path) -> None:
    (tmp_path / "ok").write_text("x")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9"), "wb") as f:
        f.write(b"y")
    s = Snapshot(tmp_path).input_set()
    assert len(s.entries) == 2 and s.digest.startswith("sha256:")


def test_narrow_sets_after_the_full_set_reuse_its_digests(tmp_path, count_reads) -> None:
    _tree(tmp_path, FILES)
    snap = Snapshot(tmp_path)
    everything = snap.input_set()
    n = len(count_reads)
    narrow = snap.input_set(["src/*.c"])
    again = snap.input_set(["src/**", "!*.o"])
    assert len(count_reads) == n  # nothing read twice
    assert narrow == again and [e[0] for e in narrow.entries] == ["src/a.c", "src/b.c"]
    assert set(narrow.entries) <= set(everything.entries)
    # narrow first, then everything: the rest is hashed, the narrow part not again
    snap = Snapshot(tmp_path)
    count_reads.clear()
    snap.input_set(["src/*.c"])
    snap.input_set()
    assert sorted(count_reads) == sorted(str(tmp_path / p) for p in FILES)
