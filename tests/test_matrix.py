"""Matrix expansion (issue 14) as pure values: the loader's instances, their names, env and
images, the errors a user can type, labels and `--step` addressing instances."""

from __future__ import annotations

import pytest

from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.labels import parse_label, select
from kata.loader import load_text
from kata.matrix import Matrix, instance_name, split_name
from kata.realise.plan import select_targets

DIGEST = "sha256:" + "a" * 64

BASE = """\
steps:
  - name: test
    image: "python:${PYTHON}-slim"
    commands: ["echo $PYTHON $DB"]
    matrix:
      PYTHON: ["3.11", "3.12"]
      DB: [postgres, sqlite]
      exclude: [{PYTHON: "3.11", DB: sqlite}]
      include: [{PYTHON: "3.13", DB: postgres}]
  - name: report
    image: alpine
    depends_on: [test]
"""
NAMES = ["test (PYTHON=3.11, DB=postgres)", "test (PYTHON=3.12, DB=postgres)",
         "test (PYTHON=3.12, DB=sqlite)", "test (PYTHON=3.13, DB=postgres)"]


def test_product_minus_exclude_plus_include():
    p = load_text(BASE)
    assert [s.name for s in p.steps] == [*NAMES, "report"]
    s = p.steps[3]
    assert s.matrix_of == "test" and s.matrix == (("PYTHON", "3.13"), ("DB", "postgres"))
    assert s.env == (("PYTHON", "3.13"), ("DB", "postgres"))
    assert str(s.image) == "docker.io/library/python:3.13-slim"
    assert p.steps[-1].depends_on == tuple(NAMES)


def test_each_instance_has_its_own_derivation(tmp_path):
    g = compile_pipeline(load_text(BASE), resolver=lambda ref: DIGEST, repo_root=tmp_path)
    assert g.order == (*NAMES, "report")
    hashes = [g.nodes[n].drv_hash for n in NAMES]
    assert None not in hashes and len(set(hashes)) == 4
    assert g.nodes["report"].deps == tuple(NAMES)


def test_values_keep_their_yaml_text_and_an_own_env_wins_nothing():
    p = load_text("steps:\n  - name: t\n    image: alpine\n    env: {A: '1'}\n"
                  "    matrix: {V: [3.10, 1e3, true]}\n")
    assert [s.name for s in p.steps] == ["t (V=3.10)", "t (V=1e3)", "t (V=true)"]
    assert p.steps[0].env == (("A", "1"), ("V", "3.10"))


@pytest.mark.parametrize("matrix, reason, where", [
    ("{V: []}", "config.value", (5, 17)),
    ("{V: [a, a]}", "config.value", (5, 17)),
    ("{V: [a b]}", "config.value", (5, 18)),
    ("{V: [{x: 1}]}", "config.type", (5, 18)),
    ("{V: a}", "config.type", (5, 17)),
    ("{1V: [a]}", "config.value", (5, 14)),
    ("{V: [a], exclude: [{W: a}]}", "config.value", (5, 13)),
    ("{V: [a], exclude: [{V: a}]}", "config.value", (5, 13)),
    ("{V: [a], include: [{}]}", "config.value", (5, 32)),
    ("{A: [a], exclude: a}", "config.type", (5, 31)),
    ("{}", "config.value", (5, 13)),
    ("[a]", "config.type", (5, 13)),
    ("{A: [a, b], B: [a, b, c, d, e, f, g, h, i, j, k], C: [a, b, c, d, e, f, g, h, i, j, k, l]}",
     "config.value", (5, 13)),
])
def test_bad_matrices_name_the_place(matrix, reason, where):
    text = f"steps:\n  - name: t\n    image: alpine\n    env: {{}}\n    matrix: {matrix}\n"
    with pytest.raises(KataError) as info:
        load_text(text, file="c.yaml")
    assert info.value.reason == reason, str(info.value)
    assert (info.value.position.line, info.value.position.column) == where, str(info.value)


def test_image_variables_must_be_matrix_variables():
    with pytest.raises(KataError) as info:
        load_text("steps:\n  - name: t\n    image: 'alpine:${HOME}'\n    matrix: {V: [a]}\n")
    assert info.value.reason == "config.image_ref"
    assert "${HOME} is no matrix variable" in str(info.value)
    assert info.value.position.line == 3
    with pytest.raises(KataError) as info:  # not a matrix step: no substitution at all
        load_text("steps:\n  - name: t\n    image: 'alpine:${V}'\n")
    assert info.value.reason == "config.image_ref"


def test_env_clash_and_name_clash():
    with pytest.raises(KataError) as info:
        load_text("steps:\n  - name: t\n    image: alpine\n    env: {V: x}\n    matrix: {V: [a]}\n")
    assert info.value.reason == "config.value" and "also in the step's env" in str(info.value)
    with pytest.raises(KataError) as info:
        load_text("steps:\n  - name: t\n    image: alpine\n    matrix: {V: [a]}\n"
                  "  - name: t\n    image: alpine\n")
    assert info.value.reason == "config.duplicate_step"


def test_matrix_combinations_and_names_round_trip():
    m = Matrix(axes=(("A", ("1", "2")), ("B", ("x",))), exclude=((("A", "2"),),),
               include=((("A", "1"), ("B", "x")), (("C", "z"),)))
    assert m.combinations() == ((("A", "1"), ("B", "x")), (("C", "z"),))
    name = instance_name("t", (("A", "1"), ("B", "x:y/z")))
    assert name == "t (A=1, B=x:y/z)"
    assert split_name(name) == ("t", (("A", "1"), ("B", "x:y/z")))
    assert split_name("t") is None


def test_labels_address_all_some_or_one_instance():
    names = ("build", *NAMES, "tests")
    assert select(["//test"], names) == tuple(NAMES)
    assert select(["//test(DB=postgres)"], names) == (NAMES[0], NAMES[1], NAMES[3])
    assert select(["//test (PYTHON=3.12, DB=sqlite)"], names) == (NAMES[2],)
    assert select(["//test(DB=sqlite, PYTHON=3.12)"], names) == (NAMES[2],)
    assert select(["//test*"], names) == (*NAMES, "tests")
    assert str(parse_label("//test( DB=sqlite ,PYTHON=3.12 )")) == "//test(DB=sqlite, PYTHON=3.12)"
    with pytest.raises(KataError) as info:
        select(["//test(DB=mysql)"], names)
    assert info.value.reason == "label.no_match"
    with pytest.raises(KataError) as info:
        parse_label("//test(DB)")
    assert info.value.reason == "label.syntax"


def test_step_by_config_name_selects_every_instance():
    g = compile_pipeline(load_text(BASE), resolver=lambda ref: DIGEST)
    assert select_targets(g, steps=("test",)) == tuple(NAMES)
    assert select_targets(g, steps=(NAMES[1],)) == (NAMES[1],)
    with pytest.raises(KataError) as info:
        select_targets(g, steps=("tset",))
    assert info.value.reason == "cli.unknown_step"


def test_validate_json_counts_matrix_instances(tmp_path):
    import json
    import subprocess
    import sys

    (tmp_path / ".kata-ci.yaml").write_text(
        "steps:\n"
        "  - name: test\n    image: busybox\n    commands: ['true']\n"
        "    matrix: {PY: ['3.11', '3.12'], DB: [pg, lite], exclude: [{PY: '3.11', DB: lite}]}\n"
        "  - {name: report, image: busybox, depends_on: [test]}\n")
    proc = subprocess.run([sys.executable, "-m", "kata", "validate", "--json", "--offline"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert (doc["steps"], doc["matrix_steps"], doc["matrix_instances"]) == (4, 1, 3)


SERVER_MATRIX = """\
steps:
  - name: test
    image: "python:3.12-slim"
    commands: ["pytest --db-url redis://db:6379"]
    matrix:
      REDIS: ["7.0", "7.2"]
      POLICY: [noeviction, allkeys-lru]
    services:
      - name: db
        image: "redis:${REDIS}"
        env: {REDIS: "own"}
        commands: ["exec redis-server --maxmemory-policy $POLICY"]
"""


def test_a_service_of_a_matrix_step_takes_its_image_and_env_from_the_instance():
    """A matrix over server versions or configurations is the usual reason for a matrix
    (found on redis-py: `image: "redis:${REDIS}"` on the service was refused as a bad
    reference, and its `$POLICY` was empty, since only the step's own image and env got the
    values)."""
    p = load_text(SERVER_MATRIX)
    by_name = {s.name: s.services[0] for s in p.steps}
    db = by_name["test (REDIS=7.2, POLICY=allkeys-lru)"]
    assert str(db.image) == "docker.io/library/redis:7.2"
    # the instance's values are in the service's env too; one it sets itself wins
    assert dict(db.env) == {"POLICY": "allkeys-lru", "REDIS": "own"}
    assert {str(s.image).rsplit(":", 1)[1] for s in by_name.values()} == {"7.0", "7.2"}


def test_a_service_image_variable_must_be_a_matrix_variable():
    with pytest.raises(KataError) as info:
        load_text(SERVER_MATRIX.replace("redis:${REDIS}", "redis:${TAG}"))
    assert info.value.reason == "config.image_ref"
    assert "${TAG} is no matrix variable" in str(info.value)
    assert info.value.position.line == 10
    with pytest.raises(KataError) as info:  # not a matrix step: no substitution at all
        load_text("steps:\n  - name: t\n    image: alpine\n    services:\n"
                  "      - {name: db, image: 'redis:${V}'}\n")
    assert info.value.reason == "config.image_ref"


def test_a_matrix_without_variables_says_so():
    """Found by a review: `matrix: {}` (or only `include: []`) said "every one is
    excluded" where nothing was excluded: the matrix names no variable."""
    for matrix in ("{}", "{exclude: []}"):
        text = f"steps:\n  - name: t\n    image: alpine\n    matrix: {matrix}\n"
        with pytest.raises(KataError) as info:
            load_text(text, file="c.yaml")
        assert "excluded" not in info.value.message
        assert "the matrix names no variable: give one, e.g. matrix: {PYTHON: [\"3.11\", \"3.12\"]}" \
            in info.value.message
