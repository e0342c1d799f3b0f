"""A new team adopting Kata CI on a real Python project whose tests need PostgreSQL as a
service: psycopg2 2.9.10 (its PyPI sdist, which carries its test suite; a C extension over
libpq), tested against Debian's PostgreSQL 15 started inside a Kata service container as the
image's ``postgres`` user.

psycopg 3 was the first choice, but its PyPI sdist holds no tests (they live in the GitHub
tree only) and Debian's source package of it is not on this machine's mirror, so the suite
could not come through a package registry; psycopg2's sdist has it (``tests/``, configured by
``PSYCOPG2_TESTDB*`` variables, as psycopg 3's by ``PSYCOPG_TEST_DSN``).

The image is built as a team without Docker Hub would: Debian 12 by mmdebstrap with python3,
pytest, build, pip, pyflakes, gcc, libpq-dev and postgresql (Debian packages only), served
from a real local docker-registry. The pipeline (``PIPELINE``) is the one the trial wrote
from docs/config.md alone: a lint step, a build step (sdist, then the wheel built from the
sdist, with a pip cache; the wheel is the artifact), and the tests against the service in a
matrix over two server settings (``standard_conforming_strings`` on and off, which changes how psycopg2
quotes strings), each with a JUnit report.

Locally: all hits on a re-run; an edit of NEWS (in the sdist, not in the wheel) reruns the
build, whose wheel comes out byte-identical, so both test instances hit by early cutoff;
an edit of a Python module reruns everything. Then a second host with an
empty store gets every step from BuildGrid (cache-only).

The sdist comes from PyPI through pip in .ci/install (PSYCOPG2_SDIST); the image is cached
under /var/cache/kata-test after its first build (about four minutes).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from support.buildgrid import buildgrid
from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.registry import served_image
from test_trial_redis_py import _cache, _edit

pytestmark = pytest.mark.integration

PSYCOPG2_VERSION = "2.9.10"
PSYCOPG2_SDIST = CACHE_DIR / f"psycopg2-{PSYCOPG2_VERSION}.tar.gz"  # .ci/install: pip download
PACKAGES = ("python3-pytest", "python3-dev", "gcc", "libc6-dev", "libpq-dev",
            "python3-setuptools", "python3-wheel", "python3-build", "python3-pip",
            "python3-pyflakes", "postgresql")
# a fast, server-facing part of the suite (the whole one takes ~70 s per instance here):
# quoting is what standard_conforming_strings changes
TESTS = ("tests/test_quote.py tests/test_types_basic.py tests/test_dates.py tests/test_sql.py "
         "tests/test_transaction.py tests/test_extras_dictcursor.py")
ON = "test (CONFORMING_STRINGS=on)"
OFF = "test (CONFORMING_STRINGS=off)"
STEPS = ("lint", "build", ON, OFF)

PIPELINE = """\
pipeline: "psycopg2"
settings:
  timeout: "15m"
  max_parallel: 2
env:
  PYTHONDONTWRITEBYTECODE: "1"
steps:
  - name: "lint"
    image: "IMAGE"
    inputs: ["lib/**", "tests/**", "setup.py"]
    network: "none"
    commands:
      - "python3 -m compileall -q lib tests setup.py"
      # lib/ re-exports names on purpose: everything else pyflakes says is a problem
      - "python3 -m pyflakes lib setup.py > pyflakes.txt || true"
      - "grep -v 'imported but unused$' pyflakes.txt > problems.txt || true"
      - "cat problems.txt; test ! -s problems.txt"

  # sdist -> wheel in one step: the tests get the wheel only. As two steps, the test step
  # would also see the sdist the wheel step hands on (docs/config.md, depends_on), whose
  # bytes change on every build (setuptools stamps it), and early cutoff would never hold
  - name: "build"
    image: "IMAGE"
    network: "none"
    env:
      PIP_CACHE_DIR: "/workspace/.pip-cache"
    cache:
      paths: [".pip-cache/"]
    commands:
      - "python3 -m build --sdist --no-isolation --skip-dependency-check --outdir dist ."
      # one fixed build directory: gcc writes it into the debug info, and the same path
      # gives the same wheel bytes for the same sources (early cutoff)
      - "mkdir /tmp/build && tar -xzf dist/psycopg2-*.tar.gz -C /tmp/build"
      - "python3 -m pip wheel --no-deps --no-build-isolation --no-index -w wheelhouse /tmp/build/psycopg2-*"
    artifacts: ["wheelhouse/*.whl"]

  - name: "test"
    image: "IMAGE"
    depends_on: ["build"]
    inputs: ["tests/**"]
    matrix:
      CONFORMING_STRINGS: ["on", "off"]
    services:
      - name: "postgres"
        image: "IMAGE"
        user: "100:102"        # the image's postgres user: initdb and postgres refuse root
        commands:
          - "/usr/lib/postgresql/15/bin/initdb -D /tmp/pgdata -U postgres --auth=trust -E UTF8 --no-sync"
          - "echo 'host all all all trust' >> /tmp/pgdata/pg_hba.conf"
          - "exec /usr/lib/postgresql/15/bin/postgres -D /tmp/pgdata -c listen_addresses='*' -c unix_socket_directories=/tmp -c fsync=off -c standard_conforming_strings=$CONFORMING_STRINGS"
        ready: {tcp: 5432, timeout: "60s"}
    env:
      PSYCOPG2_TESTDB_HOST: "postgres"
      PSYCOPG2_TESTDB_USER: "postgres"
    commands:
      - "psql -h postgres -U postgres -d postgres -tAc 'SHOW standard_conforming_strings' | grep -x $CONFORMING_STRINGS"
      - "psql -h postgres -U postgres -d postgres -qc 'CREATE DATABASE psycopg2_test'"
      - "python3 -m pip install -q --no-index --no-deps --target /tmp/site wheelhouse/psycopg2-*.whl"
      - "PYTHONPATH=/tmp/site python3 -m pytest -q -p no:cacheprovider -k 'not test_suite' --junitxml=reports/junit.xml TESTS"
    reports: {junit: ["reports/*.xml"]}
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-postgres:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/psycopg2") as ref:
        yield ref


def _project(root: Path, image: str) -> Path:
    """psycopg2's sdist as a git repository with the trial's .kata-ci.yaml."""
    return repo_from_tarball(
        PSYCOPG2_SDIST, root, f"psycopg2-{PSYCOPG2_VERSION}",
        PIPELINE.replace("IMAGE", image).replace("TESTS", TESTS), "psycopg2 sdist",
        f"pip download --no-binary :all: --no-deps psycopg2=={PSYCOPG2_VERSION}")


def test_psycopg2_against_a_postgresql_service_locally_then_from_a_remote_cache(
        image, tmp_path, containerd_daemon, runtime):
    repo = _project(tmp_path / "a", image)
    kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address,
                       timeout=600)
    checked = kata("validate")
    assert "4 steps (1 matrix step expanded to 2 instances)" in checked.stdout, checked
    assert checked.stderr == "", checked.stderr  # no inputs pattern matching nothing

    with buildgrid(tmp_path / "bgd") as bg:
        remote = ("--remote-cache", bg.url)
        first = kata("run", *remote)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "[DONE] All 4 steps passed" in first.stdout
        for value, step in (("on", ON), ("off", OFF)):
            # the server in this instance's service has this instance's setting
            assert f"{step} | {value}" in first.stdout, first.stdout
            # the JUnit totals on the step's line: the tests ran against it and passed
            assert re.search(rf"^\[PASS\] {re.escape(step)} .* — \d+ passed", first.stdout,
                             re.M), first.stdout

        again = kata("run", *remote)
        assert again.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")

        # NEWS is in the sdist, not in the wheel: the build runs again, the wheel is the
        # same bytes, and both test instances hit by early cutoff
        _edit(repo, "NEWS", "Current release", "Current release (trial)", "news")
        why = kata("why", "//test")
        assert "still hits if build's output comes out the same (early cutoff)" in why.stdout
        cutoff = kata("run", *remote)
        assert cutoff.returncode == 0, cutoff.stdout + cutoff.stderr
        assert _cache(cutoff.stdout) == {"lint": "HIT", "build": "MISS", ON: "HIT",
                                         OFF: "HIT"}, cutoff.stdout
        # pip keeps its wheel cache under the step's cache path, saved after each pass
        assert "Stored in directory: /workspace/.pip-cache/wheels/" in cutoff.stdout

        out = tmp_path / "out"
        export = kata("export", "--step", "build", "--out", str(out))
        assert export.returncode == 0, export.stderr
        (wheel,) = (out / "wheelhouse").glob("psycopg2-*.whl")
        with zipfile.ZipFile(wheel) as whl:
            assert any(n.startswith("psycopg2/_psycopg.") for n in whl.namelist())
        service = kata("logs", "--step", OFF, "--service", "postgres")
        assert "database system is ready to accept connections" in service.stdout, service

        # host B: its own clone, an empty store, the same remote: every step is a hit
        repo_b = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(repo), str(repo_b))
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address,
                        timeout=300)
        hosted = b("run", *remote)
        assert hosted.returncode == 0, hosted.stdout + hosted.stderr
        assert hosted.stdout.count(", remote)") == 4, hosted.stdout
        assert hosted.stdout.splitlines()[-1].startswith("[DONE] 4 steps (4 cached, 0 ran)")

    # a Python module's edit is in the wheel: lint and build run again, and the tests wait
    # for the new wheel (planned only: running it is what the NEWS edit already showed)
    _edit(repo, "lib/extras.py", "import os as _os\n", "import os as _os  # trial\n",
          "a source edit")
    plan = kata("run", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert re.search(r"^\[PLAN\] lint: MISS", plan.stdout, re.M), plan.stdout
    assert re.search(r"^\[PLAN\] build: MISS", plan.stdout, re.M), plan.stdout
    for step in (ON, OFF):
        assert f"[PLAN] {step}: MISS (not in the store; may still hit once build rebuilt " \
               "(early cutoff))" in plan.stdout, plan.stdout
