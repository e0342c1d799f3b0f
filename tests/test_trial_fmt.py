"""A new team adopting Kata CI on a real CMake/C++ project with a ctest suite: {fmt} 9.1.0
from Debian 12's source package (the upstream tarball with Debian's patches applied, which
build the tests against Debian's googletest), built as a team would write it from
docs/config.md alone.

The image is Debian 12 by mmdebstrap with cmake, ninja, g++, ccache and googletest, served
from a real local docker-registry. The pipeline (``PIPELINE``): ``configure`` and ``build``
as separate steps over a matrix of build types (the build directory handed on as an
artifact), ccache's directory kept by ``cache:``, ctest's JUnit output as the test step's
report, ``install`` into a prefix, and a smoke step that builds and runs a tiny program
against the installed library with CMake's ``find_package(fmt)``, as a non-root user with
``network: none``.

Locally: every step hits on a re-run; an edit of a test source reruns every step (configure
sees every source, since CMake checks that they exist, and each later step sees the build
tree handed on, transitively; `kata why` says so), with ccache hits in the rebuild; an edit
of README.rst reruns configure only, whose build tree comes out byte-identical (early
cutoff). Then two `kata worker`s on BuildGrid with PostgreSQL run every step again with the
same test totals, and a host with an empty store gets every step from that remote as a hit.
Then the same commands outside Kata, in a chroot of the same image, pass the same tests.

The test builds a subset of the suite's targets (``TARGETS``). The whole suite through the
same pipeline (no ``--target``, no ``-R``): 20 ctest tests per build type, all passed; a
cold run took 8m46s on this machine's 2 shared cores (load ~7), a second run 0.8 s, the
test-source comment edit 17 s (every compilation a ccache hit), the README edit 3.7 s. The
sources come from Debian through apt in .ci/install (FMT_ORIG, FMT_DEBIAN); the image is
cached under /var/cache/kata-test after its first build (about three minutes).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from support.buildgrid_exec import buildgrid_execution, kata_logstream
from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.postgres import postgres_cluster
from support.registry import read_oci_archive, served_image
from test_trial_redis_py import _cache, _edit

pytestmark = pytest.mark.integration

FMT_ORIG = CACHE_DIR / "fmtlib_9.1.0+ds1.orig.tar.gz"  # .ci/install: apt-get source fmtlib
FMT_DEBIAN = CACHE_DIR / "fmtlib_9.1.0+ds1-2.debian.tar.xz"
PACKAGES = ("cmake", "ninja-build", "g++", "ccache", "googletest")
# a fast part of the suite (the whole one: the module's docstring)
TARGETS = ("args-test", "assert-test", "color-test")
TYPES = ("Debug", "Release")
CONFIGURE = tuple(f"configure (BUILD_TYPE={t})" for t in TYPES)
BUILD = tuple(f"build (BUILD_TYPE={t})" for t in TYPES)
TEST = tuple(f"test (BUILD_TYPE={t})" for t in TYPES)
STEPS = (*CONFIGURE, *BUILD, *TEST, "install", "smoke")

PIPELINE = """\
pipeline: "fmt"
settings:
  timeout: "30m"
  max_parallel: 2

steps:
  - name: "configure"
    image: "IMAGE"
    network: "none"
    matrix:
      BUILD_TYPE: ["Debug", "Release"]
    commands:
      - "cmake -S . -B build/$BUILD_TYPE -G Ninja -DCMAKE_BUILD_TYPE=$BUILD_TYPE -DBUILD_SHARED_LIBS=ON -DFMT_TEST=ON -DFMT_DOC=OFF -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
      # the one file that differs between two runs (try_compile's random directory
      # names): without it the build tree is the same bytes, and an edit configure does
      # not read (the README) stops here (early cutoff)
      - "rm -f build/$BUILD_TYPE/CMakeFiles/CMakeOutput.log build/$BUILD_TYPE/CMakeFiles/CMakeError.log"
    artifacts: ["build/"]

  - name: "build"
    image: "IMAGE"
    depends_on: ["configure"]
    network: "none"
    matrix:
      BUILD_TYPE: ["Debug", "Release"]
    inputs: ["/CMakeLists.txt", "/include/**", "/src/**", "/test/**", "/support/cmake/**"]
    env:
      CCACHE_DIR: "/workspace/.ccache"
    cache:
      paths: [".ccache/"]
    commands:
      # what configure handed on has the 1980 mtime of every input, older than CMake's
      # own modules in the image: ninja would run cmake again, which needs every file
      # CMakeLists.txt names (README.rst too). The tree is as configure left it: touch it
      - "find build/$BUILD_TYPE -exec touch -h {} +"
      - "cmake --build build/$BUILD_TYPE -j 2 TARGETS"
      - "ccache --show-stats"
    artifacts: ["build/"]

  - name: "test"
    image: "IMAGE"
    depends_on: ["build"]
    network: "none"
    matrix:
      BUILD_TYPE: ["Debug", "Release"]
    inputs: []
    commands:
      - "ctest --test-dir build/$BUILD_TYPE --output-on-failure --output-junit /workspace/reports/ctest.xml TESTS"
    reports: {junit: ["reports/*.xml"]}

  - name: "install"
    image: "IMAGE"
    depends_on: ["build"]
    network: "none"
    inputs: ["/include/**"]
    commands:
      - "cmake --install build/Release --prefix /workspace/dist"
    artifacts: ["dist/"]

  - name: "smoke"
    image: "IMAGE"
    depends_on: ["install"]
    network: "none"
    user: "1000:1000"
    inputs: ["/ci/smoke/**"]
    commands:
      - "cmake -S ci/smoke -B /tmp/smoke -G Ninja -DCMAKE_PREFIX_PATH=/workspace/dist"
      - "cmake --build /tmp/smoke"
      - "/tmp/smoke/hello"
"""

SMOKE_CMAKE = """\
cmake_minimum_required(VERSION 3.16)
project(hello CXX)
find_package(fmt 9.1 REQUIRED)
add_executable(hello hello.cc)
target_link_libraries(hello PRIVATE fmt::fmt)
"""
SMOKE_MAIN = """\
#include <fmt/format.h>
#include <vector>
#include <fmt/ranges.h>

int main() {
  fmt::print("hello from {} {}: {}\\n", "fmt", FMT_VERSION, std::vector<int>{1, 2, 3});
}
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-cmake:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/cmake") as ref:
        yield ref


def _pipeline(image: str) -> str:
    return (PIPELINE.replace("IMAGE", image).replace("TARGETS", "--target " + " ".join(TARGETS))
            .replace("TESTS", "-R '^(" + "|".join(TARGETS) + ")$'"))


def _project(root: Path, image: str) -> Path:
    """{fmt}'s upstream tarball with Debian's patches applied (as `apt-get source` leaves
    it), the trial's .kata-ci.yaml and the smoke program, as a git repository."""
    if not FMT_DEBIAN.exists():
        raise RuntimeError(f"{FMT_DEBIAN} is missing: run `bash .ci/install`")
    repo = repo_from_tarball(FMT_ORIG, root, "fmtlib-9.1.0+ds1", _pipeline(image), "fmt 9.1.0",
                             "apt-get source --download-only fmtlib from a deb-src line "
                             "for bookworm")
    with tarfile.open(FMT_DEBIAN) as tar:
        tar.extractall(repo, filter="data")
    for patch in (repo / "debian" / "patches" / "series").read_text().split():
        git(repo, "apply", f"debian/patches/{patch}")
    (repo / "ci" / "smoke").mkdir(parents=True)
    (repo / "ci" / "smoke" / "CMakeLists.txt").write_text(SMOKE_CMAKE)
    (repo / "ci" / "smoke" / "hello.cc").write_text(SMOKE_MAIN)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Debian's patches and a smoke test of the installed library")
    return repo


def _totals(out: str, step: str) -> str:
    """The JUnit totals on ``step``'s [PASS] line (``3 passed``)."""
    found = re.search(rf"^\[PASS\] {re.escape(step)} .*— (.+)$", out, re.M)
    assert found, out
    return found.group(1)


def _outside_kata(archive: Path, repo: Path, work: Path, build_type: str) -> str:
    """configure, build and ctest with the pipeline's commands in a chroot of the image's
    root filesystem (its own mount namespace: /proc and /dev go with it), not through
    Kata: ctest's JUnit file."""
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    (layer,) = read_oci_archive(archive).layers
    subprocess.run(["tar", "-xz", "-C", str(rootfs)], input=layer, check=True)
    git(work, "clone", "-q", str(repo), str(rootfs / "workspace"))
    config = (repo / ".kata-ci.yaml").read_text()
    commands = [c for c in re.findall(r'^      - "(.*)"$', config, re.M)
                if c.startswith(("cmake -S . ", "cmake --build build/", "ctest "))]
    assert len(commands) == 3, commands
    script = " && ".join(["cd /workspace", *commands]).replace("$BUILD_TYPE", build_type)
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
         'exec chroot "$0" env -i PATH=/usr/bin:/bin CCACHE_DIR=/tmp/ccache sh -c "$1"',
         str(rootfs), script], capture_output=True, text=True, timeout=900)
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return (rootfs / "workspace" / "reports" / "ctest.xml").read_text()
    finally:
        shutil.rmtree(rootfs)


def test_fmt_locally_then_on_two_workers_then_from_their_cache_and_outside_kata(
        image, tmp_path, containerd_daemon):
    from kata.realise.reports import parse_junit
    from test_remote_exec import worker_pool

    repo = _project(tmp_path / "a", image)
    kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address,
                       timeout=900)
    checked = kata("validate")
    assert "8 steps (3 matrix steps expanded to 6 instances)" in checked.stdout, checked
    assert checked.stderr == "", checked.stderr

    first = kata("run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[DONE] All 8 steps passed" in first.stdout
    assert "smoke | hello from fmt 90100: [1, 2, 3]" in first.stdout, first.stdout
    local = {step: _totals(first.stdout, step) for step in TEST}
    assert local[TEST[0]] == local[TEST[1]] == f"{len(TARGETS)} passed", local

    again = kata("run")
    assert again.stdout.splitlines()[-1].startswith("[DONE] 8 steps (8 cached, 0 ran)")

    # a test source: every step runs again. configure sees every source (CMake checks
    # that they exist), and smoke sees the test binaries too: a step sees what its
    # dependencies hand on, transitively (`kata why` says so)
    _edit(repo, "test/args-test.cc", "TEST(args_test, basic) {",
          "TEST(args_test, basic) {  // trial", "a test source")
    why = kata("why", f"//{BUILD[0]}")
    assert "input file test/args-test.cc: content" in why.stdout, why.stdout
    why = kata("why", "//smoke")
    assert "install itself is unchanged" in why.stdout, why.stdout
    edited = kata("run")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert _cache(edited.stdout) == {s: "MISS" for s in STEPS}, edited.stdout
    # ccache's directory came back: only the edited file was compiled again
    assert re.search(r"^build \(BUILD_TYPE=Debug\) \|\s+Hits:\s+[1-9]", edited.stdout, re.M), \
        edited.stdout

    # the README: configure runs again, its build tree is the same bytes (early cutoff)
    _edit(repo, "README.rst", "{fmt}", "{fmt} (trial)", "the README")
    readme = kata("run")
    assert readme.returncode == 0, readme.stdout + readme.stderr
    assert _cache(readme.stdout) == {**{s: "HIT" for s in STEPS},
                                     **{s: "MISS" for s in CONFIGURE}}, readme.stdout

    # every step again on two workers, with the same test totals; then an empty store
    # gets every step from their remote cache
    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(tmp_path / "bgd", db, logstream=logs) as bg:
        bg.logstream = logs  # type: ignore[attr-defined]
        config = tmp_path / "kata-config.yaml"
        config.write_text(f"remote:\n  logstream: {logs}\n")
        kata.env["KATA_CONFIG"] = str(config)
        with worker_pool((bg, image)) as workers:
            remote = kata("run", "--no-cache", "--remote-executor", bg.url,
                          "--remote-cache", bg.url)
            assert remote.returncode == 0, (remote.stdout + remote.stderr
                                            + workers[0].text() + workers[1].text())
            assert "[DONE] All 8 steps passed" in remote.stdout
            assert {step: _totals(remote.stdout, step) for step in TEST} == local
            for step in STEPS:
                log = kata("logs", "--step", step).stdout
                assert re.search(r"^kata: ran on worker w[12]$", log, re.M), log
        b = KataProcess(repo, store=tmp_path / "store-b", address=containerd_daemon.address,
                        timeout=900)
        hosted = b("run", "--remote-cache", bg.url)
        assert hosted.returncode == 0, hosted.stdout + hosted.stderr
        assert hosted.stdout.count(", remote)") == 8, hosted.stdout

    # the same commands outside Kata, in a chroot of the same image: the same totals
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-cmake:bookworm")
    outside = _outside_kata(archive, repo, tmp_path / "outside", "Debug")
    assert parse_junit(outside.encode(), "ctest.xml").summary() == local[TEST[0]]
