"""The two glob dialects: one for paths, one for refs (compiler layer: pure).

**Path globs** — ``inputs:``, ``cache.key_files``, ``only.paths``, ``triggers[].paths``,
``changed(...)`` in ``when:`` and ``artifacts:`` — are gitignore patterns (git's
``gitignore(5)``, through pathspec's ``GitIgnoreSpec``): a pattern without a ``/`` (other
than a trailing one) matches at any depth (``*.md`` matches ``docs/guide.md``), one with
a ``/`` is anchored at the repository root (``docs/*.md``), ``**`` spans directories,
``dir/`` matches everything below ``dir``, and a later ``!pattern`` re-excludes.

**Ref globs** — ``only.branches``, ``only.tags``, ``triggers[].branches``,
``triggers[].pattern`` and ``=~`` in ``when:`` — match the whole short ref name:
``*`` and ``?`` do not cross ``/``, ``**`` does (``release/*`` matches ``release/1.2``,
not ``release/1/2``; ``feature/**`` matches both), as GitHub Actions' branch filters.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence


@functools.lru_cache(maxsize=256)
def path_spec(patterns: tuple[str, ...]):  # noqa: ANN201 - pathspec.GitIgnoreSpec (lazy import)
    """The compiled gitignore spec of ``patterns``; ValueError for one pathspec cannot compile."""
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(patterns)
    except Exception as err:  # pathspec raises a few different types
        raise ValueError(str(err)) from None


# A pattern of these characters only (so no ``!``, ``#``, ``[`` or ``\``), not ending in a
# space and not "/" alone, names a path as written: no wildcard, class, escape, negation
# or comment for pathspec to refuse or to read as matching nothing. Checking such a
# pattern compiles nothing (a config of 1,000 steps, each with its own artifact path,
# compiled 1,000 regexes: most of its loading time).
_PLAIN = re.compile(r"[A-Za-z0-9_.,+=@%:/-][A-Za-z0-9_.,+=@%:/ -]*", re.ASCII)


def check_path_globs(patterns: Sequence[str]) -> None:
    """Raise ValueError for a pattern that is not a usable gitignore pattern: one pathspec
    cannot compile (``[z-a]``, a trailing ``\\``), and one gitignore would silently read
    as matching nothing: a ``[`` that opens a character class never closed (``req/[.txt``;
    git's wildmatch matches nothing there) or a leading ``#`` (a comment). Each names
    the fix (``\\[``, ``\\#`` for the literal character)."""
    if all(_PLAIN.fullmatch(p) and not p.endswith(" ") and p != "/" for p in patterns):
        return  # ("/" alone reads as matching nothing)
    spec = path_spec(tuple(patterns))
    for text, compiled in zip(patterns, spec.patterns):
        if getattr(compiled, "include", True) is None:
            raise ValueError(_null_reason(text))


def _null_reason(text: str) -> str:
    body = text[1:] if text.startswith("!") else text
    if body.lstrip().startswith("#"):
        return ("gitignore reads a pattern starting with '#' as a comment, so it matches "
                "nothing: write '\\#' for a literal '#'")
    if "[" in body:
        return ("'[' opens a character class that is never closed, so the pattern matches "
                "nothing: close it with ']', or write '\\[' for a literal '['")
    return "gitignore reads it as matching nothing"


def path_match(patterns: Sequence[str], paths: Iterable[str]) -> list[str]:
    """The ``/``-separated repository-relative ``paths`` the gitignore ``patterns`` select."""
    spec = path_spec(tuple(patterns))
    return [p for p in paths if spec.match_file(p)]


@functools.lru_cache(maxsize=1024)
def ref_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a ref glob (see the module doc), for ``fullmatch``."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(c) or re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


_STAR, _DSTAR, _DSTAR_SLASH, _ONE = "*", "**", "**/", "?"


@functools.lru_cache(maxsize=1024)
def _ref_tokens(pattern: str) -> tuple[str, ...]:
    """``pattern`` as tokens: ``**/``, ``**``, ``*``, ``?`` or one literal character."""
    out, i = [], 0
    while i < len(pattern):
        for token in (_DSTAR_SLASH, _DSTAR, _STAR, _ONE):
            if pattern.startswith(token, i):
                out.append(token)
                i += len(token)
                break
        else:
            out.append(pattern[i])
            i += 1
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _ref_simple(pattern: str) -> re.Pattern[str] | None:
    """``ref_regex(pattern)`` when it has at most one variable-length wildcard (it then
    tries each split of the text once: no exponential backtracking), else None."""
    wild = sum(t in (_STAR, _DSTAR, _DSTAR_SLASH) for t in _ref_tokens(pattern))
    return ref_regex(pattern) if wild <= 1 else None


def ref_match(pattern: str, text: str) -> bool:
    """Whether the whole ``text`` (a branch or tag name) matches the ref glob ``pattern``
    (what ``ref_regex(pattern).fullmatch`` says), in O(len(pattern) * len(text)) steps.

    Both come from a pushed commit (its ``only: branches``, its branch name), and the
    regex backtracks: ``*a`` twelve times against a 30-character name of ``a``s took 3.5 s
    of the server's CPU, each further character more. This runs the pattern as an NFA
    over the token positions instead (state ``(i, True)``: inside a ``**/`` at token i,
    which ends only after a ``/``); a pattern with at most one of ``*``, ``**``, ``**/``
    cannot backtrack more than O(len(pattern) * len(text)), so it runs as its regex
    (``_ref_simple``), ten times faster than the NFA for ``main`` or ``release/*``."""
    simple = _ref_simple(pattern)
    if simple is not None:
        return simple.fullmatch(text) is not None
    tokens = _ref_tokens(pattern)
    end = len(tokens)

    def closure(states: set[tuple[int, bool]]) -> set[tuple[int, bool]]:
        todo = list(states)
        while todo:  # the wildcards that may match nothing: skip them
            i, inside = todo.pop()
            if not inside and i < end and tokens[i] in (_STAR, _DSTAR, _DSTAR_SLASH):
                if (i + 1, False) not in states:
                    states.add((i + 1, False))
                    todo.append((i + 1, False))
        return states

    states = closure({(0, False)})
    for c in text:
        step: set[tuple[int, bool]] = set()
        for i, inside in states:
            if inside:
                step.add((i, True))
                if c == "/":
                    step.add((i + 1, False))
                continue
            if i == end:
                continue
            t = tokens[i]
            if t == _STAR:
                if c != "/":
                    step.add((i, False))
            elif t == _DSTAR:
                step.add((i, False))
            elif t == _DSTAR_SLASH:
                step.add((i, True))
                if c == "/":
                    step.add((i + 1, False))
            elif t == _ONE:
                if c != "/":
                    step.add((i + 1, False))
            elif t == c:
                step.add((i + 1, False))
        if not step:
            return False
        states = closure(step)
    return (end, False) in states
