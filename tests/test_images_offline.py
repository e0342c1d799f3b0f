"""Images never break a run, and a fully cached run needs no containerd (real processes).

A real docker-registry serves a tagged image; `kata run` pulls it itself. Then:
the tag resolves from kata's tag record (`--pull` refreshes it), the registry is
stopped and the pipeline still runs — cached and with --no-cache —, a cached run with
containerd's socket pointed at nothing neither connects nor imports grpc, and
`offline: true` finds the image by its tag in containerd's image store.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest

from kata.report import human_size
from support.cli import KataProcess
from support.images import busybox_layer, files_layer, make_image
from support.registry import docker_registry, push_image

pytestmark = pytest.mark.integration


def tagged_image(ref: str):
    mark = secrets.token_hex(5)
    return make_image([busybox_layer(), files_layer({"/etc/kata-mark": mark.encode()})], ref), mark


def write_repo(repo, image: str, steps: int = 2) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    doc = {"pipeline": "offline", "settings": {"max_parallel": steps},
           "steps": [{"name": f"s{i}", "image": image,
                      "commands": [f"echo {i} $(cat /etc/kata-mark)"]} for i in range(steps)]}
    (repo / ".kata-ci.yaml").write_text(json.dumps(doc))


def marks(out: str) -> set[str]:
    return {x.split()[-1] for x in out.splitlines() if x.startswith("s0 | ")}


def test_pulled_images_run_with_the_registry_stopped(tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    store = tmp_path / "store"
    kata = KataProcess(repo, store=store, address=containerd_daemon.address)
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        ref = f"{host}/kata/off{secrets.token_hex(3)}:1"
        repo_path = ref.split("/", 1)[1].rsplit(":", 1)[0]
        first, mark1 = tagged_image(ref)
        push_image(url, repo_path, "1", first)
        write_repo(repo, ref)
        out = kata("run")
        assert out.returncode == 0, out.stdout + out.stderr
        assert marks(out.stdout) == {mark1}
        # the tag moves on the registry; kata keeps what it recorded until asked
        second, mark2 = tagged_image(ref)
        push_image(url, repo_path, "1", second)
        again = kata("run")
        assert again.returncode == 0 and "(2 cached, 0 ran)" in again.stdout, again.stdout
        pulled = kata("run", "--pull")
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert marks(pulled.stdout) == {mark2}
        tags = json.loads((store / "local/image-tags.json").read_text())["tags"]
        assert tags == {ref: second.digest}
        listed = kata("image", "ls", "-q")
        assert ref in listed.stdout.split(), listed.stdout  # pulled by digest, named by tag
    # the registry is gone: cached and uncached runs both work
    cached = kata("run")
    assert cached.returncode == 0 and "(2 cached, 0 ran)" in cached.stdout, cached.stdout
    rerun = kata("run", "--no-cache")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert marks(rerun.stdout) == {mark2}
    refresh = kata("run", "--pull")
    assert refresh.returncode == 2 and "Traceback" not in refresh.stderr  # image.unavailable
    assert "error: " in refresh.stderr and host in refresh.stderr, refresh.stderr
    # it is in the store: the error says the refresh failed and what a plain run uses
    assert "could not be refreshed (--pull asks the registry)" in refresh.stderr, refresh.stderr
    assert f"kata has it as {second.digest}, which a run without --pull uses" in refresh.stderr
    assert "neither in kata's image store" not in refresh.stderr

    # containerd pointed at nothing: a fully cached run neither connects nor imports grpc
    nothing = tmp_path / "no-containerd.sock"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kata", "--containerd",
                           str(nothing), "run"], cwd=repo, env=kata.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(2 cached, 0 ran)" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "grpc" not in imported and "kata.runtimes.containerd.client" not in imported
    assert "httpx" not in imported and "rich" not in imported

    # offline: true, a store that recorded nothing: the tag is found in containerd's names
    config = tmp_path / "kata.yaml"
    config.write_text("offline: true\n")
    fresh = KataProcess(repo, store=tmp_path / "store2", address=containerd_daemon.address)
    off = fresh("run", KATA_CONFIG=str(config))
    assert off.returncode == 0, off.stdout + off.stderr
    assert marks(off.stdout) == {mark2}
    # --pull on a store that recorded nothing, the registry away: containerd has the tag, so
    # the error is the refresh's, with the digest a plain run uses (not "neither in kata's
    # image store", which `kata image ls` contradicts)
    fresh_pull = KataProcess(repo, store=tmp_path / "store3", address=containerd_daemon.address)
    refresh = fresh_pull("run", "--pull")
    assert refresh.returncode == 2, refresh.stdout + refresh.stderr
    assert "could not be refreshed (--pull asks the registry)" in refresh.stderr, refresh.stderr
    assert f"kata has it as {second.digest}, which a run without --pull uses" in refresh.stderr
    runtime.remove_image(first.digest)
    runtime.remove_image(second.digest)


def test_five_steps_at_once_on_a_fresh_image_through_kata_run(tmp_path, containerd_daemon,
                                                              runtime):
    """The day-one failure: an image bump's first pipeline, five steps starting at once."""
    repo = tmp_path / "repo"
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        ref = f"{host}/kata/bump{secrets.token_hex(3)}:2"
        img, mark = tagged_image(ref)
        push_image(url, ref.split("/", 1)[1].rsplit(":", 1)[0], "2", img)
        write_repo(repo, ref, steps=5)
        out = kata("run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("[DONE] All 5 steps passed")
    assert {x for x in out.stdout.splitlines() if " | " in x} == {
        f"s{i} | {i} {mark}" for i in range(5)}
    # the busybox layer is stored already (the session's image): one layer is fetched, once
    pulls = [x for x in out.stdout.splitlines() if x.startswith("[PULL] ")]
    assert pulls == [f"[PULL] {ref.rsplit(':', 1)[0]}@{img.digest}: 1 layer, "
                     f"{human_size(len(img.layers[1]))}"], out.stdout
    runtime.remove_image(img.digest)


def test_image_import_and_rm_keep_the_tag_record(tmp_path, containerd_daemon, runtime):
    from support.images import write_oci_archive

    repo = tmp_path / "repo"
    store = tmp_path / "store"
    kata = KataProcess(repo, store=store, address=containerd_daemon.address)
    ref = f"kata.local/imported{secrets.token_hex(3)}:3"
    img, mark = tagged_image(ref)
    write_repo(repo, ref, steps=1)
    out = kata("image", "import", str(write_oci_archive(img, tmp_path / "img.tar")))
    assert out.returncode == 0, out.stderr
    record = store / "local/image-tags.json"
    assert json.loads(record.read_text())["tags"] == {ref: img.digest}
    # the plan resolves the tag from the record: containerd is not asked
    nothing = str(tmp_path / "nothing.sock")
    plan = KataProcess(repo, store=store, address=nothing)("run", "--dry-run")
    assert plan.returncode == 0 and "[PLAN] s0: MISS (not in the store)" in plan.stdout, \
        plan.stdout + plan.stderr
    assert kata("image", "rm", ref).returncode == 0
    assert json.loads(record.read_text())["tags"] == {}
    gone = KataProcess(repo, store=store, address=nothing)("run", "--dry-run")
    assert gone.returncode == 2 and "error: " in gone.stderr  # now it must ask containerd (gone)
