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
