"""A step named the wrong way (a label without `//`, a label where a name goes, a typo)
gets the fix in its error, exit 2, for every command taking a label or a step name."""

from __future__ import annotations

import time

import pytest

from kata.errors import KataError
from kata.labels import parse_label
from store import Store
from store.runs import Run, StepRecord
from support.cli import KataProcess

CONFIG = """pipeline: p
steps:
  - {name: build, image: alpine, commands: ["true"]}
  - {name: test, image: alpine, commands: ["true"], depends_on: [build]}
"""


@pytest.mark.parametrize("text,fix", [("build", "//build"), ("/build", "//build"),
                                      ("test*", "//test*"), ("...", "//...")])
def test_a_label_without_its_slashes_says_the_label_meant(text, fix) -> None:
    with pytest.raises(KataError) as info:
        parse_label(text)
    assert info.value.reason == "label.syntax"
    assert f"did you mean {fix}?" in str(info.value)


def test_a_label_that_cannot_be_fixed_gets_no_guess() -> None:
    with pytest.raises(KataError) as info:
        parse_label("a b")
    assert "did you mean" not in str(info.value)


@pytest.fixture
def kata(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(CONFIG)
    store = tmp_path / "store"
    with Store.open(store) as s:
        log = s.put_blob(b"built\n")
        svc = s.put_blob(b"db up\n")
        s.put_run(Run(id="20261201-000001-aaaaaa", pipeline="p", scope="ref:refs/heads/main",
                      started=time.time(), wall=1.0, status="passed", steps=(
                          StepRecord(name="build", status="passed", cache="MISS", log=log,
                                     service_logs=(("db", svc),)),
                          StepRecord(name="test", status="passed", cache="MISS", log=log))))
    return KataProcess(repo, store=store)


@pytest.mark.parametrize("args,fix", [
    (("why", "build"), "did you mean //build?"),
    (("build", "build"), "did you mean //build?"),
    (("run", "--step", "//build"), "did you mean build?"),
    (("logs", "--step", "//build"), "did you mean build?"),
    (("logs", "--step", "bild"), "did you mean build?"),
    (("export", "--step", "//test", "--out", "out"), "did you mean test?"),
    (("logs", "--step", "build", "--service", "pg"), "it has: db"),
])
def test_each_command_names_the_fix(kata, args, fix) -> None:
    proc = kata(*args)
    assert proc.returncode in (1, 2), proc.stdout
    assert fix in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,fix", [
    (("gc",), "did you mean `kata store gc`?"),
    (("gc", "--older-than", "30d"), "did you mean `kata store gc`?"),
    (("pull", "debian:12"), "did you mean `kata image pull`?"),
    (("stats",), "did you mean `kata cache stats` or `kata store stats`?"),
])
def test_a_subcommand_typed_at_the_top_names_its_group(kata, args, fix) -> None:
    """A newcomer's `kata gc` (as `git gc`, `docker system prune`) said only "No such
    command 'gc'", and the README names no gc at all."""
    proc = kata(*args)
    assert proc.returncode == 2, proc.stdout
    assert fix in proc.stderr, proc.stderr
