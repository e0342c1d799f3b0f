"""why(graph, label, previous): the diff against each selected step's last derivation."""

from __future__ import annotations

import hashlib

from kata.compile import compile_pipeline
from kata.loader import load_text
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
