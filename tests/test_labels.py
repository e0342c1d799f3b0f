"""Target labels: //step, //..., //prefix*, selection from a graph."""

from __future__ import annotations

import pytest

from kata.errors import KataError
from kata.labels import Label, parse_label, select, with_dependencies

NAMES = ("build", "test-unit", "test-int", "lint", "deploy")


@pytest.mark.parametrize("text,label", [
    ("//build", Label(kind="exact", name="build")),
    ("//...", Label(kind="all")),
    ("//test*", Label(kind="prefix", name="test")),
    ("//*", Label(kind="all")),
    ("//a.b-c_d", Label(kind="exact", name="a.b-c_d")),
])
def test_parse(text, label) -> None:
    assert parse_label(text) == label


@pytest.mark.parametrize("bad", ["build", "//", "///a", "//a b", "//a*b", "//.x", "", "//...x"])
def test_bad_labels(bad) -> None:
    with pytest.raises(KataError) as info:
        parse_label(bad)
    assert info.value.reason == "label.syntax"


def test_select_in_graph_order() -> None:
    assert select(["//lint", "//test*"], NAMES) == ("test-unit", "test-int", "lint")
    assert select(["//..."], NAMES) == NAMES
    assert select(["//build", "//build"], NAMES) == ("build",)


def test_select_unknown_suggests() -> None:
    with pytest.raises(KataError) as info:
        select(["//biuld"], NAMES)
    assert info.value.reason == "label.no_match" and "//build" in info.value.message


def test_with_dependencies() -> None:
    deps = {"build": (), "test-unit": ("build",), "test-int": ("build",), "lint": (),
            "deploy": ("test-unit", "test-int")}
    assert with_dependencies(["deploy"], deps, NAMES) == ("build", "test-unit", "test-int", "deploy")
    assert with_dependencies(["lint"], deps, NAMES) == ("lint",)
