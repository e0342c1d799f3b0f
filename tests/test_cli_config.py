"""`kata validate`, `kata graph`, `kata why`, `kata version`, -f and config discovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata.cli.config_cmds import overview_lines
from kata.compile import compile_pipeline
from kata.loader import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def kata(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kata", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / ".git").mkdir()  # a repository root marker is enough for discovery
    (tmp_path / ".kata-ci.yaml").write_text((FIXTURES / "quickstart.yaml").read_text())
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "src" / "main.c").write_text("int main;\n")
    return tmp_path


def test_validate_from_a_subdirectory(repo) -> None:
    r = kata("validate", "--offline", cwd=repo / "src" / "deep")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Config valid. 3 steps, 0 cycles, 2 parallel groups\n", "")


def test_graph_overview_format(repo) -> None:
    assert kata("graph", cwd=repo).stdout == "build -> test, lint\n"
    r = kata("-f", str(FIXTURES / "service.yaml"), "graph", cwd=repo)
    assert r.stdout == "build -> unit-test, integration-test\nunit-test, integration-test -> deploy\n"


def test_overview_lines_cover_odd_shapes() -> None:
    deps = {"a": (), "b": ("a",), "c": (), "d": ("a", "c"), "e": ("b",), "lonely": ()}
    assert overview_lines(list(deps), deps) == ["a -> b", "a, c -> d", "b -> e", "lonely"]


def test_graph_dot_and_json(repo) -> None:
    dot = kata("graph", "--format", "dot", cwd=repo).stdout
    assert dot.startswith('digraph "my-app" {') and '"build" -> "test";' in dot and dot.rstrip().endswith("}")
    r = kata("-f", str(FIXTURES / "pinned.yaml"), "graph", "--format", "json", cwd=repo)
    doc = json.loads(r.stdout)
    assert [s["name"] for s in doc["steps"]] == ["one", "two"] and doc["edges"] == [["one", "two"]]
    assert all(len(s["drv_hash"]) == 64 for s in doc["steps"])  # pinned: hashes without a runtime
    doc = json.loads(kata("graph", "--format", "json", cwd=repo).stdout)
    assert [s["drv_hash"] for s in doc["steps"]] == [None, None, None]  # tags unresolved
    assert doc["levels"] == [["build"], ["test", "lint"]]


def test_why_without_history_says_so(repo) -> None:
    r = kata("why", "//build", cwd=repo)
    assert r.returncode == 0 and "no previous derivation" in r.stdout


def test_why_against_a_previous_derivation(tmp_path) -> None:
    (tmp_path / ".git").mkdir()
    cfg = tmp_path / ".kata-ci.yaml"
    cfg.write_text((FIXTURES / "pinned.yaml").read_text())
    (tmp_path / "a.c").write_text("int a;\n")
    old = compile_pipeline(load_pipeline(cfg), repo_root=tmp_path).nodes["one"].record()
    (tmp_path / "prev.drv").write_bytes(old.encode())
    (tmp_path / "a.c").write_text("int A;\n")
    cfg.write_text(cfg.read_text().replace("[make]", "[make, make install]"))
    r = kata("why", "//one", "--against", str(tmp_path / "prev.drv"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "command #2: added" in r.stdout and "input file a.c" in r.stdout


@pytest.mark.parametrize("text,reason_text", [
    ("steps:\n  - name: a\n    image: x\n    depend_on: [b]\n", ".kata-ci.yaml:4:5: unknown key 'depend_on'"),
    ("steps:\n  - {name: a, image: x, depends_on: [a]}\n", ".kata-ci.yaml:2:38: dependency cycle: a -> a"),
    ("steps: [\n", ".kata-ci.yaml:2:1: YAML syntax error"),
    ("", ".kata-ci.yaml:1:1: the config file is empty"),
])
def test_config_errors_exit_2_with_position(repo, text, reason_text) -> None:
    (repo / ".kata-ci.yaml").write_text(text)
    for cmd in (["validate"], ["graph"], ["why", "//a"]):
        r = kata(*cmd, cwd=repo)
        assert r.returncode == 2 and reason_text in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1


def test_missing_config_and_bad_labels(tmp_path) -> None:
    (tmp_path / ".git").mkdir()
    r = kata("validate", cwd=tmp_path)
    assert r.returncode == 2 and "no .kata-ci.yaml" in r.stderr
    r = kata("-f", str(tmp_path / "none.yaml"), "validate", cwd=tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr
    (tmp_path / ".kata-ci.yaml").write_text("steps: [{name: build, image: x}]\n")
    assert kata("why", "//biuld", cwd=tmp_path).returncode == 2
    r = kata("why", "build", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_version(tmp_path) -> None:
    r = kata("version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("kata-ci v0.1.0 (python 3.") and "linux/" in r.stdout


def test_file_option_after_the_subcommand(repo) -> None:
    """`kata graph -f x.yaml` reads x.yaml as `kata -f x.yaml graph` does; the later wins."""
    service = str(FIXTURES / "service.yaml")
    want = "build -> unit-test, integration-test\nunit-test, integration-test -> deploy\n"
    assert kata("graph", "-f", service, cwd=repo).stdout == want
    assert kata("-f", "nowhere.yaml", "graph", "--file", service, cwd=repo).stdout == want
    r = kata("validate", "--offline", "-f", service, cwd=repo)
    assert (r.returncode, r.stdout) == (0, "Config valid. 4 steps, 0 cycles, 3 parallel groups\n")
    r = kata("run", "--dry-run", "-f", str(repo / "none.yaml"), cwd=repo)
    assert r.returncode == 2 and "none.yaml" in r.stderr
    for command in ("run", "build", "why", "logs", "validate", "graph", "export", "runs",
                    "hooks install"):
        assert "-f, --file" in kata(*command.split(), "--help", cwd=repo).stdout, command
    # runs: the config names the pipeline whose runs are listed
    r = kata("--store", str(repo / "store"), "runs", "-f", service, cwd=repo)
    assert (r.returncode, r.stdout) == (0, "No runs recorded for pipeline 'my-service'.\n")
