"""Wrong and needless hits, hunted on real containerd through the CLI (branch cache-trust).

- What the host does to a checkout (its absolute path, the files' mtimes, the umask of the
  clone and of kata itself) is in no key, so it must not reach the step either: a fresh
  clone elsewhere under umask 077 hits every step, and the step, run again there, sees
  what the first run saw (it saw its workspace root 0700: same key, another view).
- Early cutoff through a chain (sdist -> wheel -> test): an sdist rebuilt to the same
  bytes leaves the wheel and the step after it cached; an sdist with new bytes re-runs
  the step after the wheel even when the wheel is the same, because that step sees the
  sdist too (artifacts flow transitively): a hit there would be a wrong one.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from support.cli import KataProcess
from support.git import git

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"

SEE = f"""\
pipeline: hunt
steps:
  - name: see
    image: {IMAGE}
    artifacts: [out/]
    commands:
      - mkdir -p out
      - echo "root $(stat -c %a .) src $(stat -c %a src) umask $(umask)" | tee out/seen
      - ls -ln tool.sh src/a.txt | cut -c1-10 | tee -a out/seen
      - ./tool.sh | tee -a out/seen
"""


def _run(kata: KataProcess, *args: str, umask: int = 0o022):
    old = os.umask(umask)  # the kata process (and what it starts) inherits it
    try:
        return kata("run", *args)
    finally:
        os.umask(old)


def _said(stdout: str, step: str) -> list[str]:
    return [line.split(" | ", 1)[1] for line in stdout.splitlines()
            if line.startswith(f"{step} | ")]


def test_a_clone_elsewhere_under_umask_077_hits_and_sees_the_same(tmp_path, containerd_daemon,
                                                                    runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("a\n")
    (repo / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (repo / "tool.sh").chmod(0o755)
    (repo / ".kata-ci.yaml").write_text(SEE)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hunt")
    store = tmp_path / "store"
    first = _run(KataProcess(repo, store=store, address=containerd_daemon.address))
    assert first.returncode == 0, first.stdout + first.stderr
    seen = _said(first.stdout, "see")
    assert seen[0] == "root 755 src 555 umask 0022", seen
    assert seen[1:] == ["-r--r--r--", "-r-xr-xr-x", "tool ran"], seen  # inputs: read-only

    old = os.umask(0o077)
    try:  # another path, new mtimes, files 0600/0700
        clone = tmp_path / "elsewhere" / "clone"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    finally:
        os.umask(old)
    assert (clone / "tool.sh").stat().st_mode & 0o777 == 0o700
    there = KataProcess(clone, store=store, address=containerd_daemon.address)
    hit = _run(there, umask=0o077)
    assert hit.returncode == 0, hit.stdout + hit.stderr
    assert "[CACHE] see: HIT" in hit.stdout, hit.stdout  # no needless miss
    again = _run(there, "--no-cache", umask=0o077)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _said(again.stdout, "see") == seen  # the key's view, not the host's umask


CHAIN = f"""\
pipeline: chain
steps:
  - name: sdist
    image: {IMAGE}
    inputs: ["src/**"]
    artifacts: [dist/]
    commands: ["mkdir -p dist", "tr -d ' ' < src/a.txt > dist/pkg.tar"]
  - name: wheel
    image: {IMAGE}
    inputs: []
    depends_on: [sdist]
    artifacts: [wheel/]
    commands: ["mkdir -p wheel", "head -c 5 dist/pkg.tar > wheel/pkg.whl"]
  - name: test
    image: {IMAGE}
    inputs: []
    depends_on: [wheel]
    commands: ["cat wheel/pkg.whl; echo", "cat dist/pkg.tar"]
"""


def _cache(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("[CACHE] "):
            step, _, rest = line[len("[CACHE] "):].partition(": ")
            out[step] = rest
    return out


def test_early_cutoff_holds_through_a_chain_and_covers_what_is_handed_on(
        tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.txt").write_text("hello world\n")
    (repo / ".kata-ci.yaml").write_text(CHAIN)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _said(first.stdout, "test") == ["hello", "helloworld"]

    (repo / "src" / "a.txt").write_text("hello  world\n")  # the sdist comes out the same
    same = kata("run")
    assert same.returncode == 0, same.stdout + same.stderr
    cache = _cache(same.stdout)
    assert cache["sdist"].startswith("MISS"), cache
    assert cache["wheel"].startswith("HIT") and "early cutoff" in cache["wheel"], cache
    assert cache["test"].startswith("HIT") and "early cutoff" in cache["test"], cache
    assert "[RUN] wheel" not in same.stdout and "[RUN] test" not in same.stdout

    (repo / "src" / "a.txt").write_text("hello there\n")  # new sdist, the same wheel
    why = kata("why", "//test")  # what the run below will do, and why
    assert why.returncode == 0, why.stdout + why.stderr
    assert "those it hands on from sdist" in why.stdout, why.stdout
    new = kata("run")
    assert new.returncode == 0, new.stdout + new.stderr
    cache = _cache(new.stdout)
    assert cache["wheel"].startswith("MISS"), cache  # it sees the new sdist: it runs...
    # ...makes the same wheel, and the step after it still runs: it sees the sdist too
    assert cache["test"].startswith("MISS"), cache
    assert _said(new.stdout, "test") == ["hello", "hellothere"]


def test_a_step_sees_a_submodules_files_and_an_edit_there_reruns_it(tmp_path, containerd_daemon,
                                                                     runtime):
    """A checked-out git submodule's files were neither in the step's workspace nor in its
    key (git lists the submodule as one entry): ``#include "vendor/lib/z.h"`` failed."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "z.h").write_text("#define Z 1\n")
    git(lib, "init", "-q", "-b", "main")
    git(lib, "add", "-A")
    git(lib, "commit", "-q", "-m", "lib")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(f"""\
pipeline: sub
steps:
  - name: build
    image: {IMAGE}
    commands: ["cat vendor/lib/z.h"]
""")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _said(first.stdout, "build") == ["#define Z 1"]
    assert "[CACHE] build: HIT" in kata("run").stdout
    (repo / "vendor" / "lib" / "z.h").write_text("#define Z 2\n")
    edited = kata("run")
    assert "[CACHE] build: MISS" in edited.stdout, edited.stdout
    assert _said(edited.stdout, "build") == ["#define Z 2"]
