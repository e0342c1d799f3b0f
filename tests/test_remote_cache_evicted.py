"""A remote cache that lost blobs an entry still names (BuildGrid's LRU evicted them, a
disk CAS lost files): real BuildGrid (disk CAS, so the test can lose files as an
eviction does), real containerd, two hosts. What a remote cannot hand over is rebuilt
locally (that hit only: the remote stays in use, no warning), never a failed run
(docs/remote.md "When the remote fails")."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from support.buildgrid import BuildGridConfig, buildgrid
from support.cli import KataProcess

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
CONTENT = b"built on host A\n"
PIPELINE = {
    "pipeline": "evicted",
    "steps": [
        {"name": "build", "image": IMAGE, "inputs": ["src/**"], "artifacts": ["dist/"],
         "commands": ["mkdir -p dist", "cat src/a.txt > dist/out.txt"]},
        {"name": "package", "image": IMAGE, "depends_on": ["build"], "inputs": [],
         "artifacts": ["pkg"], "commands": ["cat dist/out.txt > pkg"]},
    ],
}


def _repo(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_bytes(CONTENT)
    (root / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    return root


def _evict(cas: Path, content: bytes) -> None:
    """Drop the blob of ``content`` from BuildGrid's disk CAS (what an LRU eviction does)."""
    hexd = hashlib.sha256(content).hexdigest()
    lost = [p for p in cas.rglob("*") if p.is_file() and hexd[2:] in p.name]
    assert lost, f"blob {hexd} is not in {cas}"
    for p in lost:
        p.unlink()


def test_out_of_a_hit_whose_blobs_were_evicted_rebuilds_it(tmp_path, containerd_daemon,
                                                           runtime):
    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        remote = ("--remote-cache", bg.url, "--remote-instance", "main")
        repo_a = _repo(tmp_path / "a")
        a = KataProcess(repo_a, store=tmp_path / "store-a", address=containerd_daemon.address)
        first = a("run", *remote)
        assert first.returncode == 0, first.stdout + first.stderr
        _evict(bg.workdir / "cas", CONTENT)  # both outputs hold it: the graph's bundle stays

        repo_b = tmp_path / "b"
        shutil.copytree(repo_a, repo_b)
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address)
        out = tmp_path / "out"
        second = b("run", *remote, "--step", "package", "--out", str(out))
        assert second.returncode == 0, second.stdout + second.stderr
        assert (out / "pkg").read_bytes() == CONTENT
        assert second.stdout.count("[CACHE] package: MISS") == 1, second.stdout
        assert "[CACHE] package: MISS (evicted from the remote cache, rebuilding)" in second.stdout
        # an eviction is no outage: no warning, the remote stays in use (build, rebuilt
        # here, is a hit there again, or uploaded)
        assert not second.stderr.strip(), second.stderr
        # what was rebuilt is this host's now: a run without the remote hits it
        third = b("run", "--step", "package", "--out", str(tmp_path / "out2"))
        assert third.returncode == 0, third.stdout + third.stderr
        assert "[CACHE] package: HIT" in third.stdout
        assert (tmp_path / "out2" / "pkg").read_bytes() == CONTENT


def test_export_suggests_a_command_the_shell_takes_for_a_matrix_step(tmp_path):
    """`kata export` of a remote hit this host never fetched names the `kata run` that would
    build it; a matrix instance's name (`check (N=1)`) must be quoted there, or the shell
    reads the parentheses."""
    from kata.errors import KataError
    from kata.realise.export import fetch_missing
    from store import Store

    store = Store.open(tmp_path / "store")
    tree = "sha256:" + "1" * 64
    try:
        for key in ("", "2" * 64):  # collected since; a remote hit never fetched
            with pytest.raises(KataError) as err:
                fetch_missing(store, [("check (N=1)", tree, key)], "RUN", None)
            assert "`kata run --step 'check (N=1)' --out DIR" in err.value.message, err.value
    finally:
        store.close()
