"""A new team adopting Kata CI on a real C project, Bazel-style: zlib 1.2.13 (the upstream
tarball of Debian's source package), configured once, compiled in four parallel steps (a
split of the objects, each step seeing only its sources and the headers), linked, tested
with zlib's own test programs, and packaged as a reproducible tarball.

The image is built as a team without Docker Hub would: Debian 12 by mmdebstrap with gcc,
make and libc6-dev, served from a real local docker-registry. The pipeline (``PIPELINE``) is
the one the trial wrote from README.md and docs/ alone. Locally: all hits on a re-run; a
comment-only edit of deflate.c reruns its compile step only, whose objects come out
byte-identical (gcc is deterministic here: no __DATE__/__TIME__ in zlib, no -g so no
workspace path, and the workspace is /workspace on every host anyway), so link, test and
package hit by early cutoff; a comment edit of zutil.h reruns the three library compile
steps and nothing after them; `kata why/graph/export`. Then a second host with an empty
store gets every step from BuildGrid (cache-only) and exports the same tarball, byte for byte.

The tarball comes from Debian through apt in .ci/install (ZLIB_ORIG); the image is cached
under /var/cache/kata-test after its first build (about four minutes).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import pytest

from support.buildgrid import buildgrid
from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.registry import served_image
from test_trial_redis_py import _cache, _edit

pytestmark = pytest.mark.integration

ZLIB_ORIG = CACHE_DIR / "zlib_1.2.13.dfsg.orig.tar.bz2"  # .ci/install: apt-get source zlib
PACKAGES = ("gcc", "make", "libc6-dev")
COMPILES = ("compile-deflate", "compile-inflate", "compile-gz", "compile-tests")

PIPELINE = """\
pipeline: "zlib"
settings:
  timeout: "15m"
  max_parallel: 2

x-compile: &compile
  image: "IMAGE"
  depends_on: ["configure"]
  network: "none"
  artifacts: ["*.o"]

steps:
  - name: "configure"
    image: "IMAGE"
    inputs: ["/configure", "/Makefile.in", "/zconf.h.in", "/zlib.pc.in", "/zlib.h"]
    network: "none"
    commands:
      - "./configure --static"
    artifacts: ["Makefile", "zconf.h", "zlib.pc"]

  - <<: *compile
    name: "compile-deflate"
    inputs: ["/*.h", "/adler32.c", "/crc32.c", "/deflate.c", "/trees.c", "/zutil.c"]
    commands: ["make adler32.o crc32.o deflate.o trees.o zutil.o"]
  - <<: *compile
    name: "compile-inflate"
    inputs: ["/*.h", "/infback.c", "/inffast.c", "/inflate.c", "/inftrees.c"]
    commands: ["make infback.o inffast.o inflate.o inftrees.o"]
  - <<: *compile
    name: "compile-gz"
    inputs: ["/*.h", "/compress.c", "/uncompr.c", "/gz*.c"]
    commands: ["make compress.o uncompr.o gzclose.o gzlib.o gzread.o gzwrite.o"]
  - <<: *compile
    name: "compile-tests"
    inputs: ["/zlib.h", "test/*.c"]
    commands: ["make example.o minigzip.o"]

  - name: "link"
    image: "IMAGE"
    depends_on: ["compile-deflate", "compile-inflate", "compile-gz", "compile-tests"]
    inputs: []
    network: "none"
    commands:
      # the sources are not inputs here (an edit must reach this step only through
      # different objects): tell make the objects are up to date
      - "make $(printf -- '-o %s ' *.o) libz.a example minigzip"
    artifacts: ["libz.a", "example", "minigzip"]

  - name: "test"
    image: "IMAGE"
    depends_on: ["link"]
    inputs: []
    network: "none"
    commands:
      - "make -o libz.a -o example -o minigzip teststatic"

  - name: "package"
    image: "IMAGE"
    depends_on: ["link", "test"]
    inputs: ["/zlib.h", "/zlib.3"]
    network: "none"
    commands:
      - "make -o libz.a install DESTDIR=/tmp/root prefix=/usr"
      - "mkdir -p dist"
      # GNU tar and gzip -n: no build time, owner or file name in the bytes
      - "tar -C /tmp/root --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner -cf - . | gzip -n > dist/zlib-static.tar.gz"
    artifacts: ["dist/"]
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-zlib:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/zlib") as ref:
        yield ref


def _project(root: Path, image: str) -> Path:
    """zlib's upstream tarball as a git repository with the trial's .kata-ci.yaml."""
    return repo_from_tarball(ZLIB_ORIG, root, "zlib-1.2.13.dfsg",
                             PIPELINE.replace("IMAGE", image), "zlib 1.2.13",
                             "apt-get source --download-only zlib from a deb-src line for "
                             "bookworm")


def _exported(kata: KataProcess, out: Path, *extra: str) -> str:
    """The sha256 of the package step's tarball, exported under ``out``."""
    export = kata("export", "--step", "package", "--out", str(out), *extra)
    assert export.returncode == 0, export.stdout + export.stderr
    return hashlib.sha256((out / "dist" / "zlib-static.tar.gz").read_bytes()).hexdigest()


def test_zlib_split_compile_early_cutoff_then_a_remote_cache_on_an_empty_host(
        image, tmp_path, containerd_daemon):
    repo = _project(tmp_path / "a", image)
    kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address,
                       timeout=300)
    assert "8 steps" in kata("validate").stdout
    graph = kata("graph").stdout
    assert "configure -> compile-deflate, compile-inflate, compile-gz, compile-tests" in graph

    with buildgrid(tmp_path / "bgd") as bg:
        remote = ("--remote-cache", bg.url)
        first = kata("run", *remote)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "[DONE] All 8 steps passed" in first.stdout
        assert "*** zlib test OK ***" in first.stdout
        # the compile steps ran two at a time, and link found every object up to date
        assert "[RUN] compile-deflate, compile-inflate (parallel)" in first.stdout
        assert not re.search(r"^link \| gcc .* -c ", first.stdout, re.M), first.stdout

        again = kata("run", *remote)
        assert again.stdout.splitlines()[-1].startswith("[DONE] 8 steps (8 cached, 0 ran)")
        tarball = _exported(kata, tmp_path / "out-a")
        with tarfile.open(tmp_path / "out-a" / "dist" / "zlib-static.tar.gz") as tar:
            names = tar.getnames()
            assert {"./usr/lib/libz.a", "./usr/include/zlib.h"} <= set(names), names
            assert {m.mtime for m in tar.getmembers()} == {315619200}

        # a comment in one .c file: its compile step runs, its objects are the same bytes
        _edit(repo, "deflate.c", "the deflation algorithm", "the deflation algorithm (trial)",
              "a comment")
        why = kata("why", "//compile-deflate")
        assert "input file deflate.c: content" in why.stdout, why.stdout
        cutoff = kata("run", *remote)
        assert cutoff.returncode == 0, cutoff.stdout + cutoff.stderr
        assert _cache(cutoff.stdout) == {
            "configure": "HIT", "compile-deflate": "MISS", "compile-inflate": "HIT",
            "compile-gz": "HIT", "compile-tests": "HIT", "link": "HIT", "test": "HIT",
            "package": "HIT"}, cutoff.stdout

        # a comment in a header the library includes: three compile steps, nothing after
        _edit(repo, "zutil.h", "internal interface and configuration of the compression "
              "library", "internal interface and configuration of the compression library "
              "(trial)", "a header comment")
        header = kata("run", *remote)
        assert header.returncode == 0, header.stdout + header.stderr
        assert _cache(header.stdout) == {
            "configure": "HIT", "compile-deflate": "MISS", "compile-inflate": "MISS",
            "compile-gz": "MISS", "compile-tests": "HIT", "link": "HIT", "test": "HIT",
            "package": "HIT"}, header.stdout

        # host B: its own clone, an empty store, the same remote: every step is a hit, and
        # the tarball it exports is A's, byte for byte
        repo_b = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(repo), str(repo_b))
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address,
                        timeout=300)
        hosted = b("run", *remote)
        assert hosted.returncode == 0, hosted.stdout + hosted.stderr
        assert hosted.stdout.count(", remote)") == 8, hosted.stdout
        assert _exported(b, tmp_path / "out-b", *remote) == tarball
