"""A step sees the same workspace wherever its dependencies' results came from and wherever
it runs (issue 13: "a hit must give a dependent step exactly what a local build would").

Real BuildGrid with PostgreSQL, two real `kata worker` processes, a real registry (the
fixtures of tests/test_remote_exec.py). The same pipeline runs on one host locally and on
another through the workers: the producing step's output tree must be the same (so early
cutoff and the cache work across the two), and the dependent step's view of its workspace
(types, modes, owners, sizes, link targets) must be the same line for line.
"""

from __future__ import annotations

import json

import pytest
import yaml

from support.cli import KataProcess
from test_remote_exec import grid, workers, worker_of  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

# the modes a step can give its files, and what Kata keeps of them (git's rule: the owner's
# executable bit decides "x"), and a directory the step made read-only
MAKE = ["mkdir -p out/d/e out/empty", "echo a > out/plain", "echo b > out/d/e/deep",
        "echo g > out/groupx && chmod 654 out/groupx",   # executable for the group only
        "echo o > out/otherx && chmod 601 out/otherx",   # for others only
        "echo u > out/userx && chmod 700 out/userx",
        "echo r > out/ro && chmod 400 out/ro",
        "echo s > out/suid && chmod 4755 out/suid",
        "ln -s plain out/rel", "ln -s /etc/passwd out/abs",
        # a link whose target no stat() can follow (one component over NAME_MAX): the
        # client's sync after a remote step stat()ed through it and failed the step with
        # ENAMETOOLONG
        "ln -s \"$(printf 'x%.0s' $(seq 1 300))\" out/long",
        "mkdir out/rodir && echo f > out/rodir/f && chmod 555 out/rodir"]
LOOK = ["find . -path ./listing -prune -o -print | sort | "
        "while read -r p; do stat -c '%A %u:%g %s %N' \"$p\"; done > listing",
        "echo \"SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH\" >> listing",  # a worker sets it too
        "cat listing"]


def _pipeline(image: str) -> dict:
    return {"pipeline": "modes", "steps": [
        {"name": "make", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": MAKE},
        {"name": "look", "image": image, "depends_on": ["make"], "inputs": ["src/**"],
         "artifacts": ["listing"], "commands": LOOK}]}


def _outputs(kata: KataProcess) -> dict[str, str]:
    doc = json.loads(kata("cache", "list", "--json").stdout)
    return {e["step"]: e["outputs"] for e in doc["entries"] if e["kind"] == "step"}


def _listing(kata: KataProcess) -> list[str]:
    logs = kata("logs", "--step", "look")
    assert logs.returncode == 0, logs.stderr
    return [x for x in logs.stdout.splitlines()[1:] if not x.startswith("kata: ")]


def test_a_remote_step_sees_and_makes_what_a_local_one_does(grid, workers, tmp_path,  # noqa: F811
                                                            containerd_daemon):
    bg, image = grid
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("a\n")
    tool = repo / "src" / "tool.sh"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(_pipeline(image), sort_keys=False))
    here = KataProcess(repo, store=tmp_path / "store-local", address=containerd_daemon.address,
                       timeout=300)
    there = KataProcess(repo, store=tmp_path / "store-remote",
                        address=containerd_daemon.address, timeout=300)
    local = here("run")
    assert local.returncode == 0, local.stdout + local.stderr
    remote = there("run", "--remote-executor", bg.url)
    assert remote.returncode == 0, remote.stdout + remote.stderr
    assert {worker_of(there, s) for s in ("make", "look")} <= {"w1", "w2"}
    # the same output tree: a group-only or other-only executable bit is not "x" on a
    # worker either (it was: the worker packed any executable bit as executable)
    assert _outputs(here)["make"] == _outputs(there)["make"]
    # and the dependent sees its inputs and its dependency's artifacts as locally:
    # read-only files and directories (0444/0555), not 0644/0755
    seen_here, seen_there = _listing(here), _listing(there)
    assert any(x.startswith("-r--r--r-- 0:0 2 ./out/groupx") for x in seen_here), seen_here
    assert "SOURCE_DATE_EPOCH=315619200" in seen_here
    assert seen_there == seen_here


@pytest.fixture(scope="module")
def cache_bg(tmp_path_factory):
    from support.buildgrid import buildgrid

    with buildgrid(tmp_path_factory.mktemp("bgd-cas")) as server:
        yield server


@pytest.mark.parametrize("name", ["..", ".", "", "a/../../x", "a\0b"])
def test_a_tree_with_a_name_that_leaves_its_directory_is_refused(cache_bg, tmp_path, name):
    """A worker's result (or an input root) is a ``Directory`` tree that anyone who can
    speak the Bots API may hand back: a node named ``..`` or with a ``/`` must not make the
    client (root) write outside the workspace. REAPI names are single path components."""
    from kata.errors import KataError
    from kata.executor import files
    from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from kata.remote.cas import connect
    from kata.remote.config import RemoteConfig, parse_url

    target, tls = parse_url(cache_bg.url, where="test")
    remote = connect(RemoteConfig(url=cache_bg.url, target=target, tls=tls))
    try:
        evil = b"owned\n"
        blob = files.digest_of(evil)
        inner = re_pb2.Directory()
        inner.files.add(name="escaped", digest=blob)
        inner_bytes = files.message_bytes(inner)
        top = re_pb2.Directory()
        top.directories.add(name=name, digest=files.digest_of(inner_bytes))
        top.files.add(name="fine", digest=blob)
        files.upload(remote.cas, {files.key(blob): evil,
                                  files.key(files.digest_of(inner_bytes)): inner_bytes})
        children = {files.key(files.digest_of(inner_bytes)): inner}
        dest = tmp_path / "deep" / "ws"
        dest.mkdir(parents=True)
        before = files.pack_dir(dest)
        for write in (lambda: files.sync_dir(remote.cas, before, top, children, dest),
                      lambda: files.materialise(remote.cas, top, children, dest)):
            with pytest.raises(KataError) as err:
                write()
            assert err.value.reason == "remote.bad_answer", err.value
        assert not (tmp_path / "deep" / "escaped").exists()
        assert not (tmp_path / "escaped").exists() and not (tmp_path / "x").exists()
        assert list(dest.iterdir()) == []  # refused before anything was written
    finally:
        remote.close()


def test_a_symlink_and_a_directory_of_one_name_are_refused(cache_bg, tmp_path):
    """Two nodes named ``a`` (a link to a directory outside, and a directory holding a
    file): written in turn, the file would land through the link."""
    from kata.errors import KataError
    from kata.executor import files
    from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from kata.remote.cas import connect
    from kata.remote.config import RemoteConfig, parse_url

    outside = tmp_path / "outside"
    outside.mkdir()
    target, tls = parse_url(cache_bg.url, where="test")
    remote = connect(RemoteConfig(url=cache_bg.url, target=target, tls=tls))
    try:
        blob = files.digest_of(b"owned\n")
        inner = re_pb2.Directory()
        inner.files.add(name="escaped", digest=blob)
        inner_bytes = files.message_bytes(inner)
        top = re_pb2.Directory()
        top.directories.add(name="a", digest=files.digest_of(inner_bytes))
        top.symlinks.add(name="a", target=str(outside))
        files.upload(remote.cas, {files.key(blob): b"owned\n",
                                  files.key(files.digest_of(inner_bytes)): inner_bytes})
        dest = tmp_path / "ws"
        dest.mkdir()
        with pytest.raises(KataError) as err:
            files.sync_dir(remote.cas, files.pack_dir(dest), top,
                           {files.key(files.digest_of(inner_bytes)): inner}, dest)
        assert err.value.reason == "remote.bad_answer"
        assert list(outside.iterdir()) == []
    finally:
        remote.close()


def _outcome(line: str) -> str:
    """``[FAIL] step (message, 1.2s)`` -> ``[FAIL] step: message``; a pass: ``[PASS] step``."""
    head, _, rest = line.partition(" (")
    return head if head.startswith("[PASS]") else f"{head}: {rest.rsplit(', ', 1)[0]}"


def test_a_fifo_left_in_the_workspace_counts_only_where_it_would_locally(  # noqa: F811
        grid, workers, tmp_path, containerd_daemon):
    """A step that leaves a FIFO (or a socket) in its workspace passes locally unless an
    `artifacts:` pattern takes it (trees hold no such thing). On a worker the whole
    workspace comes back, and the FIFO failed the step ("cannot be sent to a remote
    executor") where a local run passes; a declared one must still fail, as locally."""
    bg, image = grid
    make = ["mkdir -p out tmp", "mkfifo tmp/pipe", "echo ok > out/x"]
    pipeline = {"pipeline": "fifo", "settings": {"fail_fast": False}, "steps": [
        {"name": "undeclared", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": make},
        {"name": "declared", "image": image, "inputs": ["src/**"],
         "artifacts": ["out/", "tmp/"], "commands": make},
        {"name": "after", "image": image, "depends_on": ["undeclared"],
         "commands": ["cat out/x", "test ! -e tmp"]}]}
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a").write_text("a\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    results = {}
    for where, args in (("local", ()), ("remote", ("--remote-executor", bg.url))):
        kata = KataProcess(repo, store=tmp_path / f"store-{where}",
                           address=containerd_daemon.address, timeout=300)
        run = kata("run", *args)
        assert run.returncode == 1, run.stdout + run.stderr
        results[where] = sorted(_outcome(x) for x in run.stdout.splitlines()
                                if x.startswith(("[PASS]", "[FAIL]")))
        if where == "remote":
            assert {worker_of(kata, s) for s in ("undeclared", "declared", "after")} \
                <= {"w1", "w2"}
    assert results["remote"] == results["local"], results
    assert any(x.startswith("[PASS] undeclared") for x in results["local"]), results
    assert any(x.startswith("[FAIL] declared") and "FIFO" in x for x in results["local"])
