"""Issue 9 through `kata run` on real containerd: a damaged store heals in one run, a
`key_files` glob keys the cache directory, cache directories are scoped by ref."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fakes import FakeStep, write_pipeline
from store import Store
from support.cli import KataProcess

pytestmark = pytest.mark.integration

STEPS = [
    FakeStep("build", commands=("mkdir -p dist", "cat src/a.txt > dist/a", "echo built it"),
             inputs=("src/**",), artifacts=("dist/",)),
    FakeStep("test", commands=("grep hello dist/a",), depends_on=("build",), inputs=("x",)),
]
DAMAGE_LINE = "[CACHE] {}: MISS (cached output damaged, rebuilding)"


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/a.txt").write_text("hello\n")
    (repo / "x").write_text("1\n")
    return repo


@pytest.fixture
def kata(tmp_path, repo, containerd_daemon, runtime):
    return KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)


def _flip(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = os.stat(path)
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _last_run(store_dir: Path) -> dict:
    with Store.open(store_dir) as s:
        return {e.name: e for e in s.list_runs(limit=1)[0].steps}


@pytest.mark.parametrize("what", ["outputs", "log", "dependency tree"])
@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_damaged_store_heals_in_one_run(kata, repo, tmp_path, what, how):
    write_pipeline(repo, STEPS, name="heal")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    steps = _last_run(tmp_path / "store")
    digest = getattr(steps["build"], "log" if what == "log" else "outputs")
    store_dir = tmp_path / "store"
    if what == "dependency tree":
        (repo / "x").write_text("2\n")  # test reruns and needs build's tree, unpacked afresh
        with Store.open(store_dir) as s:
            s.evict_unpacked()
    path = str(store_dir / "objects" / "sha256" / digest[7:9] / digest[7:])
    _flip(path) if how == "flip" else os.unlink(path)
    second = kata("run")
    assert second.returncode == 0, second.stdout + second.stderr
    lines = second.stdout.splitlines()
    assert DAMAGE_LINE.format("build") in lines
    assert "build | built it" in lines and "[RUN] build: " in second.stdout
    assert os.path.exists(store_dir / "quarantine" / digest[7:]) == (how == "flip")
    third = kata("run")
    assert third.stdout.splitlines()[-1].startswith("[DONE] 2 steps (2 cached, 0 ran)")


def test_every_object_damaged_a_cached_pipeline_reruns_and_passes(kata, repo, tmp_path):
    write_pipeline(repo, STEPS, name="heal")
    assert kata("run").returncode == 0
    for shard in (tmp_path / "store" / "objects" / "sha256").iterdir():
        for obj in shard.iterdir():
            _flip(str(obj))
    second = kata("run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "HIT" not in second.stdout
    assert "test | hello" in second.stdout.splitlines()


INSTALL = FakeStep("install", commands=(
    'echo "restored-cache: $(cat cachedir/stamp 2>/dev/null || echo none)"',
    "mkdir -p cachedir && cp req/deps.txt cachedir/stamp"),
    inputs=("req/**",), cache_paths=("cachedir/",), key_files=("req/*.txt",))


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def _restored(proc) -> str:
    return next(line for line in proc.stdout.splitlines()
                if line.startswith("install | restored-cache:")).split(
        "restored-cache: ")[1]


def test_key_files_glob_and_ref_scopes_through_the_cli(kata, repo):
    write_pipeline(repo, [INSTALL], name="scoped")
    (repo / "req").mkdir()
    (repo / "req/deps.txt").write_text("v1\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _restored(first) == "none"
    (repo / "req/deps.txt").write_text("v3\n")
    assert _restored(kata("run")) == "none"  # the glob's file changed: a new key
    _git(repo, "checkout", "-qb", "feature")
    (repo / "req/deps.txt").write_text("v1\n")
    (repo / "req/extra").write_text("1\n")  # not a key file: the step reruns
    feature = kata("run")
    assert _restored(feature) == "v1"  # the default branch's entry, as a fallback
    (repo / "req/extra").write_text("2\n")
    assert _restored(kata("run")) == "v1"
    _git(repo, "checkout", "-q", "main")
    (repo / "req/extra").write_text("3\n")
    main = kata("run")
    assert _restored(main) == "v1"  # main's own entry (written by main's first run)
    listed = kata("cache", "list").stdout
    assert "scope ref:refs/heads/feature" in listed and "scope ref:refs/heads/main" in listed
    assert "cache-dir  scoped/install" in listed
