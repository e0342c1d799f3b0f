"""Cache key files are read only through the repository listing: regular files of the
repository, links hashed as links, devices never read, a directory symlinked out of the
repository never entered, each file bounded (issue 10, item 4)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from kata import inputs
from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.inputs import MAX_KEY_FILE, Snapshot
from kata.loader import load_text


def _resolver(ref) -> str:
    return "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest()


def _key_set(root: Path, patterns: list[str]):
    return Snapshot(root).key_set(patterns, what="step 'a': cache.key_files")


def test_symlink_key_file_is_hashed_as_a_link_not_followed(tmp_path: Path) -> None:
    (tmp_path / "lock").symlink_to("/etc/shadow")
    got = _key_set(tmp_path, ["lock"])
    assert got.entries == (("lock", "sha256:" + hashlib.sha256(b"/etc/shadow").hexdigest(),
                            len("/etc/shadow"), 0o120000),)


def test_device_in_the_repository_is_not_read(tmp_path: Path) -> None:
    os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # a /dev/zero
    (tmp_path / "lock").write_text("v1\n")
    got = _key_set(tmp_path, ["*"])
    assert [e[0] for e in got.entries] == ["lock"]


def test_directory_symlinked_outside_is_not_entered(tmp_path: Path) -> None:
    """git lists index entries: a tracked ``cfg/passwd`` whose directory became a symlink
    to /etc would lstat /etc/passwd. The file is refused, not read."""
    repo = tmp_path / "repo"
    (repo / "cfg").mkdir(parents=True)
    (repo / "cfg" / "passwd").write_text("mine\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=a@b", "-c", "user.name=a",
                                                "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "cfg" / "passwd").unlink()
    (repo / "cfg").rmdir()
    (repo / "cfg").symlink_to("/etc")
    with pytest.raises(KataError) as err:
        _key_set(repo, ["cfg/passwd"])
    assert err.value.reason == "inputs.unreadable"
    assert "cfg/passwd" in err.value.message and "outside the repository" in err.value.message


def test_key_file_size_is_bounded(tmp_path: Path) -> None:
    assert MAX_KEY_FILE == 64 << 20
    (tmp_path / "small.lock").write_text("x")
    with open(tmp_path / "huge.lock", "wb") as f:
        f.truncate(MAX_KEY_FILE + 1)  # sparse: nothing is written, nothing must be read
    reads = []
    real = inputs.hashlib.file_digest
    try:
        inputs.hashlib.file_digest = lambda f, n: reads.append(f.name) or real(f, n)
        with pytest.raises(KataError) as err:
            _key_set(tmp_path, ["*.lock"])
    finally:
        inputs.hashlib.file_digest = real
    assert reads == []  # refused before anything was read
    assert err.value.reason == "inputs.key_file_too_large" and err.value.exit_code == 2
    assert err.value.message == ("step 'a': cache.key_files: huge.lock is 64.0 MiB; key files "
                                 "are limited to 64 MiB (a lock file names a cache): narrow "
                                 "the pattern")


def test_compiler_keys_cache_on_the_listed_files(tmp_path: Path) -> None:
    (tmp_path / "a.lock").write_text("1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.lock").write_text("2")
    text = ("pipeline: p\nsteps:\n  - name: a\n    image: x\n    commands: ['true']\n"
            "    cache:\n      paths: [deps/]\n      key_files: ['*.lock']\n")

    def key() -> str | None:
        g = compile_pipeline(load_text(text), resolver=_resolver, repo_root=tmp_path)
        return g.nodes["a"].derivation.key_files

    first = key()
    assert first == Snapshot(tmp_path).input_set(["*.lock"]).digest
    (tmp_path / "sub" / "b.lock").write_text("3")  # a glob match at any depth counts
    assert key() != first
