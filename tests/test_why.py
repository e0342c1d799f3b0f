"""why(graph, label, previous): the diff against each selected step's last derivation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from kata.compile import compile_pipeline
from kata.loader import load_text
from kata.realise.plan import context_values
from kata.why import why

TEXT = """\
steps:
  - {name: build, image: alpine, commands: [make]}
  - {name: test-a, image: alpine, depends_on: [build], commands: [t a]}
  - {name: test-b, image: alpine, depends_on: [build], commands: [t b]}
"""


def resolver(ref) -> str:
    return "sha256:" + hashlib.sha256(str(ref).encode()).hexdigest()


def test_why_per_selected_step(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    old = compile_pipeline(load_text(TEXT), resolver=resolver, repo_root=tmp_path)
    new = compile_pipeline(load_text(TEXT.replace("[make]", "[make all]")), resolver=resolver,
                           repo_root=tmp_path)
    records = {n: old.nodes[n].record() for n in old.order}
    previous = {"build": records["build"].encode(), "test-a": records["test-a"]}
    results = why(new, "//...", previous.get)
    assert [(r.step, r.status) for r in results] == [
        ("build", "changed"), ("test-a", "changed"), ("test-b", "no_previous")]
    assert [(c.field, c.name) for c in results[0].changes] == [("command", "#1")]
    assert [(c.field, c.name) for c in results[1].changes] == [("dependency", "build")]
    same = why(old, "//test*", lambda step: records[step])
    assert [r.status for r in same] == ["unchanged", "unchanged"]
    assert all(line.startswith("//") for r in results for line in r.lines()[:1])


def test_why_prints_readable_values(tmp_path) -> None:
    """Octal modes, content digests, quoted text, service fields: no Python tuples or reprs."""
    text = ("steps:\n  - {name: s, image: alpine, commands: [make], env: {A: '1'},\n"
            "     services: [{name: db, image: alpine, env: {P: x}}]}\n")
    (tmp_path / "run.sh").write_text("echo 1\n")
    (tmp_path / "run.sh").chmod(0o644)
    (tmp_path / "gone.txt").write_text("x")
    old = compile_pipeline(load_text(text), resolver=resolver, repo_root=tmp_path)
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "gone.txt").unlink()
    new = compile_pipeline(load_text(text.replace("make]", "make all]").replace("P: x", "P: y")),
                           resolver=resolver, repo_root=tmp_path)
    (result,) = why(new, "//s", {"s": old.nodes["s"].record()}.get)
    lines = [str(c) for c in result.changes]
    assert lines == ['command #1: "make" -> "make all"', "service db: env changed",
                     "input file gone.txt: removed", "input file run.sh: mode 0644 -> 0755"]
    (tmp_path / "run.sh").write_text("echo 2\n")
    newer = compile_pipeline(load_text(text), resolver=resolver, repo_root=tmp_path)
    (result,) = why(newer, "//s", {"s": new.nodes["s"].record()}.get)
    change = [str(c) for c in result.changes if c.field == "input file"]
    assert len(change) == 1 and change[0].startswith("input file run.sh: content sha256:")
    assert "(" not in change[0] and "420" not in change[0]


def test_kata_why_uses_the_runs_context_values(tmp_path) -> None:
    """A step that asks for KATA_BRANCH/KATA_COMMIT_SHA is unchanged to `kata why` when a
    plain `kata run` here would hit (it showed `KATA_BRANCH: "main" -> ""`)."""
    from kata.conditions import Context

    pinned = "alpine@sha256:" + "a" * 64  # nothing to resolve: no containerd needed
    text = (f"steps:\n  - {{name: s, image: '{pinned}', commands: [make],\n"
            "     context: [KATA_BRANCH, KATA_COMMIT_SHA, CI]}\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    pipeline = load_text(text, file=str(repo / ".kata-ci.yaml"))
    g = compile_pipeline(pipeline, resolver=resolver, repo_root=repo, context=context_values(
        pipeline, Context(event="push", branch="main", tag="", action=""), commit))
    recorded = tmp_path / "s.drv"
    recorded.write_bytes(g.nodes["s"].record().encode())
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "kata", "--store", str(tmp_path / "store"), "why",
                        "//s", "--against", str(recorded)], cwd=repo, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert (r.returncode, r.stdout) == (0, "//s: unchanged since its last recorded derivation\n"), \
        r.stdout + r.stderr


def test_a_changed_dependency_says_early_cutoff_may_still_give_a_hit(tmp_path) -> None:
    """Found on redis-py: after a pyproject edit that left the wheel byte-identical, `kata why
    //test` said only `dependency wheel: <hash> -> <hash>`, read as "test runs again", while
    the run then hit test by early cutoff (and `--dry-run` said it may)."""
    old = compile_pipeline(load_text(TEXT), resolver=resolver, repo_root=tmp_path)
    new = compile_pipeline(load_text(TEXT.replace("[make]", "[make all]")), resolver=resolver,
                           repo_root=tmp_path)
    (result,) = why(new, "//test-a", {"test-a": old.nodes["test-a"].record()}.get)
    (line,) = [str(c) for c in result.changes]
    assert line.startswith("dependency build: its key changed (")
    assert "still hits if build's output comes out the same (early cutoff)" in line


CHAIN = """\
steps:
  - {name: build, image: alpine, commands: [make]}
  - {name: pack, image: alpine, depends_on: [build], commands: [pack]}
  - {name: test, image: alpine, depends_on: [pack], commands: [t]}
"""


def test_a_dependency_changed_only_through_its_own_dependencies_may_still_hit(tmp_path):
    """Last session's leftover: for build -> pack -> test with build edited, `kata why
    //test` said pack "runs again", where pack (unchanged itself) hits by early cutoff when
    build's output comes out the same. Each dependency is explained from its own diff."""
    old = compile_pipeline(load_text(CHAIN), resolver=resolver, repo_root=tmp_path)
    new = compile_pipeline(load_text(CHAIN.replace("[make]", "[make all]")),
                           resolver=resolver, repo_root=tmp_path)
    records = {n: old.nodes[n].record() for n in old.order}
    by_step = {r.step: [str(c) for c in r.changes] for r in why(new, "//...", records.get)}
    (pack,) = by_step["pack"]
    assert pack.endswith("build itself changed (command #1), so it runs unless a result for "
                         "its new key is stored; this step still hits if build's output comes "
                         "out the same (early cutoff)"), pack
    (test,) = by_step["test"]
    assert "runs again" not in test and test.endswith(
        "pack itself is unchanged, its key changed only through build: it may hit by early "
        "cutoff if build's output comes out the same; this step still hits if pack's output "
        "comes out the same (early cutoff)"), test  # "its output" read as pack's
    # test edited too: it runs whatever pack gives
    newer = compile_pipeline(load_text(CHAIN.replace("[make]", "[make all]")
                                       .replace("[t]", "[t -v]")),
                             resolver=resolver, repo_root=tmp_path)
    (result,) = why(newer, "//test", records.get)
    assert [str(c).rsplit("; ", 1)[-1] for c in result.changes] == [
        'command #1: "t" -> "t -v"', "this step runs for its own changes"]


def test_a_changed_dependency_that_hands_on_its_own_dependencys_files_says_so(tmp_path) -> None:
    """Found on psycopg2 (sdist -> wheel -> test): after a NEWS edit the wheel came out
    byte-identical, yet test ran again, because it also sees the new sdist that wheel hands
    on; `kata why //test` had promised a hit "if wheel's output comes out the same"."""
    text = """\
steps:
  - {name: sdist, image: alpine, commands: [make sdist], artifacts: [dist/]}
  - {name: wheel, image: alpine, depends_on: [sdist], commands: [make wheel]}
  - {name: test, image: alpine, depends_on: [wheel], commands: [t]}
"""
    old = compile_pipeline(load_text(text), resolver=resolver, repo_root=tmp_path)
    new = compile_pipeline(load_text(text.replace("[make sdist]", "[make dist]")),
                           resolver=resolver, repo_root=tmp_path)
    (result,) = why(new, "//test", {"test": old.nodes["test"].record()}.get)
    (line,) = [str(c) for c in result.changes]
    assert "if wheel's output comes out the same" not in line, line
    assert ("still hits if what wheel passes on comes out the same: its artifacts and "
            "those it hands on from sdist (early cutoff)") in line, line


def test_no_previous_says_only_a_passed_run_counts(tmp_path) -> None:
    """Found on click: a step with `allow_failure: true` that had run five times was
    'no previous derivation recorded' to `kata why` and the dashboard: what it compares
    against is the last run in which the step passed, which an allowed failure never does."""
    graph = compile_pipeline(load_text(TEXT), resolver=resolver, repo_root=tmp_path)
    (result,) = why(graph, "//build", lambda step: None)
    (line,) = result.lines()
    assert line.startswith("//build: no previous derivation recorded; nothing to compare")
    assert "never passed in an earlier run" in line and "allowed to fail" in line
