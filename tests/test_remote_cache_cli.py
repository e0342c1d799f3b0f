"""The remote cache's commands besides `kata run`, against a real BuildGrid (cache-only):
`kata export` of a remote hit this host never fetched, `kata remote push` against a remote
that is down with nothing queued. Host A builds; host B (its own store, no shared
filesystem) hits everything remotely and fetches nothing, as its run needed nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from support.buildgrid import BuildGridConfig, buildgrid
from support.cli import KataProcess
from support.registry import free_port

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
PIPELINE = {"pipeline": "export-remote", "steps": [
    {"name": "one", "image": IMAGE, "inputs": ["src/**"], "artifacts": ["o/"],
     "commands": ["mkdir -p o", "cp src/a o/a", "echo one-log"]},
    {"name": "two", "image": IMAGE, "depends_on": ["one"], "inputs": ["src/**"],
     "artifacts": ["t"], "commands": ["cat o/a > t"]}]}


@pytest.fixture(scope="module")
def bg(tmp_path_factory):
    with buildgrid(tmp_path_factory.mktemp("bgd"), BuildGridConfig(instance="main")) as server:
        yield server


def _hosts(tmp_path: Path, daemon) -> tuple[KataProcess, KataProcess]:  # noqa: ANN001
    repo_a = tmp_path / "a"
    (repo_a / "src").mkdir(parents=True)
    (repo_a / "src" / "a").write_text(f"from A {tmp_path.name}\n")  # keys of its own
    (repo_a / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    shutil.copytree(repo_a, tmp_path / "b")
    return (KataProcess(repo_a, store=tmp_path / "store-a", address=daemon.address),
            KataProcess(tmp_path / "b", store=tmp_path / "store-b", address=daemon.address))


def test_export_fetches_a_remote_hit_this_host_never_needed(bg, tmp_path, containerd_daemon,
                                                            runtime):
    a, b = _hosts(tmp_path, containerd_daemon)
    remote = ("--remote-cache", bg.url, "--remote-instance", "main")
    assert a("run", *remote).returncode == 0
    hit = b("run", *remote)
    assert hit.returncode == 0 and hit.stdout.count(", remote)") == 2, hit.stdout + hit.stderr
    # without a remote: one clear line saying where the artifacts are and what to do; no
    # empty DIR left behind (it was: "object sha256:... is not in the store", exit 1)
    out = tmp_path / "out"
    bare = b("export", "--step", "two", "--out", str(out))
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "remote cache" in bare.stderr and "--remote-cache" in bare.stderr, bare.stderr
    assert "is not in the store" not in bare.stderr and not out.exists()
    # a remote that cannot hand them over: the same, saying why
    down = b("export", "--step", "two", "--out", str(out), "--remote-cache",
             f"grpc://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot hand them over" in down.stderr, down.stderr
    assert not out.exists()
    # with the remote (the flag, or the host config): fetched, checked, exported
    got = b("export", "--step", "two", "--out", str(out), *remote)
    assert got.returncode == 0, got.stdout + got.stderr
    assert (out / "t").read_text() == f"from A {tmp_path.name}\n"
    config = tmp_path / "config.yaml"
    config.write_text(f"remote:\n  cache: {bg.url}\n  instance: main\n")
    every = b("export", "--out", str(tmp_path / "all"), KATA_CONFIG=str(config))
    assert every.returncode == 0, every.stdout + every.stderr
    assert (tmp_path / "all" / "one" / "o" / "a").is_file()


def test_push_to_a_remote_that_is_down_fails_even_with_nothing_queued(bg, tmp_path,
                                                                      containerd_daemon,
                                                                      runtime):
    """`kata remote push` is how a user asks the remote now (and ends a back-off): with an
    empty queue and the remote down it said "pushed 0 result(s)" and exited 0."""
    a, _b = _hosts(tmp_path, containerd_daemon)
    up = a("remote", "push", "--remote-cache", bg.url, "--remote-instance", "main")
    assert up.returncode == 0, up.stdout + up.stderr
    url = f"grpc://127.0.0.1:{free_port()}"
    for args in ((), ("--json",)):
        down = a("remote", "push", *args, "--remote-cache", url)
        assert down.returncode == 1, down.stdout + down.stderr
    assert json.loads(down.stdout)["error"], down.stdout
    wrong = a("remote", "push", "--remote-cache", bg.url)  # an instance BuildGrid lacks
    assert wrong.returncode == 1 and "Invalid instance name" in wrong.stderr, wrong.stderr
    # and says what to do about it (a newcomer's first run without --remote-instance)
    assert "--remote-instance" in wrong.stderr, wrong.stderr
