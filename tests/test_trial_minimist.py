"""A new front-end team adopting Kata CI on a real npm project: minimist 1.2.8 (its npm
tarball, which ships its tape tests and eslint config) with the package-lock.json the team
commits (.ci/install resolves it with npm as of a fixed date).

The image is Debian 12's nodejs 18 and npm 9 by mmdebstrap, served from a real local
docker-registry. The pipeline (``PIPELINE``) is the one the trial wrote from docs/config.md
alone: `npm ci` with npm's cache kept by `cache:` keyed on package-lock.json (npm's ~/.npm
pointed into the workspace: `cache.paths` are workspace paths, and '~/.npm' is now refused
with that fix), lint and test in parallel on node_modules as an artifact, `npm pack` as an
artifact that a non-root step installs offline. Frictions met, kept here as comments in
the pipeline: upstream's prepack needs its .gitignore; a uid with no passwd entry
gets HOME=/. tape emits TAP only, so no `reports.junit`. Locally: all hits on a re-run, an
edit of a test file reruns lint, test and pack but not `npm ci`; then a second host with an
empty store gets every step from BuildGrid (cache-only).

Tests reach no registry: `npm ci --offline` installs from npm's cache of the locked tree,
which .ci/install fetched and the repository carries as ci/npm-cache.tar (a real team's
`npm ci` fetches from the registry; on this machine, whose egress re-signs TLS, that also
needed the host's CA bundle in NODE_EXTRA_CA_CERTS).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.buildgrid import buildgrid
from support.cli import KataProcess
from support.git import git, repo_from_tarball
from support.images import CACHE_DIR, debian_image_archive
from support.registry import served_image
from test_trial_redis_py import _cache, _edit

pytestmark = pytest.mark.integration

TARBALL = CACHE_DIR / "minimist-1.2.8.tgz"  # .ci/install: npm pack
LOCKFILE = CACHE_DIR / "minimist-1.2.8.package-lock.json"  # .ci/install: npm, as of a fixed date
NPM_CACHE = CACHE_DIR / "minimist-1.2.8.npm-cache.tar"  # .ci/install: npm ci --cache
PACKAGES = ("nodejs", "npm", "git")
STEPS = ("install", "lint", "test", "pack", "smoke")

PIPELINE = r"""
pipeline: "minimist"
settings:
  timeout: "15m"
  max_parallel: 2

steps:
  - name: "install"
    image: "IMAGE"
    inputs: ["/package.json", "/package-lock.json", "/ci/npm-cache.tar"]
    # tests reach no registry: npm's cache of the locked tree comes with the repository
    network: "none"
    commands:
      - "node --version && npm --version"
      - "mkdir -p .npm && tar xf ci/npm-cache.tar -C .npm"
      # npm's cache (~/.npm) pointed into the workspace so that kata can keep it
      - "npm ci --cache .npm --offline --ignore-scripts --no-audit --no-fund"
    cache:
      paths: [".npm/"]
      key_files: ["/package-lock.json"]
    artifacts: ["node_modules/"]

  - name: "lint"
    image: "IMAGE"
    depends_on: ["install"]
    inputs: ["**/*.js", "/.eslintrc", "/package.json"]
    network: "none"
    commands:
      - "npx --no-install eslint --ext=js,mjs ."

  - name: "test"
    image: "IMAGE"
    depends_on: ["install"]
    inputs: ["/index.js", "test/**", "/package.json"]
    network: "none"
    commands:
      - "npx --no-install tape 'test/**/*.js'"

  - name: "pack"
    image: "IMAGE"
    depends_on: ["install"]
    inputs: ["/index.js", "/package.json", "/README.md", "/LICENSE", "/CHANGELOG.md", "example/**", "test/**", "/.eslintrc", "/.nycrc", ".github/**"]
    network: "none"
    commands:
      - "mkdir -p dist"
      # upstream's prepack (npmignore --auto) needs its .gitignore, not in the npm tarball
      - "npm pack --ignore-scripts --pack-destination dist"
    artifacts: ["dist/*.tgz"]

  - name: "smoke"
    image: "IMAGE"
    depends_on: ["pack", "lint", "test"]
    inputs: []
    network: "none"
    user: "1000"
    # uid 1000 has no passwd entry in the image: HOME would be /, where npm cannot write
    env: {HOME: "/tmp"}
    commands:
      - "mkdir app && cd app && npm init -y >/dev/null"
      - "npm install --offline --no-audit --no-fund ../dist/minimist-1.2.8.tgz"
      - "node -e 'console.log(JSON.stringify(require(\"minimist\")([\"-x\", \"3\", \"--y=z\"])))'"
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The trial image's reference in a real registry every containerd here reaches."""
    archive = debian_image_archive(include=PACKAGES, ref="kata.local/debian-node:bookworm")
    with served_image(tmp_path_factory.mktemp("registry"), archive, "trial/node") as ref:
        yield ref


def _project(root: Path, image: str) -> Path:
    """minimist's npm tarball as a git repository with its lockfile, npm's cache of its
    locked tree and the trial's .kata-ci.yaml."""
    for needed in (LOCKFILE, NPM_CACHE):
        if not needed.exists():
            raise RuntimeError(f"{needed} is missing: run `bash .ci/install`")
    repo = repo_from_tarball(TARBALL, root, "package", PIPELINE.replace("IMAGE", image),
                             "minimist 1.2.8", "npm pack minimist@1.2.8")
    shutil.copy(LOCKFILE, repo / "package-lock.json")
    (repo / "ci").mkdir()
    shutil.copy(NPM_CACHE, repo / "ci" / "npm-cache.tar")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the lockfile and npm's cache of its tree")
    return repo


def test_minimist_npm_ci_cached_lint_and_test_in_parallel_then_a_remote_cache(
        image, tmp_path, containerd_daemon):
    repo = _project(tmp_path / "a", image)
    kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address,
                       timeout=600)
    assert "5 steps" in kata("validate").stdout

    with buildgrid(tmp_path / "bgd") as bg:
        remote = ("--remote-cache", bg.url)
        first = kata("run", *remote)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "[DONE] All 5 steps passed" in first.stdout
        assert "[RUN] lint, test (parallel)" in first.stdout
        assert 'smoke | {"_":[],"x":3,"y":"z"}' in first.stdout, first.stdout

        again = kata("run", *remote)
        assert again.stdout.splitlines()[-1].startswith("[DONE] 5 steps (5 cached, 0 ran)")

        # a test's name in a test file: lint, test and pack run again; `npm ci` does not
        # (a trailing `// comment` there fails upstream's lint: line-comment-position)
        _edit(repo, "test/parse.js", "test('parse args'", "test('parse args (trial)'",
              "a test name")
        edited = kata("run", *remote)
        assert edited.returncode == 0, edited.stdout + edited.stderr
        cache = _cache(edited.stdout)
        assert "# parse args (trial)" in edited.stdout
        assert cache["install"] == "HIT" and cache["lint"] == cache["test"] == \
            cache["pack"] == "MISS", edited.stdout

        # host B: its own clone, an empty store, the same remote: every step is a hit
        repo_b = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(repo), str(repo_b))
        b = KataProcess(repo_b, store=tmp_path / "store-b", address=containerd_daemon.address,
                        timeout=600)
        hosted = b("run", *remote)
        assert hosted.returncode == 0, hosted.stdout + hosted.stderr
        assert hosted.stdout.count(", remote)") == 5, hosted.stdout
