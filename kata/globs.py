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


def check_path_globs(patterns: Sequence[str]) -> None:
    """Raise ValueError for a pattern that is not a usable gitignore pattern: one pathspec
    cannot compile (``[z-a]``, a trailing ``\\``), and one gitignore would silently read
    as matching nothing: a ``[`` that opens a character class never closed (``req/[.txt``;
    git's wildmatch matches nothing there) or a leading ``#`` (a comment). Each names
    the fix (``\\[``, ``\\#`` for the literal character)."""
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


def ref_match(pattern: str, text: str) -> bool:
    """Whether the whole ``text`` (a branch or tag name) matches the ref glob ``pattern``."""
    return ref_regex(pattern).fullmatch(text) is not None
