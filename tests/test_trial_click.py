"""A newcomer adopting Kata CI on a real project from README.md and docs/ alone: click 8.1.7
(its PyPI sdist, with its own test suite), in a Debian 12 image made by mmdebstrap (python3,
pytest, coverage, build, setuptools, pyflakes: Debian packages only) served from a real
local docker-registry. The pipeline (``PIPELINE``) is the one the trial wrote: lint, a
test matrix with coverage and JUnit reports, an allowed failure, a wheel, a smoke test of
it, a release step with a secret that runs only on tags, a status step on failure, retries.

Found on the way (each pinned here or in a unit test): a missing secret did not name its
step nor the near name typed instead; an image one letter off did not name the one the
host has; `artifacts: [~/...]` loaded and failed every run; `kata gc` was "No such
command"; `kata web` refused a read-only store and explained misses in older words than
`kata why`.

The sdist comes from PyPI through pip in .ci/install (CLICK_SDIST); the image is cached
under /var/cache/kata-test after its first build (about two minutes).
"""

from __future__ import annotations

import json
import re
import zipfile

import pytest

from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.registry import served_image

pytestmark = pytest.mark.integration

CLICK_VERSION = "8.1.7"
CLICK_SDIST = CACHE_DIR / f"click-{CLICK_VERSION}.tar.gz"  # .ci/install: pip download
PACKAGES = ("python3-pytest", "python3-coverage", "python3-build", "python3-setuptools",
            "python3-wheel", "python3-pyflakes")
TOKEN = "pypi-AgEIcHlwaS5vcmc-trial-token"
T0, T1 = "test (PYTHONHASHSEED=0)", "test (PYTHONHASHSEED=4242)"

PIPELINE = """\
# yaml-language-server: $schema=.kata-ci.schema.json
pipeline: "click"

settings:
  timeout: "20m"
  max_parallel: 4
  fail_fast: true

env:
  PYTHONDONTWRITEBYTECODE: "1"

triggers:
  - event: "push"
    branches: ["main"]
  - event: "tag"
    pattern: "v*"

x-py: &py
  image: "IMAGE"
  network: "none"

steps:
  - name: "lint"
    <<: *py
    inputs: ["src/**", "tests/**"]
    commands:
      - python3 -m pyflakes $(find src/click -name '*.py' ! -name __init__.py)

  - name: "test"
    <<: *py
    inputs: ["src/**", "tests/**", "docs/**", "setup.cfg"]
    env: {PYTHONPATH: "/workspace/src"}
    matrix:
      PYTHONHASHSEED: ["0", "4242"]
    commands:
      - "python3 -m coverage run --source=src/click -m pytest -q -p no:cacheprovider --junitxml=reports/junit.xml tests"
      - "python3 -m coverage xml -o coverage/coverage.xml"
      - "python3 -m coverage report | tail -n 1"
    reports: {junit: ["reports/*.xml"]}
    artifacts: ["reports/", "coverage/"]
    retry: {max: 1, on: [exit_code: 137]}

  - name: "docs-links"
    <<: *py
    inputs: ["docs/**", "README.*"]
    allow_failure: true
    commands:
      - "grep -rn 'http://' docs README.* && exit 1 || true"

  - name: "wheel"
    <<: *py
    depends_on: ["lint", "test"]
    inputs: ["src/**", "setup.cfg", "setup.py", "README.*", "LICENSE*", "MANIFEST.in"]
    commands:
      - "python3 -m build --wheel --no-isolation --skip-dependency-check --outdir dist ."
    artifacts: ["dist/*.whl"]

  - name: "smoke"
    <<: *py
    depends_on: ["wheel"]
    inputs: []
    commands:
      - "python3 -m zipfile -e dist/click-*.whl /tmp/site"
      - "PYTHONPATH=/tmp/site python3 -c 'import click; print(\\"click\\", click.__version__)'"

  - name: "release"
    <<: *py
    depends_on: ["smoke"]
    inputs: []
    secrets: ["PYPI_TOKEN"]
    when: 'tag =~ "v*"'
    commands:
      - "ls dist/"
      - "test -n \\"$PYPI_TOKEN\\" && echo uploading dist/*.whl with token $PYPI_TOKEN"

  - name: "report-failure"
    <<: *py
    when: "failure()"
    inputs: []
    commands:
      - "echo 'a step failed on this commit'"
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-click:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/click") as ref:
        yield ref


def _cache(out: str) -> dict[str, str]:
    """step -> HIT or MISS, from the [CACHE] lines."""
    return dict(re.findall(r"^\[CACHE\] (.+?): (HIT|MISS)", out, re.M))


def test_click_from_its_sdist_as_a_newcomer_writes_it(image, tmp_path, containerd_daemon,
                                                     runtime):
    repo = repo_from_tarball(CLICK_SDIST, tmp_path, f"click-{CLICK_VERSION}",
                             PIPELINE.replace("IMAGE", image), "click sdist",
                             f"pip download --no-binary :all: --no-deps click=={CLICK_VERSION}")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300, drop=("PYPI_TOKEN",))
    valid = kata("validate")
    assert valid.returncode == 0 and "8 steps (1 matrix step expanded to 2 instances)" in \
        valid.stdout, valid.stdout + valid.stderr
    assert "warning" not in valid.stderr, valid.stderr  # every inputs pattern matches

    first = kata("run")
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    assert "[SKIP] release (when: tag (no tag) does not match v*)" in out
    for step in (T0, T1):  # click's own suite, its totals from the JUnit report
        assert re.search(rf"^\[PASS\] {re.escape(step)} \(.*\) — \d+ passed, \d+ skipped$",
                         out, re.M), out
    assert re.search(r"^\[WARN\] docs-links \(exit 1, allowed to fail", out, re.M), out
    assert f"smoke | click {CLICK_VERSION}" in out
    assert "[SKIP] report-failure (no step before it failed)" in out
    again = kata("run")
    assert again.returncode == 0
    assert _cache(again.stdout) == {"lint": "HIT", T0: "HIT", T1: "HIT", "wheel": "HIT",
                                    "smoke": "HIT", "docs-links": "MISS"}, again.stdout

    out_dir = tmp_path / "out"
    built = kata("build", "//wheel", "--out", str(out_dir))
    assert built.returncode == 0, built.stderr
    (wheel,) = (out_dir / "dist").glob("click-*.whl")
    assert "click/core.py" in zipfile.ZipFile(wheel).namelist()
    exported = kata("export", "--step", "test", "--out", str(tmp_path / "exp"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "exp" / T0 / "coverage" / "coverage.xml").is_file()

    # a tag: the release step wants its secret, names its step, and a typo is named too
    git(repo, "tag", f"v{CLICK_VERSION}")
    tag = ("--event", "tag", "--tag", f"v{CLICK_VERSION}")
    typo = kata("run", *tag, "--secret", f"PYPI_TOKN={TOKEN}")
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert ("missing secret(s): PYPI_TOKEN (step release)" in typo.stderr and
            "PYPI_TOKN was given, which no step of this run declares: did you mean "
            "PYPI_TOKEN?" in typo.stderr), typo.stderr
    released = kata("run", *tag, "--json", PYPI_TOKEN=TOKEN)
    assert released.returncode == 0, released.stdout + released.stderr
    assert TOKEN not in released.stdout
    events = [json.loads(x) for x in released.stdout.splitlines()]
    lines = [e["text"] for e in events if e["event"] == "output" and e["step"] == "release"]
    assert lines == [f"click-{CLICK_VERSION}-py3-none-any.whl",
                     f"uploading dist/click-{CLICK_VERSION}-py3-none-any.whl with token ***"]

    # a source edit: kata why and the dashboard's why say the same, in the same words
    source = repo / "src" / "click" / "utils.py"
    source.write_text("# an edit\n" + source.read_text())
    git(repo, "commit", "-q", "-am", "edit")
    why = kata("why", "//smoke")
    assert "wheel itself changed (input file src/click/utils.py)" in why.stdout, why.stdout
    rerun = kata("run")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    from kata.web.data import miss_reasons, run_view
    from store import Store

    run_id = json.loads(kata("runs", "--json").stdout)["runs"][0]["id"]
    with Store.open(tmp_path / "store", read_only=True) as store:
        shown = miss_reasons(store, run_view(store, run_id))
    assert shown["smoke"] == why.stdout.splitlines(), (shown["smoke"], why.stdout)
