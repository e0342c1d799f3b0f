"""Path globs (``kata.globs.PathGlobs``): pathspec's gitignore semantics, without backtracking."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pathspec
from hypothesis import given, settings
from hypothesis import strategies as st

from kata.globs import PathGlobError, PathGlobs, path_match, ref_match

ROOT = Path(__file__).resolve().parent.parent
PIECES = ["a", "b", "/", "*", "**", "?", "[ab]", "[!a]", "[^/]", "\\", "!", " ", "\n", "#", "[", "]"]
PATTERN = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
PATH = st.lists(st.sampled_from(["a", "b", "/", "\n", "!", "[", "*", " "]),
                min_size=1, max_size=8).map("".join)


@settings(max_examples=3000, deadline=None)
@given(patterns=st.lists(PATTERN, min_size=1, max_size=3), paths=st.lists(PATH, max_size=8))
def test_path_globs_select_what_pathspec_selects(patterns, paths) -> None:
    """The same paths as pathspec's GitIgnoreSpec (what kata matched with before), the
    same patterns refused, the same read as matching nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re's FutureWarning for '[[' in a class
        try:
            spec = pathspec.GitIgnoreSpec.from_lines(patterns)
        except Exception:
            spec = None
        try:
            ours = PathGlobs(patterns)
        except PathGlobError:
            ours = None
    assert (spec is None) == (ours is None), patterns
    if spec is None:
        return
    nulls = [p.null for p in ours.patterns if p.text]  # pathspec drops blank lines
    assert nulls == [p.include is None for p in spec.patterns], patterns
    assert ours.select(paths) == [p for p in paths if spec.match_file(p)], patterns
    assert [ours.match_file(p) for p in paths] == [spec.match_file(p) for p in paths]


def test_priority_rules_of_gitignore_spec() -> None:
    """A later file match outranks a directory match; a negated directory re-includes."""
    assert path_match(["d/", "!*.txt"], ["d/a.txt", "d/b.py"]) == ["d/b.py"]
    assert path_match(["*.txt", "!d/"], ["d/a.txt", "e/a.txt"]) == ["d/a.txt", "e/a.txt"]
    assert path_match(["src/**", "!**/test_*.py"], ["src/a.py", "src/t/test_a.py", "x.py"]) == [
        "src/a.py"]


def test_a_pushed_pattern_that_backtracked_is_matched_at_once() -> None:
    """`*a` twelve times then `*b` against a name of `a`s: pathspec's regex took ~7 s at
    30 characters and grew ~n^12 (the hook server's CPU for good). Run in a child with a
    generous timeout: before, it never finished; now it must."""
    code = ("from kata.globs import path_match, ref_match\n"
            "import fnmatch\n"
            "p = '*a' * 12 + '*b'\n"
            "assert path_match([p], ['a' * 200, 'd/' + 'a' * 4000]) == []\n"
            "assert path_match(['**/' + p + '/**'], ['/'.join(['a' * 60] * 40) + '/x']) == []\n"
            "assert path_match([p], ['a' * 199 + 'b']) == ['a' * 199 + 'b']\n"
            "assert not ref_match(p, 'a' * 4000)\n"
            "assert not fnmatch.fnmatchcase('a' * 4000, p)\n"  # artifacts' hint: atomic groups
            "print('done')\n")
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 0 and got.stdout == "done\n", got.stderr


def test_a_bad_pattern_names_its_place() -> None:
    try:
        PathGlobs(["ok", "[z-a]"])
    except PathGlobError as err:
        assert (err.index, err.text) == (1, "[z-a]")
    else:
        raise AssertionError("[z-a] compiled")
    assert ref_match("release/*", "release/1.2") and not ref_match("release/*", "release/1/2")
