"""Loaded pipelines kept by content (``kata.loaded``): a hit is the pipeline the loader
would give now, and every thing the key depends on is seen when it changes: the config's
bytes (an edit of the same size and mtime too), the name it is loaded under, kata's code
and the libraries' files. A torn or foreign entry is absent; a bad config is never kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata import loaded
from kata.errors import KataError
from kata.loader import load_pipeline

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """pipeline: p
steps:
  - name: build
    image: busybox@sha256:{d}
    commands: [make]
    artifacts: [out/a.txt, "dist/*.whl"]
  - name: test
    image: busybox@sha256:{d}
    depends_on: [build]
    commands: [make test]
    when: branch == "main" and changed("src/**")
""".replace("{d}", "a" * 64)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


@pytest.fixture
def config(tmp_path) -> Path:
    p = tmp_path / ".kata-ci.yaml"
    p.write_text(CONFIG)
    return p


def test_hit_equals_a_fresh_load(config, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "loaded"
    first = loaded.load_cached(config, cache)
    assert first == load_pipeline(config)
    assert len(entries(cache)) == 1
    monkeypatch.setattr(loaded, "_load", lambda *a: pytest.fail("parsed again"))
    again = loaded.load_cached(config, cache)
    assert again == first
    assert again.steps[1].when == first.steps[1].when  # conditions survive
    assert again.steps[0].position == first.steps[0].position


def test_an_edit_that_keeps_size_and_mtime_is_seen(config, tmp_path) -> None:
    cache = tmp_path / "loaded"
    before = loaded.load_cached(config, cache)
    st = os.stat(config)
    config.write_text(CONFIG.replace("make test", "make tess"))  # same length
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(config).st_size == st.st_size
    after = loaded.load_cached(config, cache)
    assert after.steps[1].commands == ("make tess",)
    assert after != before
    assert len(entries(cache)) == 2


def test_the_file_name_is_part_of_the_key(config, tmp_path) -> None:
    cache = tmp_path / "loaded"
    loaded.load_cached(config, cache)
    other = tmp_path / "sub" / "ci.yaml"
    other.parent.mkdir()
    other.write_text(CONFIG)
    got = loaded.load_cached(other, cache)
    assert got.file == str(other)
    assert got.steps[0].position.file == str(other)


def test_code_and_library_changes_change_the_key(tmp_path, monkeypatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "loader.py").write_text("x = 1\n")
    (code / "notes.txt").write_text("not code\n")
    folders = ((code, ".py"),)
    base = loaded.fingerprint(folders, ("yaml",))
    assert loaded.fingerprint(folders, ("yaml",)) == base
    (code / "notes.txt").write_text("other\n")  # not a .py file: not loader code
    assert loaded.fingerprint(folders, ("yaml",)) == base
    (code / "loader.py").write_text("x = 2\n")  # same size, other bytes
    edited = loaded.fingerprint(folders, ("yaml",))
    assert edited != base
    (code / "model.py").write_text("")
    assert loaded.fingerprint(folders, ("yaml",)) != edited
    assert loaded.fingerprint(folders, ("yaml", "pathspec")) != loaded.fingerprint(folders, ("yaml",))
    # a library upgraded in place: its __init__ file's stat signature moves
    lib = tmp_path / "libs" / "fakelib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("v = 1\n")
    monkeypatch.syspath_prepend(str(lib.parent))
    one = loaded.fingerprint(folders, ("fakelib",))
    os.utime(lib / "__init__.py", ns=(1, 1))
    assert loaded.fingerprint(folders, ("fakelib",)) != one


def test_the_key_follows_the_code_fingerprint(monkeypatch) -> None:
    k1 = loaded.key(b"steps: []", "/r/.kata-ci.yaml")
    monkeypatch.setattr(loaded, "code_fingerprint", lambda: b"\1" * 32)
    assert loaded.key(b"steps: []", "/r/.kata-ci.yaml") != k1


def test_real_fingerprint_reads_the_loader_and_grammars() -> None:
    kata_dir = Path(loaded.__file__).resolve().parent
    grammar = kata_dir.parent / "grammar"
    assert (kata_dir / "loader.py").is_file() and (grammar / "conditions.lark").is_file()
    only_kata = loaded.fingerprint(((kata_dir, ".py"),), loaded._LIBRARIES)
    assert loaded.code_fingerprint() != only_kata  # the grammars count too


@pytest.mark.parametrize("damage", [b"", b"\x80\x05garbage", b"not a pickle at all"])
def test_a_torn_or_foreign_entry_is_absent(config, tmp_path, damage) -> None:
    cache = tmp_path / "loaded"
    good = loaded.load_cached(config, cache)
    (entry,) = entries(cache)
    entry.write_bytes(damage)
    assert loaded.load_cached(config, cache) == good
    assert loaded._read(str(entry)) == good  # rewritten whole


def test_an_entry_of_another_type_is_absent(config, tmp_path) -> None:
    import pickle

    cache = tmp_path / "loaded"
    good = loaded.load_cached(config, cache)
    (entry,) = entries(cache)
    entry.write_bytes(pickle.dumps({"steps": []}))
    assert loaded.load_cached(config, cache) == good


def test_a_bad_config_is_never_kept(tmp_path) -> None:
    cache = tmp_path / "loaded"
    bad = tmp_path / ".kata-ci.yaml"
    bad.write_text("steps:\n  - name: a\n    image: x\n    commandz: [y]\n")
    for _ in range(2):
        with pytest.raises(KataError) as err:
            loaded.load_cached(bad, cache)
        assert err.value.reason == "config.unknown_key"
        assert err.value.position.line == 4
    assert entries(cache) == []


def test_old_entries_are_evicted(config, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "loaded"
    monkeypatch.setattr(loaded, "KEEP", 3)
    for i in range(5):
        config.write_text(CONFIG.replace("make test", f"make test{i}"))
        loaded.load_cached(config, cache)
        for n, e in enumerate(sorted(entries(cache), key=lambda p: p.stat().st_mtime_ns)):
            os.utime(e, ns=(n, n))  # oldest first, whatever the clock's granularity
    assert len(entries(cache)) == 3
    newest = loaded.load_cached(config, cache)  # the last version is kept
    assert newest.steps[1].commands == ("make test4",)


def test_entries_are_private(config, tmp_path) -> None:
    cache = tmp_path / "state" / "loaded"
    loaded.load_cached(config, cache)
    (entry,) = entries(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700


def test_kata_run_sees_an_edit_of_the_config(tmp_path) -> None:
    """The CLI end to end: a plan (``--dry-run``) after an edit of the same size shows it;
    containerd is not asked (the image is pinned), so no daemon is needed here."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    cfg = repo / ".kata-ci.yaml"
    cfg.write_text(CONFIG.replace('    when: branch == "main" and changed("src/**")\n', ""))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(tmp_path / "store"),
           "KATA_CONTAINERD_ADDRESS": str(tmp_path / "nothing.sock")}

    parsed = []

    def plan() -> list[str]:
        out = subprocess.run([sys.executable, "-X", "importtime", "-m", "kata", "run",
                              "--dry-run", "--json"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        parsed.append(any(line.rstrip().endswith(" kata.loader")
                          for line in out.stderr.splitlines()))
        return [json.loads(x)["step"] for x in out.stdout.splitlines()
                if json.loads(x).get("event") == "plan"]

    assert plan() == ["build", "test"]  # no store yet: parsed, kept nowhere
    assert plan() == ["build", "test"]  # parsed and kept beside the store's index
    assert plan() == ["build", "test"]  # from the kept entry: the parser is not even loaded
    assert parsed == [True, True, False]
    assert list((tmp_path / "store" / "local" / "loaded").rglob("*"))
    st = os.stat(cfg)
    cfg.write_text(cfg.read_text().replace("name: test", "name: tess"))
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plan() == ["build", "tess"]
    assert parsed[-1] is True
