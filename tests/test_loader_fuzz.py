"""No input a user can type produces anything but a model or a positioned KataError."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.compile import compile_pipeline
from kata.errors import KataError
from kata.loader import STEP_KEYS, TOP_KEYS, load_text
from kata.model import Pipeline

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.yaml"))
TEXTS = [p.read_text() for p in FIXTURES]
KEYS = (*TOP_KEYS, *STEP_KEYS, "paths", "key_files", "branches", "event", "pattern",
        "max_parallel", "fail_fast", "timeout", "<<")


def check(text: str) -> None:
    try:
        p = load_text(text, file="fuzz.yaml")
    except KataError as err:
        assert err.reason.startswith("config."), err.reason
        assert err.position is not None and err.position.file == "fuzz.yaml"
        assert err.position.line >= 1 and err.position.column >= 1
        str(err)
        return
    assert isinstance(p, Pipeline) and p.steps
    g = compile_pipeline(p)  # the shape always compiles once loaded
    assert set(g.order) == {s.name for s in p.steps}


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=15), st.sampled_from(["node:20", "15m", "x", "sha256:ab",
                                                           "branch == \"main\"", "//a", "build"]))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(keys, documents, max_size=6))
def test_random_documents(doc) -> None:
    check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text(text) -> None:
    check(text)


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "dup_line", "swap_lines", "replace_word"]))
        lines = text.splitlines(keepends=True)
        if kind == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(alphabet=" \t\n:-[]{},#&*!|>'\"%@`abc123", max_size=4)) + text[i:]
        elif kind == "dup_line" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif kind == "swap_lines" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif kind == "replace_word":
            word = draw(st.sampled_from(["build", "image", "depends_on", "true", "15m", "node:20-alpine",
                                         "commands", "steps", "name", "main"]))
            text = text.replace(word, draw(st.sampled_from(["", "x", "[]", "{}", "null", "1", "-", "*a",
                                                             "&a", "build", "b uild", "!!int"])), 1)
    return text


@settings(max_examples=400, deadline=None)
@given(text=mutated())
def test_mutated_valid_configs(text) -> None:
    check(text)
