"""A new team adopting Kata CI on a real project whose tests need a server: redis-py 8.1.0
(its PyPI sdist, with its own test suite) against redis-server as a Kata service.

The image is built as a team without Docker Hub would: Debian 12 by mmdebstrap with
python3, pytest, build, hatchling, async-timeout and redis-server (Debian packages only),
served from a real local docker-registry. The pipeline (``PIPELINE``) is the one the trial
wrote from README.md and docs/ alone: an import check, the wheel as an artifact, and the
tests against the service in a matrix over two server configurations (the service takes
the instance's values, found by this trial). Locally: all hits on a re-run, early cutoff
after an edit that leaves the wheel byte-identical, a rerun after one that does not,
`kata why/logs/export/graph`, a failing test; then a second host with an empty store gets
every step from BuildGrid (cache-only); then two `kata worker`s run every step, each
test's redis-server as a pod on the worker.

The sdist comes from PyPI through pip in .ci/install (REDIS_SDIST); the image is cached
under /var/cache/kata-test after its first build (about three minutes).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from support.buildgrid import buildgrid
from support.buildgrid_exec import buildgrid_execution, kata_logstream
from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.postgres import postgres_cluster
from support.registry import served_image

pytestmark = pytest.mark.integration

REDIS_VERSION = "8.1.0"
REDIS_SDIST = CACHE_DIR / f"redis-{REDIS_VERSION}.tar.gz"  # .ci/install: pip download
PACKAGES = ("python3-pytest", "python3-packaging", "python3-build", "python3-hatchling",
            "python3-pyflakes", "python3-async-timeout", "redis-server")
TESTS = "tests/test_lock.py tests/test_encoding.py tests/test_pipeline.py"
NOEVICT, LRU = "test (MAXMEMORY_POLICY=noeviction)", "test (MAXMEMORY_POLICY=allkeys-lru)"

PIPELINE = """\
pipeline: "redis-py"
settings:
  timeout: "15m"
  max_parallel: 2
env:
  PYTHONDONTWRITEBYTECODE: "1"
steps:
  - name: "lint"
    image: "IMAGE"
    inputs: ["redis/**", "pyproject.toml"]
    network: "none"
    commands:
      - "python3 -m compileall -q redis"
      - "python3 -c 'import redis; print(\\"redis-py\\", redis.__version__)'"
  - name: "wheel"
    image: "IMAGE"
    inputs: ["redis/**", "pyproject.toml", "README.md", "LICENSE"]
    network: "none"
    commands:
      # Debian 12's hatchling 1.12 refuses the 3.13/3.14 classifiers it predates
      - "sed -i '/Python :: 3.1[34]/d' pyproject.toml"
      - "python3 -m build --wheel --no-isolation --skip-dependency-check --outdir dist ."
    artifacts: ["dist/*.whl"]
  - name: "test"
    image: "IMAGE"
    depends_on: ["wheel"]
    inputs: ["tests/**"]
    matrix:
      MAXMEMORY_POLICY: ["noeviction", "allkeys-lru"]
    services:
      - name: "redis"
        image: "IMAGE"
        commands:
          - "exec redis-server --port 6379 --save '' --maxmemory 64mb --maxmemory-policy $MAXMEMORY_POLICY"
        ready: {tcp: 6379, timeout: "30s"}
    commands:
      - "redis-cli -h redis config get maxmemory-policy | grep -x $MAXMEMORY_POLICY"
      - "python3 -m zipfile -e dist/redis-*.whl /tmp/site"
      - "PYTHONPATH=/tmp/site python3 -m pytest -q -p no:cacheprovider -p no:warnings --junitxml=reports/junit.xml --redis-url=redis://redis:6379/0 TESTS"
    reports: {junit: ["reports/*.xml"]}
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-redis:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/redis-py") as ref:
        yield ref


def _project(root: Path, image: str) -> Path:
    """redis-py's sdist as a git repository with the trial's .kata-ci.yaml."""
    return repo_from_tarball(
        REDIS_SDIST, root, f"redis-{REDIS_VERSION}",
        PIPELINE.replace("IMAGE", image).replace("TESTS", TESTS), "redis-py sdist",
        f"pip download --no-binary :all: --no-deps redis=={REDIS_VERSION}")


def _edit(repo: Path, path: str, old: str, new: str, message: str) -> None:
    f = repo / path
    text = f.read_text()
    assert old in text, path
    f.write_text(text.replace(old, new, 1))
    git(repo, "commit", "-q", "-am", message)


def _cache(out: str) -> dict[str, str]:
    """step -> HIT or MISS, from the [CACHE] lines."""
    return dict(re.findall(r"^\[CACHE\] (.+?): (HIT|MISS)", out, re.M))


def test_redis_py_locally_then_from_a_remote_cache_on_an_empty_host(
        image, tmp_path, containerd_daemon, runtime):
    repo = _project(tmp_path / "a", image)
    kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address,
                       timeout=300)
    assert "4 steps (1 matrix step expanded to 2 instances)" in kata("validate").stdout
    graph = kata("graph", "--format", "dot").stdout
    assert f'"wheel" -> "{NOEVICT}"' in graph and f'"wheel" -> "{LRU}"' in graph

    with buildgrid(tmp_path / "bgd") as bg:
        remote = ("--remote-cache", bg.url)
        first = kata("run", *remote)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "[DONE] All 4 steps passed" in first.stdout
        # each instance's redis-server got its own policy, and the suite passed against it
        for policy, step in (("noeviction", NOEVICT), ("allkeys-lru", LRU)):
            assert f"{step} | {policy}" in first.stdout
            assert re.search(rf"^\[PASS\] {re.escape(step)} .* — \d+ passed", first.stdout,
                             re.M), first.stdout

        again = kata("run", *remote)
        assert again.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")

        # an edit the wheel does not carry (a ruff setting): lint and wheel run again, the
        # wheel comes out byte-identical, and both test instances hit by early cutoff
        _edit(repo, "pyproject.toml", "line-length = 88", "line-length = 100", "ruff")
        why = kata("why", "//test")
        assert "its key changed" in why.stdout and "early cutoff" in why.stdout, why.stdout
        cutoff = kata("run", *remote)
        assert cutoff.returncode == 0, cutoff.stdout + cutoff.stderr
        assert _cache(cutoff.stdout) == {"lint": "MISS", "wheel": "MISS", NOEVICT: "HIT",
                                         LRU: "HIT"}, cutoff.stdout

        # an edit the wheel does carry: the tests run again against the new wheel
        _edit(repo, "redis/lock.py", "import threading", "import threading  # trial",
              "a source edit")
        rerun = kata("run", *remote)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert _cache(rerun.stdout) == {"lint": "MISS", "wheel": "MISS", NOEVICT: "MISS",
                                        LRU: "MISS"}, rerun.stdout

        logs = kata("logs", "--step", "wheel")
        assert f"Successfully built redis-{REDIS_VERSION}-py3-none-any.whl" in logs.stdout
        service = kata("logs", "--step", LRU, "--service", "redis")
        assert "Ready to accept connections" in service.stdout, service.stdout + service.stderr
        out = tmp_path / "out"
        export = kata("export", "--step", "wheel", "--out", str(out))
        assert export.returncode == 0, export.stderr
        (wheel,) = (out / "dist").glob("redis-*.whl")
        with zipfile.ZipFile(wheel) as whl:
            assert "# trial" in whl.read("redis/lock.py").decode()

        # host B: its own clone, an empty store, the same remote: every step is a hit, and
        # the log of one no step of B needed comes from the remote when asked for
        repo_b = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(repo), str(repo_b))
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address,
                        timeout=300)
        hosted = b("run", *remote)
        assert hosted.returncode == 0, hosted.stdout + hosted.stderr
        assert hosted.stdout.count(", remote)") == 4, hosted.stdout
        assert hosted.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")
        b_logs = b("logs", "--step", "wheel", *remote)
        assert "Successfully built" in b_logs.stdout, b_logs.stdout + b_logs.stderr

    # a failing test: the run fails, naming it from the JUnit report
    _edit(repo, "tests/test_lock.py", "    def test_lock(self, r):\n",
          "    def test_lock(self, r):\n        assert False, 'a failing test'\n", "fail")
    failed = kata("run", "--step", NOEVICT)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"^\[FAIL\] test \(MAXMEMORY_POLICY=noeviction\) \(exit 1, .*\) — "
                     r"\d+ passed, 1 skipped, 1 failed$", failed.stdout, re.M), failed.stdout
    assert "TestLock::test_lock: AssertionError: a failing test" in failed.stdout


def test_redis_py_on_two_workers_with_redis_server_as_a_pod_there(image, tmp_path,
                                                                   containerd_daemon):
    from test_remote_exec import worker_pool

    repo = _project(tmp_path, image)
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    with postgres_cluster() as db, kata_logstream() as logs, \
            buildgrid_execution(tmp_path / "bgd", db, logstream=logs) as bg:
        bg.logstream = logs  # type: ignore[attr-defined]
        config = tmp_path / "kata-config.yaml"
        config.write_text(f"remote:\n  logstream: {logs}\n")
        kata.env["KATA_CONFIG"] = str(config)
        with worker_pool((bg, image)) as workers:
            run = kata("run", "--remote-executor", bg.url)
            assert run.returncode == 0, (run.stdout + run.stderr + workers[0].text()
                                         + workers[1].text())
            assert "[DONE] All 4 steps passed" in run.stdout
            ran = {}
            for step in ("lint", "wheel", NOEVICT, LRU):
                log = kata("logs", "--step", step).stdout
                found = re.findall(r"kata: ran on worker (\S+)", log)
                assert len(found) == 1, log
                ran[step] = found[0]
            assert set(ran.values()) <= {"w1", "w2"}, ran
            # the service ran beside its step on the worker, and its log came back
            service = kata("logs", "--step", NOEVICT, "--service", "redis")
            assert "Ready to accept connections" in service.stdout, service.stdout
            again = kata("run", "--remote-executor", bg.url)
            assert again.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")
