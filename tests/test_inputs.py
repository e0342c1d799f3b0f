"""Input files: listing (git / .kataignore), narrowing by inputs:, hashing with a stat cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

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
    # a leading '/' anchors at the root, as in .gitignore
    assert [f.path for f in snap.input_set(["/*.md"]).files] == ["README.md"]


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


def _later(monkeypatch, seconds: float) -> None:
    """Hash as if `seconds` had passed since the files were written (ctime cannot be set
    back, so a settled file is simulated by moving the racy threshold forward)."""
    monkeypatch.setattr(inputs, "RACY_NS", inputs.RACY_NS - int(seconds * 1e9))


def test_racily_fresh_files_are_not_cached(tmp_path, monkeypatch) -> None:
    _tree(tmp_path, {"new": "1", "old": "2"})
    # an old mtime does not settle a file: its ctime is now (`cp -p`, `touch -d`)
    past = 1_600_000_000 * 10**9
    os.utime(tmp_path / "old", ns=(past, past))
    cache = MemoryStatCache()
    got = {f.path: f.digest for f in Snapshot(tmp_path, cache).input_set().files}
    assert cache.entries == {}
    assert got["old"] == "sha256:" + hashlib.sha256(b"2").hexdigest()
    # within the racy window still (ctime 1.5 s old): not cached either
    _later(monkeypatch, 1.5)
    Snapshot(tmp_path, cache).input_set()
    assert cache.entries == {}


def test_settled_files_are_cached(tmp_path, monkeypatch) -> None:
    _tree(tmp_path, {"a": "1"})
    _later(monkeypatch, 2.5)
    cache = MemoryStatCache()
    Snapshot(tmp_path, cache).input_set()
    assert set(cache.entries) == {str(tmp_path / "a")}


def test_stat_cache_entries_have_the_protocol_shape(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(inputs, "RACY_NS", -10**18)
    _tree(tmp_path, {"f": "data"})
    cache = MemoryStatCache()
    Snapshot(tmp_path, cache).input_set()
    st = (tmp_path / "f").stat()
    assert cache.get_many([str(tmp_path / "f"), "/nope"]) == {
        str(tmp_path / "f"): (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns,
                              st.st_ctime_ns, "sha256:" + hashlib.sha256(b"data").hexdigest())}


# -- each stat field decides: a cached entry that differs from the file in that field
#    alone is not trusted (git's ie_match_stat compares the same fields)

STAT_FIELDS = ("dev", "ino", "mode", "size", "mtime_ns", "ctime_ns")
BOGUS = "sha256:" + "f" * 64  # what a wrongly trusted entry would hand out


@pytest.mark.parametrize("field", [None, *STAT_FIELDS])
def test_each_stat_field_invalidates_the_cached_digest(tmp_path, field) -> None:
    _tree(tmp_path, {"f": "content"})
    path = str(tmp_path / "f")
    key = list(inputs.stat_key(os.lstat(path)))
    if field is not None:
        key[STAT_FIELDS.index(field)] += 1
    cache = MemoryStatCache()
    cache.entries[path] = (*key, BOGUS)
    (entry,) = Snapshot(tmp_path, cache).input_set().entries
    if field is None:  # the control: an entry matching in every field is trusted
        assert entry[1] == BOGUS
    else:
        assert entry[1] == "sha256:" + hashlib.sha256(b"content").hexdigest()


def _settled(monkeypatch, tmp_path, files):
    """Files written and hashed into a cache as if long ago; returns the cache."""
    _tree(tmp_path, files)
    cache = MemoryStatCache()
    with monkeypatch.context() as m:
        _later(m, 10)
        Snapshot(tmp_path, cache).input_set()
    assert set(cache.entries) == {str(tmp_path / p) for p in files}
    return cache


def _digest_of(tmp_path, cache, rel):
    return {f.path: f for f in Snapshot(tmp_path, cache).input_set().files}[rel]


def test_same_size_same_mtime_rewrite_is_read_again(tmp_path, monkeypatch) -> None:
    """`cp -p` / `touch -d` onto the same inode: only ctime tells."""
    cache = _settled(monkeypatch, tmp_path, {"lib.txt": "lib v1.0\n"})
    p = tmp_path / "lib.txt"
    before = p.stat()
    p.write_text("lib v2.0\n")
    os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = p.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) == \
        (before.st_ino, before.st_size, before.st_mtime_ns, before.st_mode)
    assert _digest_of(tmp_path, cache, "lib.txt").digest == \
        "sha256:" + hashlib.sha256(b"lib v2.0\n").hexdigest()


def test_cp_p_over_the_file(tmp_path, monkeypatch) -> None:
    """The issue's reproduction at the unit level: `cp -p` of a file with the same size
    and the same (old) mtime over a cached one."""
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "lib.txt").write_text("lib v2.0\n")
    os.utime(tmp_path / "v2" / "lib.txt", ns=(10**9, 10**9))
    (tmp_path / "repo").mkdir()
    repo = tmp_path / "repo"
    cache = _settled(monkeypatch, repo, {"vendor/lib.txt": "lib v1.0\n"})
    os.utime(repo / "vendor/lib.txt", ns=(10**9, 10**9))
    with monkeypatch.context() as m:  # re-cache with the old mtime, settled
        _later(m, 10)
        Snapshot(repo, cache).input_set()
    subprocess.run(["cp", "-p", str(tmp_path / "v2" / "lib.txt"), str(repo / "vendor/lib.txt")],
                   check=True)
    assert _digest_of(repo, cache, "vendor/lib.txt").digest == \
        "sha256:" + hashlib.sha256(b"lib v2.0\n").hexdigest()


def test_ctime_only_change_rereads(tmp_path, monkeypatch, count_reads) -> None:
    """chmod and back: every field but ctime is as cached; the file is read again."""
    cache = _settled(monkeypatch, tmp_path, {"f": "same"})
    p = tmp_path / "f"
    old = cache.entries[str(p)]
    p.chmod(0o755)
    p.chmod(0o644)
    count_reads.clear()
    f = _digest_of(tmp_path, cache, "f")
    assert count_reads == [str(p)]
    assert (f.digest, f.mode) == ("sha256:" + hashlib.sha256(b"same").hexdigest(), 0o644)
    assert list(inputs.stat_key(p.stat()))[:5] == list(old[:5])


def test_mode_change_is_seen(tmp_path, monkeypatch) -> None:
    cache = _settled(monkeypatch, tmp_path, {"run.sh": "#!/bin/sh\n"})
    (tmp_path / "run.sh").chmod(0o755)
    f = _digest_of(tmp_path, cache, "run.sh")
    assert (f.mode, f.digest) == (0o755, "sha256:" + hashlib.sha256(b"#!/bin/sh\n").hexdigest())


def test_rename_over_with_the_same_size_and_mtime(tmp_path, monkeypatch) -> None:
    """A new inode (an editor's save, `git checkout`) with the old size and mtime."""
    cache = _settled(monkeypatch, tmp_path, {"f": "AAAA"})
    p = tmp_path / "f"
    st = p.stat()
    tmp = tmp_path / "f.new"
    tmp.write_text("BBBB")
    tmp.chmod(0o644)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, p)
    assert p.stat().st_ino != st.st_ino
    assert _digest_of(tmp_path, cache, "f").digest == "sha256:" + hashlib.sha256(b"BBBB").hexdigest()


def test_rehash_stat_cache_reads_everything_and_refreshes(tmp_path, monkeypatch,
                                                          count_reads) -> None:
    """`--no-cache`: nothing cached is trusted; what is read is recorded again."""
    cache = _settled(monkeypatch, tmp_path, {"a": "1", "b": "2"})
    path = str(tmp_path / "a")
    cache.entries[path] = (*cache.entries[path][:6], BOGUS)  # a poisoned entry
    count_reads.clear()
    with monkeypatch.context() as m:
        _later(m, 10)
        got = _digest_of(tmp_path, inputs.RehashStatCache(cache), "a")
    assert got.digest == "sha256:" + hashlib.sha256(b"1").hexdigest()
    assert sorted(count_reads) == [path, str(tmp_path / "b")]
    assert cache.entries[path][6] == got.digest  # refreshed
    assert _digest_of(tmp_path, cache, "a").digest == got.digest


def test_a_file_changing_while_read_is_not_cached(tmp_path, monkeypatch) -> None:
    _tree(tmp_path, {"f": "one"})
    real = hashlib.file_digest

    def racing(f, name):  # another writer appends while we read
        out = real(f, name)
        with open(tmp_path / "f", "a") as w:
            w.write("more")
        return out

    monkeypatch.setattr(inputs.hashlib, "file_digest", racing)
    _later(monkeypatch, 10)
    cache = MemoryStatCache()
    Snapshot(tmp_path, cache).input_set()
    assert cache.entries == {}


def test_mismatch_names_the_file_stored_differently() -> None:
    d = "sha256:" + "1" * 64
    s = InputSet.of_entries([("a", d, 1, 0o644), ("b", d, 1, 0o755), ("l", d, 1, 0o120000)])
    good = {"a": ("f", d), "b": ("x", d), "l": ("l", d)}
    assert inputs.mismatch(s, good) is None
    assert inputs.mismatch(s, {**good, "b": ("f", d)}) == "b"
    assert inputs.mismatch(s, {**good, "a": ("f", "sha256:" + "2" * 64)}) == "a"
    assert inputs.mismatch(s, {k: v for k, v in good.items() if k != "l"}) == "l"
    assert inputs.mismatch(s, {**good, "z": ("f", d)}) == "z"


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


def test_executable_means_owner_executable_as_in_git_and_the_tree(tmp_path) -> None:
    """git (and the store's tree format) call a file executable when its owner may run it;
    a group- or other-only x bit is 0644 in both, so the key covers what the step gets."""
    _tree(tmp_path, {"g": "1", "u": "2"})
    (tmp_path / "g").chmod(0o654)
    (tmp_path / "u").chmod(0o744)
    modes = {f.path: f.mode for f in Snapshot(tmp_path).input_set().files}
    assert modes == {"g": 0o644, "u": 0o755}
    from store.tree import pack_bytes

    raw = pack_bytes(str(tmp_path))
    assert b"\x93\xa1f\xc4\x01g" in raw and b"\x93\xa1x\xc4\x01u" in raw


@pytest.mark.integration
def test_a_repository_on_sshfs_is_read_every_run(sshd, tmp_path, monkeypatch) -> None:
    """sshfs reports mtime as ctime: a same-size rewrite that restores the mtime changes
    no stat field there, so on FUSE the stat cache is not trusted (every file is read)."""
    from support.sshfs import umount

    remote, mnt = tmp_path / "remote", tmp_path / "mnt"
    remote.mkdir()
    sshd.mount(remote, mnt)
    try:
        assert not inputs.ctime_is_kept(str(mnt)) and inputs.ctime_is_kept(str(tmp_path))
        cache = _settled(monkeypatch, mnt, {"lib.txt": "lib v1.0\n"})
        p = mnt / "lib.txt"
        before = p.stat()
        p.write_text("lib v2.0\n")
        os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = p.stat()
        # what makes this filesystem different: not one stat field moved
        assert inputs.stat_key(after) == inputs.stat_key(before)
        assert _digest_of(mnt, cache, "lib.txt").digest == \
            "sha256:" + hashlib.sha256(b"lib v2.0\n").hexdigest()
    finally:
        umount(mnt)


def test_an_empty_inputs_list_selects_no_file_and_no_key_selects_every_file(tmp_path) -> None:
    """``inputs: []`` is a step that reads no repository file (it works on its
    dependencies' artifacts): an edit anywhere leaves its key alone. Leaving the key out
    is the whole repository."""
    from kata.compile import compile_pipeline
    from kata.loader import load_text

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a\n")
    text = ("steps:\n"
            "  - {name: none, image: alpine, inputs: []}\n"
            "  - {name: all, image: alpine}\n")

    def compiled():
        return compile_pipeline(load_text(text), resolver=lambda ref: "sha256:" + "0" * 64,
                                repo_root=tmp_path, stat_cache=MemoryStatCache())

    first = compiled()
    assert first.nodes["none"].inputs.files == ()
    assert [f.path for f in first.nodes["all"].inputs.files] == ["src/a.txt"]
    (tmp_path / "src" / "a.txt").write_text("edited\n")
    second = compiled()
    assert second.nodes["none"].drv_hash == first.nodes["none"].drv_hash
    assert second.nodes["all"].drv_hash != first.nodes["all"].drv_hash


def test_a_kataignore_that_is_no_utf8_names_the_byte(tmp_path) -> None:
    """Found by a review: it said "cannot read .kataignore: 'utf-8' codec can't decode
    byte 0xff in position 5: invalid start byte" (Python's words, an offset in bytes)."""
    from kata.errors import KataError

    (tmp_path / ".kataignore").write_bytes(b"ok\nbu\xffild/\n")
    with pytest.raises(KataError) as info:
        Snapshot(tmp_path)
    assert info.value.reason == "inputs.kataignore"
    assert info.value.message == f"{tmp_path / '.kataignore'}:2:3: the file is not valid UTF-8"


def _someone_elses_repository(tmp_path):
    """A committed repository with a .gitignore'd file, owned by a uid that is not ours:
    git's "dubious ownership" check refuses it (a tarball unpacked as root keeps its
    owner; a CI checkout made by another user)."""
    repo = tmp_path / "r"
    (repo / "build").mkdir(parents=True)
    (repo / ".gitignore").write_text("build/\n")
    (repo / "build" / "x").write_text("ignored\n")
    (repo / "a.txt").write_text("a\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    for d, dirs, files in os.walk(repo):
        for name in [d, *(os.path.join(d, n) for n in dirs + files)]:
            os.lchown(name, 4321, 4321)
    return repo


def test_a_repository_git_refuses_for_its_owner_is_an_error_not_a_directory_walk(tmp_path):
    """Walking it instead made .gitignore'd files inputs, silently (found by the psycopg2
    trial: an sdist unpacked by root keeps its packager's uid)."""
    from kata.errors import KataError

    assert os.geteuid() == 0  # the suite runs as root (.ci/test)
    repo = _someone_elses_repository(tmp_path)
    with pytest.raises(KataError) as err:
        Snapshot(repo)
    assert err.value.reason == "git.unsafe_repository"
    assert err.value.exit_code == 2
    assert "safe.directory" in str(err.value) and str(repo) in str(err.value)
    assert "uid 4321" in str(err.value)
