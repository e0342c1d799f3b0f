"""Condition expressions: parsing, evaluation, and only:/triggers: compiling to the same tree."""

from __future__ import annotations

import pytest

from kata.conditions import (And, Changed, Compare, Const, Context, Not, Or, glob_match, only_expr,
                             parse, triggers_expr)
from kata.errors import KataError, Position
from kata.loader import load_text

PUSH_MAIN = Context(event="push", branch="main", changed=("src/app/main.go", "README.md"))
PR = Context(event="pull_request", branch="feature", action="opened", changed=("docs/a.md",))
TAG = Context(event="tag", tag="v1.2.3")


@pytest.mark.parametrize("text,expected", [
    ('branch == "main"', Compare(field="branch", op="==", value="main")),
    ('tag =~ "v*"', Compare(field="tag", op="=~", value="v*")),
    ('changed("src/**")', Changed(patterns=("src/**",))),
    ('event == "pull_request" and action in ["opened"]',
     And(items=(Compare(field="event", op="==", value="pull_request"),
                Compare(field="action", op="in", value=("opened",))))),
    ('not (branch == "a" or branch != "b")',
     Not(item=Or(items=(Compare(field="branch", op="==", value="a"),
                        Compare(field="branch", op="!=", value="b"))))),
    ('action not in ["closed", "x"]', Compare(field="action", op="not in", value=("closed", "x"))),
    ("true", Const(value=True)),
    ('branch !~ "wip/*"', Compare(field="branch", op="!~", value="wip/*")),
])
def test_parse(text, expected) -> None:
    assert parse(text) == expected
    assert parse(str(expected)) == expected  # printing round-trips


def test_precedence_and_binds_tighter_than_or() -> None:
    e = parse('branch == "a" or branch == "b" and tag == "c"')
    assert isinstance(e, Or) and isinstance(e.items[1], And)


@pytest.mark.parametrize("text,ctx,result", [
    ('branch == "main"', PUSH_MAIN, True),
    ('branch == "main"', PR, False),
    ('tag =~ "v*"', TAG, True),
    ('tag =~ "v*"', PUSH_MAIN, False),
    ('changed("src/**")', PUSH_MAIN, True),
    ('changed("src/**")', PR, False),
    ('changed("*.md")', PUSH_MAIN, True),
    ('changed("src/*.go")', PUSH_MAIN, False),  # * does not cross /
    ('changed("x")', TAG, True),                # changes unknown: assume changed
    ('event == "pull_request" and action in ["opened", "synchronize"]', PR, True),
    ('event == "pull_request" and action in ["closed"]', PR, False),
    ('not changed("docs/**") or branch == "main"', PR, False),
    ('(event == "tag" or event == "push") and not tag == "v0"', TAG, True),
])
def test_evaluate(text, ctx, result) -> None:
    assert parse(text).evaluate(ctx) is result


@pytest.mark.parametrize("bad", ["", "branch", 'branch = "x"', 'branc == "x"', 'changed()',
                                 'branch == main', '(branch == "x"', 'tag in "x"', '"\\q" == tag',
                                 'branch == "a" and'])
def test_syntax_errors(bad) -> None:
    with pytest.raises(KataError) as info:
        parse(bad, Position(file="f", line=3, column=11))
    assert info.value.reason == "config.condition"
    assert info.value.position.file == "f" and info.value.position.line == 3
    assert info.value.position.column >= 11


def test_glob() -> None:
    assert glob_match("release/*", "release/1.0")
    assert not glob_match("release/*", "release/1/2")
    assert glob_match("src/**", "src/a/b/c")
    assert glob_match("**/*.md", "README.md") and glob_match("**/*.md", "a/b/c.md")
    assert glob_match("v?.*", "v1.2") and not glob_match("v?", "v10")


def test_trigger_entries_or_fields_and() -> None:
    p = load_text("""\
triggers:
  - event: push
    branches: [main, "release/*"]
    paths: ["src/**"]
  - event: pull_request
    actions: [opened]
  - event: tag
    pattern: "v*"
steps: [{name: a, image: x}]
""")
    e = p.trigger_condition
    assert e.evaluate(PUSH_MAIN)
    assert not e.evaluate(Context(event="push", branch="main", changed=("docs/x",)))
    assert not e.evaluate(Context(event="push", branch="dev", changed=("src/x",)))
    assert e.evaluate(Context(event="push", branch="release/2", changed=("src/x",)))
    assert e.evaluate(PR) and not e.evaluate(Context(event="pull_request", action="closed"))
    assert e.evaluate(TAG) and not e.evaluate(Context(event="tag", tag="x1"))
    # the same tree a hand-written expression gives
    assert e == parse('(event == "push" and (branch =~ "main" or branch =~ "release/*") '
                      'and changed("src/**")) or (event == "pull_request" and action in '
                      '["opened"]) or (event == "tag" and tag =~ "v*")')


def test_no_triggers_means_always() -> None:
    assert triggers_expr(()) == Const(value=True)


def test_only_object_is_the_same_tree() -> None:
    p = load_text("steps: [{name: a, image: x, only: {branches: [main], tags: ['v*'], paths: ['src/**']}}]")
    expected = only_expr(branches=("main",), tags=("v*",), paths=("src/**",))
    assert p.steps[0].only == expected
    assert expected == parse('(branch =~ "main" or tag =~ "v*") and changed("src/**")')
    assert expected.evaluate(PUSH_MAIN) and not expected.evaluate(PR)


def test_only_and_when_are_anded() -> None:
    p = load_text("steps: [{name: a, image: x, only: {branches: [main]}, when: 'event == \"push\"'}]")
    c = p.steps[0].condition
    assert c.evaluate(PUSH_MAIN)
    assert not c.evaluate(Context(event="tag", branch="main"))


def test_tags_are_not_branches():
    """A push has no tag and a tag event no branch, whatever the caller passes."""
    tags = only_expr(tags=("v*",))
    branches = only_expr(branches=("main",))
    assert not tags.evaluate(Context(event="push", branch="main", tag="v9.9.9"))
    assert not tags.evaluate(Context(event="schedule", branch="main", tag="v9.9.9"))
    assert tags.evaluate(Context(event="tag", branch="main", tag="v9.9.9"))
    assert not branches.evaluate(Context(event="tag", branch="main", tag="v9.9.9"))
    assert branches.evaluate(Context(event="push", branch="main", tag="v9.9.9"))
    assert Context(event="tag", branch="main", tag="v1").branch == ""
    assert Context(event="pull_request", branch="f", tag="v1").tag == ""


def test_one_path_glob_dialect():
    """only.paths, triggers' paths and changed() match as inputs: do (gitignore)."""
    from kata.inputs import match

    docs = Context(event="push", branch="main", changed=("docs/guide.md",))
    assert match(["*.md"], ["docs/guide.md"]) == ["docs/guide.md"]
    assert only_expr(paths=("*.md",)).evaluate(docs)
    assert not only_expr(paths=("/*.md",)).evaluate(docs)  # anchored at the root
    assert not only_expr(paths=("src/*.md",)).evaluate(docs)
    assert only_expr(paths=("docs/",)).evaluate(docs)
    assert not only_expr(paths=("*.md", "!docs/**")).evaluate(docs)
    p = load_text(
        "triggers: [{event: push, paths: ['*.md']}]\n"
        "steps:\n"
        "  - {name: a, image: alpine, commands: [x], when: 'changed(\"*.md\")'}\n")
    from kata.triggers import match as trigger_match

    assert trigger_match(p, docs).runs
    assert not trigger_match(p, Context(event="push", changed=("src/a.py",))).runs
    assert p.steps[0].when.evaluate(docs)
    # ref globs keep their rule: * stays within one path segment
    assert only_expr(branches=("release/*",)).evaluate(Context(event="push", branch="release/1.2"))
    assert not only_expr(branches=("release/*",)).evaluate(Context(event="push", branch="release/1/2"))
    assert only_expr(branches=("release/**",)).evaluate(Context(event="push", branch="release/1/2"))


@pytest.mark.parametrize("bad, says", [
    ('brnch == "main"', "unknown name 'brnch': the names are branch, tag, event, action"),
    ('branch == "x" and Tag == "v1"', "unknown name 'Tag'"),
    ('failed()', "unknown function 'failed()': the functions are changed(...), success(), "
                 "failure(), always()"),
    ('changes("src/**")', "unknown function 'changes()'"),
    ('branch == main', 'a value is a quoted string: write "main"'),
    ('event in ["push", tag]', 'a value is a quoted string: write "tag"'),
    # found by a review: a shell's or GitHub Actions' operators got only "expected e.g."
    ('branch == "main" && event == "push"', "'&&' is no operator here: write and"),
    ('branch == "main" || failure()', "'||' is no operator here: write or"),
    ('!failure()', "'!' is no operator here: write not"),
])
def test_unknown_words_are_named(bad, says) -> None:
    """Found by a review: a misspelt name or function got only "bad condition ... at
    column 1: expected e.g. ...", leaving the user to spot the typo. The word is named,
    with the names or functions there are."""
    with pytest.raises(KataError) as info:
        parse(bad, Position(file="f", line=3, column=11))
    assert info.value.reason == "config.condition"
    assert says in info.value.message


def test_a_multi_line_condition_names_the_line_inside_it() -> None:
    with pytest.raises(KataError) as info:
        parse('branch == "main" and\nfoo == "x"\n', Position(file="f", line=3, column=11))
    assert "at line 2, column 1" in info.value.message and "unknown name 'foo'" in info.value.message


def test_ref_globs_match_as_their_regex_does_without_backtracking() -> None:
    """Pattern and name both come from a push (`only: branches` and the branch's name):
    `*a` twelve times against `a`s backtracked for 3.5 s at 30 characters, each further
    one more (a 250-character name: the server's CPU for good). ref_match runs the pattern
    as an NFA, and agrees with ref_regex on every small case."""
    import itertools

    from kata.globs import ref_match, ref_regex

    assert ref_match("*a" * 12 + "*b", "a" * 250) is False
    assert ref_match("*a" * 12 + "*b", "a" * 249 + "b") is True
    alphabet = "ab/*?"
    for n in range(5):
        for pattern in map("".join, itertools.product(alphabet, repeat=n)):
            for m in range(5):
                for text in map("".join, itertools.product("ab/", repeat=m)):
                    assert ref_match(pattern, text) == (
                        ref_regex(pattern).fullmatch(text) is not None), (pattern, text)
