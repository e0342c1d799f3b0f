"""Which trigger fires and why a condition is false (kata.triggers: pure)."""

from __future__ import annotations

from kata.conditions import Context
from kata.loader import load_text
from kata.triggers import describe, explain, match

PIPELINE = """
pipeline: t
triggers:
  - event: push
    branches: [main, "release/*"]
  - event: pull_request
    actions: [opened]
    paths: ["src/**"]
  - event: tag
    pattern: "v*"
steps:
  - name: a
    image: x
    only: {branches: [main], paths: ["docs/**"]}
  - name: b
    image: x
    when: 'tag =~ "v*" and event == "tag"'
"""


def test_a_matching_trigger_runs() -> None:
    p = load_text(PIPELINE)
    found = match(p, Context(event="push", branch="release/1.2"))
    assert found.runs and found.index == 1
    assert match(p, Context(event="tag", tag="v1.0")).index == 3
    assert match(p, Context(event="pull_request", action="opened", changed=("src/a.py",))).index == 2


def test_no_match_names_the_closest_trigger_and_why() -> None:
    p = load_text(PIPELINE)
    found = match(p, Context(event="push", branch="feature/x"))
    assert not found.runs and found.index == 1
    assert found.why == "trigger 1 (push): branch 'feature/x' does not match main, release/*"
    pr = match(p, Context(event="pull_request", action="closed", changed=("docs/x.md",)))
    assert pr.index == 2 and not pr.runs
    assert "action 'closed' is not one of opened" in pr.why
    assert "no changed path matches src/**" in pr.why
    assert match(p, Context(event="schedule")).why.startswith("trigger 1 (push): event is 'schedule'")


def test_no_triggers_always_runs() -> None:
    p = load_text("steps: [{name: a, image: x}]")
    assert match(p, Context(event="schedule")).runs


def test_explain_step_conditions() -> None:
    p = load_text(PIPELINE)
    a, b = p.steps
    ctx = Context(event="push", branch="main", changed=("src/a.py",))
    assert a.only is not None and not a.only.evaluate(ctx)
    assert explain(a.only, ctx) == "no changed path matches docs/** (changed: src/a.py)"
    assert b.when is not None
    assert explain(b.when, ctx) == "tag (no tag) does not match v*; event is 'push', not 'tag'"
    assert describe(Context(event="tag", tag="v1")) == "event tag, tag 'v1'"
