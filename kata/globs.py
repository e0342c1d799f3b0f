"""The two glob dialects: one for paths, one for refs (compiler layer: pure).

**Path globs** — ``inputs:``, ``cache.key_files``, ``only.paths``, ``triggers[].paths``,
``changed(...)`` in ``when:`` and ``artifacts:`` — are gitignore patterns (git's
``gitignore(5)``, as pathspec's ``GitIgnoreSpec`` reads them, rule for rule; matched by
``PathGlobs``, an automaton, never by a backtracking regex): a pattern without a ``/`` (other
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
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence


_CHAR, _SPLIT, _JMP, _MATCH = range(4)


def _anything(c: str) -> bool:
    return True


def _not_newline(c: str) -> bool:  # a regex's '.' (no DOTALL): what pathspec's '**' spans
    return c != "\n"


def _not_slash(c: str) -> bool:  # '*' and '?'
    return c != "/"


class _Program:
    """An NFA as a list of instructions (Thompson's construction, as RE2's and Pike's VMs):
    ``(_CHAR, test)`` consumes one character ``test`` accepts, ``(_SPLIT, a, b)`` and
    ``(_JMP, a)`` move without consuming, ``(_MATCH, k)`` says glob ``k`` matched what was
    consumed so far. Running it keeps a *set* of positions, so a string of n characters
    costs O(n × instructions) however the glob is written: nothing backtracks."""

    __slots__ = ("code", "starts")

    def __init__(self) -> None:
        self.code: list[tuple] = []
        self.starts: list[int] = []

    def char(self, test: Callable[[str], object]) -> None:
        self.code.append((_CHAR, test))

    def star(self, test: Callable[[str], object]) -> None:
        at = len(self.code)
        self.code += [(_SPLIT, at + 1, at + 3), (_CHAR, test), (_JMP, at)]

    def plus(self, test: Callable[[str], object]) -> None:
        self.char(test)
        self.star(test)

    def optional(self) -> int:
        """Open an optional part (closed by ``end_optional`` with what it returned)."""
        self.code.append((_SPLIT, 0, 0))
        return len(self.code) - 1

    def end_optional(self, at: int) -> None:
        self.code[at] = (_SPLIT, at + 1, len(self.code))

    def match(self, k: int) -> None:
        self.code.append((_MATCH, k))

    def closure(self, pcs: Iterable[int]) -> frozenset[int]:
        """``pcs`` and every position reachable from them without consuming a character,
        keeping only those that consume one or match."""
        code, seen, out, todo = self.code, set(), set(), list(pcs)
        while todo:
            pc = todo.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = code[pc]
            if op[0] == _SPLIT:
                todo += (op[1], op[2])
            elif op[0] == _JMP:
                todo.append(op[1])
            else:
                out.add(pc)
        return frozenset(out)


class _State(dict):
    """One DFA state: a dict from each character read in it to the next state (missing
    characters are stepped once, then kept), with what the NFA positions say."""

    __slots__ = ("automaton", "pcs", "matched", "below", "before_nl", "dead", "verdict")

    def __missing__(self, c: str) -> _State:
        return self.automaton.step(self, c)


# ``_run(_step, text, state)``: the state after ``text``, the loop in C (a fifth faster)
_run, _step = functools.reduce, dict.__getitem__


class _Automaton:
    """A ``_Program`` run as a DFA built lazily (RE2's method): each set of NFA positions
    met becomes one ``_State``, each (state, character) step is computed once and then
    looked up. A string costs one dictionary look-up per character once warm, and never
    more than O(characters × instructions): a state is only made when a character is read.
    The states are dropped when they pass ``MAX_STATES`` (between two strings).

    A state also carries, as bit masks over the globs, those matching what was read
    (``matched``), those that matched just before a ``/`` was read (``below``: the string
    continues below a directory the glob names) and those that matched just before the
    last character when it is a newline (``before_nl``: a regex ``$``'s quirk pathspec's
    gitignore patterns had, kept so nothing changes). ``dead``: no NFA position is left,
    so every further character leads to the same state."""

    MAX_STATES = 10_000

    def __init__(self, program: _Program) -> None:
        self.program = program
        self.lock = threading.Lock()  # held by whoever runs it: running adds states
        self.reset()

    def reset(self) -> None:
        self.states: dict[tuple[frozenset[int], int, int], _State] = {}
        self.start = self._state(self.program.closure(self.program.starts), 0, 0)

    def _state(self, pcs: frozenset[int], below: int, before_nl: int) -> _State:
        key = (pcs, below, before_nl)
        got = self.states.get(key)
        if got is None:
            got = self.states[key] = _State()
            code = self.program.code
            got.automaton, got.pcs, got.below, got.before_nl = self, pcs, below, before_nl
            got.matched = sum(1 << code[pc][1] for pc in pcs if code[pc][0] == _MATCH)
            got.dead, got.verdict = not pcs, None
        return got

    def step(self, state: _State, c: str) -> _State:
        """The state after reading ``c`` in ``state`` (computed once, then kept in it)."""
        code = self.program.code
        pcs = self.program.closure(pc + 1 for pc in state.pcs
                                   if code[pc][0] == _CHAR and code[pc][1](c))
        matched = state.matched
        got = state[c] = self._state(pcs, state.below | (matched if c == "/" else 0),
                                     matched if c == "\n" else 0)
        return got

    @staticmethod
    def run(state: _State, text: str) -> _State:
        return _run(_step, text, state)

    def full(self) -> bool:
        return len(self.states) > self.MAX_STATES


# How a gitignore pattern's match counts (pathspec's GitIgnoreSpec, whose regex forms these
# are): the pattern body matched the whole path (or a directory above it, with ``ps_d``
# priority 1: a later file match outranks it), only a directory above it, or anything.
_SELF_OR_DIR, _DIR, _BELOW, _WHOLE = range(4)


class PathGlobError(ValueError):
    """A gitignore pattern that cannot compile: ``str()`` says why, ``index`` is its place
    in the patterns given (0-based), ``text`` the pattern."""

    def __init__(self, reason: str, *, index: int, text: str) -> None:
        super().__init__(reason)
        self.index, self.text = index, text


class _UnclosedClass(ValueError):
    """A ``[`` that opens a class never closed: git's wildmatch matches nothing there."""


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One gitignore pattern as compiled: its text, whether a match includes (False: a
    ``!`` pattern excludes), and ``null`` when gitignore reads it as matching nothing
    (blank, a ``#`` comment, ``/`` alone, an unclosed ``[``)."""

    text: str
    include: bool = True
    null: bool = False
    mode: int = _SELF_OR_DIR


def _segment(program: _Program, seg: str) -> None:
    """One path component's glob as instructions: ``*`` any run of non-``/``, ``?`` one
    non-``/``, ``[...]`` a class (``!`` or ``^`` negates; Python's class syntax, as
    pathspec hands it to ``re``), ``\\`` escapes. ValueError for a trailing ``\\`` or a
    class ``re`` refuses; ``_UnclosedClass``."""
    i, end, escape = 0, len(seg), False
    while i < end:
        c = seg[i]
        i += 1
        if escape:
            escape = False
            program.char(c.__eq__)
        elif c == "\\":
            escape = True
        elif c == "*":
            program.star(_not_slash)
        elif c == "?":
            program.char(_not_slash)
        elif c == "[":
            j = i + 1 if i < end and seg[i] in "!^" else i
            if j < end and seg[j] == "]":
                j += 1
            while j < end and seg[j] != "]":
                j += 1
            if j == end:
                raise _UnclosedClass(seg)
            j += 1
            negate = seg[i] in "!^"
            body = seg[i + negate:j].replace("\\", "\\\\")
            try:
                cls = re.compile("[" + "^" * negate + body)
            except re.error as err:
                raise ValueError(f"bad character class {seg[i - 1:j]!r}: {err}") from None
            program.char(cls.fullmatch)
            i = j
        else:
            program.char(c.__eq__)
    if escape:
        raise ValueError("a trailing '\\' escapes nothing: write '\\\\' for a literal '\\'")


def _gitignore(program: _Program, text: str, k: int) -> PathPattern:
    """Append gitignore pattern ``text`` as glob ``k`` of ``program`` (gitignore(5) as
    pathspec's ``GitIgnoreSpecPattern`` reads it, rule for rule); ValueError for a pattern
    it refuses."""
    body = text if text.endswith("\\ ") else text.rstrip()
    if not body or body.startswith("#") or body == "/":
        return PathPattern(text=text, null=True)
    include = not body.startswith("!")
    segs = (body if include else body[1:]).split("/")
    is_dir = not segs[-1]
    if not segs[0]:
        del segs[0]  # "/x": anchored at the root
    elif (len(segs) == 1 or (len(segs) == 2 and not segs[1])) and segs[0] != "**":
        segs.insert(0, "**")  # "x" and "x/": at any depth
    if not segs:
        raise ValueError("the pattern names nothing")
    if not segs[-1]:
        segs[-1] = "**"  # "x/": everything below x
    for i in range(len(segs) - 1, 0, -1):
        if segs[i - 1] == segs[i] == "**":
            del segs[i]
    start = len(program.code)
    if segs == ["**"] or segs == ["**", "*"] or segs == ["**", "*", "**"]:
        # "**", "*", "*/", "**/": anything (a directory above the file for "*/", "**/")
        if segs == ["**", "*", "**"] or (is_dir and segs == ["**"]):
            program.star(_anything)
            mode = _DIR if is_dir else _BELOW
        else:
            program.star(_anything)
            program.char(_not_newline)
            program.star(_anything)
            mode = _WHOLE
    else:
        mode, need_slash, last = _SELF_OR_DIR, False, len(segs) - 1
        try:
            for i, seg in enumerate(segs):
                if seg == "**" and i == 0:  # (?:.+/)? : any directories above
                    at = program.optional()
                    program.plus(_not_newline)
                    program.char("/".__eq__)
                    program.end_optional(at)
                elif seg == "**" and i < last:  # (?:/.+)? : any directories between
                    at = program.optional()
                    program.char("/".__eq__)
                    program.plus(_not_newline)
                    program.end_optional(at)
                    need_slash = True
                elif seg == "**":  # "x/**" or "x/": what is below x
                    mode = _DIR if is_dir else _BELOW
                else:
                    if need_slash:
                        program.char("/".__eq__)
                    if seg == "*":
                        program.plus(_not_slash)
                    else:
                        _segment(program, seg)
                    need_slash = True
        except _UnclosedClass:
            del program.code[start:]
            return PathPattern(text=text, include=include, null=True)
    program.starts.append(start)
    program.match(k)
    return PathPattern(text=text, include=include, mode=mode)


class PathGlobs:
    """Gitignore patterns compiled into one automaton: ``match(path)`` reads the path once,
    whatever the number of patterns, in O(len(path) × size of the patterns) at worst (a
    look-up per character once warm). ``path``: ``/``-separated, relative (a leading ``/``
    or ``./`` is dropped). The last pattern matching the path itself decides, else the
    last matching a directory above it (pathspec's GitIgnoreSpec)."""

    MAX_DIRS = 100_000  # directories whose state is kept

    def __init__(self, patterns: Sequence[str]) -> None:
        """PathGlobError for the first pattern that cannot compile."""
        program, compiled = _Program(), []
        for text in patterns:
            try:
                compiled.append(_gitignore(program, text, len(compiled)))
            except ValueError as err:
                raise PathGlobError(str(err), index=len(compiled), text=text) from None
        self.patterns: tuple[PathPattern, ...] = tuple(compiled)
        self._automaton = _Automaton(program)
        self._dirs: dict[str, _State] = {}

    def _verdict(self, state: _State) -> bool:
        matched, below = state.matched, state.below
        at_end = matched | state.before_nl
        near: bool | None = None
        for k in range(len(self.patterns) - 1, -1, -1):
            p = self.patterns[k]
            if p.null:
                continue
            bit = 1 << k
            if p.mode == _SELF_OR_DIR:
                if at_end & bit:
                    return p.include
                if below & bit and near is None:
                    near = p.include
            elif p.mode == _DIR:
                if below & bit and near is None:
                    near = p.include
            elif (below if p.mode == _BELOW else matched) & bit:
                return p.include
        return bool(near)

    def _directory(self, path: str) -> _State:
        """The state after ``path`` (ending in ``/``), from its nearest known ancestor's."""
        dirs, todo = self._dirs, []
        cut = len(path)
        state = None
        while cut:
            todo.append(cut)
            cut = path.rfind("/", 0, cut - 1) + 1
            state = dirs.get(path[:cut])
            if state is not None:
                break
        if state is None:
            state = self._automaton.start
        for end in reversed(todo):
            state = dirs[path[:end]] = self._automaton.run(state, path[cut:end])
            cut = end
        return state

    def match_file(self, path: str) -> bool:
        """Whether the patterns select ``path``."""
        return bool(self.select((path,)))

    def select(self, paths: Iterable[str], *, invert: bool = False) -> list[str]:
        """The ``paths`` the patterns select (``invert``: those they do not), in order."""
        out: list[str] = []
        keep = out.append
        a, dirs = self._automaton, self._dirs
        with a.lock:
            states, start = a.states, a.start
            for path in paths:
                if len(states) > a.MAX_STATES or len(dirs) > self.MAX_DIRS:
                    a.reset()
                    dirs.clear()
                    states, start = a.states, a.start
                name = path
                if path.startswith(("/", "./")):
                    name = path[1:] if path[0] == "/" else path[2:]
                cut = name.rfind("/") + 1
                if cut:  # the state after a directory is kept: a listing names each often
                    state = dirs.get(name[:cut])
                    if state is None:
                        state = self._directory(name[:cut])
                    if state.dead and cut < len(name):
                        state = state[name[cut]]  # nothing left to match: one step decides
                    else:
                        state = _run(_step, name[cut:], state)
                else:
                    state = _run(_step, name, start)
                got = state.verdict
                if got is None:
                    got = state.verdict = self._verdict(state)
                if got is not invert:
                    keep(path)
        return out

@functools.lru_cache(maxsize=256)
def path_spec(patterns: tuple[str, ...]) -> PathGlobs:
    """The compiled gitignore ``patterns``; PathGlobError (a ValueError) for one that cannot
    compile."""
    return PathGlobs(patterns)


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
    for compiled in path_spec(tuple(patterns)).patterns:
        if compiled.null:
            raise ValueError(_null_reason(compiled.text))


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
    return path_spec(tuple(patterns)).select(paths)


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
def _ref_automaton(pattern: str) -> _Automaton:
    program = _Program()
    program.starts.append(0)
    for token in _ref_tokens(pattern):
        if token == _DSTAR_SLASH:  # (?:.*/)?
            at = program.optional()
            program.star(_anything)
            program.char("/".__eq__)
            program.end_optional(at)
        elif token == _DSTAR:
            program.star(_anything)
        elif token == _STAR:
            program.star(_not_slash)
        elif token == _ONE:
            program.char(_not_slash)
        else:
            program.char(token.__eq__)
    program.match(0)
    return _Automaton(program)


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
    (``_Automaton``, which path globs run on too); a pattern with at most one of ``*``,
    ``**``, ``**/`` cannot backtrack more than O(len(pattern) * len(text)), so it runs as
    its regex (``_ref_simple``), ten times faster than the NFA for ``main`` or
    ``release/*``."""
    simple = _ref_simple(pattern)
    if simple is not None:
        return simple.fullmatch(text) is not None
    automaton = _ref_automaton(pattern)
    with automaton.lock:
        if automaton.full():
            automaton.reset()
        return bool(automaton.run(automaton.start, text).matched)
