"""Condition expressions: one tree for `when:`, `only:` and `triggers:`.

`parse("branch == 'main' and changed('src/**')")` gives an `Expr`;
`expr.evaluate(Context(...))` decides it. `only:` objects and `triggers:`
entries are built into the same tree (`only_expr`, `triggers_expr`): trigger
entries are OR'ed, the fields inside one entry are AND'ed.

Status functions (``success()``, ``failure()``, ``always()``) ask how the run went so far;
``Context.failed`` says it. The planner decides a condition for both answers
(``status_gate``): a step whose condition is true when something failed is a *status step*
(docs/config.md, "Steps on failure"), decided by the scheduler once the steps before it
are done.

Globs: ``changed()`` and ``paths`` are path globs (gitignore), branches, tags and
``=~`` are ref globs (``*`` does not cross ``/``, ``**`` does); ``kata.globs`` defines both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from kata.errors import KataError, Position
from kata.globs import path_match, ref_match, ref_regex

if TYPE_CHECKING:
    from kata.model import Trigger

FIELDS = ("branch", "tag", "event", "action")

#: What started a run: ``push`` (a branch), ``pull_request``, ``tag`` (a tag pushed),
#: ``schedule``. The one list: ``--event``, ``triggers[].event``, ``only.events``,
#: ``when: event == ...`` and ``kata.gitctx.GitContext`` all check against it.
EVENTS = ("push", "pull_request", "tag", "schedule")
#: The pull-request actions (GitHub's names): ``--action``, ``triggers[].actions``,
#: ``when: action == ...`` and ``GitContext.action``.
PR_ACTIONS = ("opened", "synchronize", "closed")
#: The closed vocabularies of the context's fields (branch and tag are free text).
VOCABULARY = {"event": EVENTS, "action": PR_ACTIONS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a condition can see. `changed` None means unknown: `changed()` is then true.

    Tags are not branches (as Woodpecker and GitHub Actions see a run): a ``tag`` event
    has no branch, and every other event (``push``, ``pull_request``, ``schedule``) has
    no tag, even when a tag points at the commit. The constructor enforces it by
    dropping the field the event does not have, so ``only: {tags: [v*]}`` never runs on
    a push and ``only: {branches: [main]}`` never on a tag. An empty ``event`` (no run
    context, e.g. a unit test) keeps both.
    """

    event: str = ""
    branch: str = ""
    tag: str = ""
    action: str = ""
    changed: tuple[str, ...] | None = None
    # whether a step before the one asking failed (``failure()``); the planner decides a
    # condition for both values (``status_gate``)
    failed: bool = False

    def __post_init__(self) -> None:
        if self.event == "tag" and self.branch:
            object.__setattr__(self, "branch", "")
        elif self.event and self.event != "tag" and self.tag:
            object.__setattr__(self, "tag", "")


#: Ref globs (branches, tags, ``=~``); ``kata.globs`` defines both dialects.
glob_regex = ref_regex
glob_match = ref_match


class Expr:
    __slots__ = ()

    def evaluate(self, ctx: Context) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class Const(Expr):
    value: bool

    def evaluate(self, ctx: Context) -> bool:
        return self.value

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare(Expr):
    """field OP value; OP one of == != =~ !~ (glob) in, not in (value a tuple)."""

    field: str
    op: str
    value: str | tuple[str, ...]

    def evaluate(self, ctx: Context) -> bool:
        actual = getattr(ctx, self.field)
        if self.op == "==":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        if self.op == "=~":
            return glob_match(self.value, actual)
        if self.op == "!~":
            return not glob_match(self.value, actual)
        if self.op == "in":
            return actual in self.value
        assert self.op == "not in", self.op
        return actual not in self.value

    def __str__(self) -> str:
        if isinstance(self.value, tuple):
            return f"{self.field} {self.op} [{', '.join(_q(v) for v in self.value)}]"
        return f"{self.field} {self.op} {_q(self.value)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Changed(Expr):
    patterns: tuple[str, ...]

    def evaluate(self, ctx: Context) -> bool:
        if ctx.changed is None:
            return True
        return bool(path_match(self.patterns, ctx.changed))

    def __str__(self) -> str:
        return f"changed({', '.join(_q(p) for p in self.patterns)})"


#: The status functions: how the steps before this one went (docs/config.md).
STATUS_FUNCTIONS = ("success", "failure", "always")


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(Expr):
    """``success()`` (nothing before failed; the default), ``failure()`` (something
    before failed), ``always()``."""

    function: str

    def __post_init__(self) -> None:
        if self.function not in STATUS_FUNCTIONS:
            raise ValueError(f"unknown status function {self.function!r}")

    def evaluate(self, ctx: Context) -> bool:
        if self.function == "always":
            return True
        return ctx.failed if self.function == "failure" else not ctx.failed

    def __str__(self) -> str:
        return f"{self.function}()"


@dataclass(frozen=True, slots=True, kw_only=True)
class Not(Expr):
    item: Expr

    def evaluate(self, ctx: Context) -> bool:
        return not self.item.evaluate(ctx)

    def __str__(self) -> str:
        return f"not {_paren(self.item)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class And(Expr):
    items: tuple[Expr, ...]

    def evaluate(self, ctx: Context) -> bool:
        return all(i.evaluate(ctx) for i in self.items)

    def __str__(self) -> str:
        return " and ".join(_paren(i) for i in self.items)


@dataclass(frozen=True, slots=True, kw_only=True)
class Or(Expr):
    items: tuple[Expr, ...]

    def evaluate(self, ctx: Context) -> bool:
        return any(i.evaluate(ctx) for i in self.items)

    def __str__(self) -> str:
        return " or ".join(_paren(i) for i in self.items)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _paren(e: Expr) -> str:
    return f"({e})" if isinstance(e, (And, Or)) else str(e)


def all_of(items: Iterable[Expr]) -> Expr:
    items = tuple(items)
    return Const(value=True) if not items else items[0] if len(items) == 1 else And(items=items)


def any_of(items: Iterable[Expr]) -> Expr:
    items = tuple(items)
    return Const(value=False) if not items else items[0] if len(items) == 1 else Or(items=items)


def unknown_values(expr: Expr) -> list[tuple[str, str]]:
    """``(field, value)`` for every exact comparison (``==``, ``!=``, ``in``, ``not in``)
    of ``event`` or ``action`` with a value outside ``EVENTS`` / ``PR_ACTIONS``: such a
    condition can never be decided by its value (a typo). Globs (``=~``) are not checked."""
    out: list[tuple[str, str]] = []
    if isinstance(expr, Compare) and expr.field in VOCABULARY and expr.op in ("==", "!=", "in", "not in"):
        values = expr.value if isinstance(expr.value, tuple) else (expr.value,)
        out += [(expr.field, v) for v in values if v not in VOCABULARY[expr.field]]
    elif isinstance(expr, Not):
        out += unknown_values(expr.item)
    elif isinstance(expr, (And, Or)):
        for item in expr.items:
            out += unknown_values(item)
    return out


def status_functions(expr: Expr) -> set[str]:
    """The status functions ``expr`` calls (``{"failure"}``, ``{"always"}``, ...)."""
    if isinstance(expr, Status):
        return {expr.function}
    if isinstance(expr, Not):
        return status_functions(expr.item)
    if isinstance(expr, (And, Or)):
        return {f for item in expr.items for f in status_functions(item)}
    return set()


def status_gate(expr: Expr, ctx: Context) -> tuple[bool, bool]:
    """``(runs when nothing before failed, runs when something before failed)`` of a
    condition in ``ctx`` (whose ``failed`` is ignored): ``failure()`` is (False, True),
    ``always()`` (True, True), no status function at all (v, False) as ``success()``."""
    from dataclasses import replace

    on_success = expr.evaluate(replace(ctx, failed=False))
    if not status_functions(expr) - {"success"}:
        return on_success, False  # success() alone is the default: nothing failed
    return on_success, expr.evaluate(replace(ctx, failed=True))


def changed_patterns(expr: Expr) -> list[tuple[str, ...]]:
    """The path globs of every ``changed(...)`` in ``expr`` (for the loader to check)."""
    if isinstance(expr, Changed):
        return [expr.patterns]
    if isinstance(expr, Not):
        return changed_patterns(expr.item)
    if isinstance(expr, (And, Or)):
        return [p for item in expr.items for p in changed_patterns(item)]
    return []


# ---- parsing ---------------------------------------------------------------

@functools.cache
def _parser():
    import lark

    from grammar import load

    return lark.Lark(load("conditions"), parser="lalr", maybe_placeholders=False)


def _unquote(tok) -> str:
    import json

    return json.loads(str(tok))


def _build(tree) -> Expr:
    import lark

    if isinstance(tree, lark.Token):
        return Const(value=str(tree) == "true")
    kind = tree.data
    ch = tree.children
    if kind == "or_expr":
        return Or(items=tuple(_build(c) for c in ch))
    if kind == "and_expr":
        return And(items=tuple(_build(c) for c in ch))
    if kind == "not_":
        return Not(item=_build(ch[0]))
    if kind == "const":
        return Const(value=str(ch[0]) == "true")
    if kind == "compare":
        return Compare(field=str(ch[0]), op=str(ch[1]), value=_unquote(ch[2]))
    if kind in ("in_", "not_in"):
        values = tuple(_unquote(t) for t in ch[1].children if t is not None)
        return Compare(field=str(ch[0]), op="in" if kind == "in_" else "not in", value=values)
    if kind == "status":
        return Status(function=str(ch[0]))
    if kind == "changed":
        return Changed(patterns=tuple(_unquote(t) for t in ch))
    raise AssertionError(kind)


def parse(text: str, position: Position | None = None,
          locate: Callable[[int], Position | None] | None = None) -> Expr:
    """Parse a condition; a syntax error is `KataError('config.condition')` at the bad column.
    ``locate``: the file position of the text's character at an offset (0-based), when
    the text is not its source verbatim (a YAML block scalar); else ``position`` (where
    the text starts) and the error's line and column inside the text say it."""
    import lark

    try:
        return _build(_parser().parse(text))
    except RecursionError:
        raise KataError("config.condition", "condition nested too deeply", position=position) from None
    except (lark.exceptions.LarkError, ValueError) as err:
        line = getattr(err, "line", None)
        col = getattr(err, "column", None)
        pos = position
        if position is not None and isinstance(line, int) and isinstance(col, int) and line > 0:
            # a plain single-line scalar: point at the character inside it
            pos = Position(file=position.file, line=position.line + line - 1,
                           column=(position.column if line == 1 else 1) + max(col - 1, 0))
            if locate is not None:
                lines = text.split("\n")
                offset = sum(len(x) + 1 for x in lines[:line - 1]) + max(col - 1, 0)
                pos = locate(offset) or pos
        where = f" at column {col}" if isinstance(col, int) and col > 0 else ""
        if where and isinstance(line, int) and line > 1:
            where = f" at line {line}, column {col}"
        raise KataError("config.condition",
                        f"bad condition {text!r}{where}: "
                        + (_unknown_word(text, getattr(err, "pos_in_stream", None))
                           or "expected e.g. branch == \"main\", tag =~ \"v*\", "
                           "changed(\"src/**\"), failure(), always(), joined by and/or/not"),
                        position=pos) from None


_WORDS = {"branch", "tag", "event", "action", "changed", "success", "failure", "always",
          "and", "or", "not", "in", "true", "false"}


def _unknown_word(text: str, offset: object) -> str:
    """What to say when the parse stopped at a word the grammar has not (a misspelt
    field or function), else "". ``offset``: where in ``text`` it stopped."""
    import re

    if not isinstance(offset, int) or not 0 <= offset < len(text):
        return ""
    for op, word in (("&&", "and"), ("||", "or"), ("!", "not")):  # a shell's, GitHub's
        if text.startswith(op, offset) and not text.startswith(("!=", "!~"), offset):
            return f"'{op}' is no operator here: write {word}"
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, start)
    if m is None:
        return ""
    if text[:start].rstrip().endswith(("==", "!=", "=~", "!~", "[", ",")):
        return f"a value is a quoted string: write \"{m.group()}\""
    if m.group() in _WORDS:
        return ""
    if text[m.end():].lstrip().startswith("("):
        return (f"unknown function '{m.group()}()': the functions are changed(...), "
                "success(), failure(), always()")
    return f"unknown name '{m.group()}': the names are branch, tag, event, action"


# ---- only: and triggers: ---------------------------------------------------

def _globs(field: str, patterns: Iterable[str]) -> Expr:
    return any_of(Compare(field=field, op="=~", value=p) for p in patterns)


def only_expr(*, branches=(), tags=(), paths=(), events=()) -> Expr:
    """`only:` filters: branches and tags are OR'ed together (a ref filter), AND'ed
    with paths (`changed`) and events."""
    parts: list[Expr] = []
    refs = [*(Compare(field="branch", op="=~", value=b) for b in branches),
            *(Compare(field="tag", op="=~", value=t) for t in tags)]
    if refs:
        parts.append(any_of(refs))
    if paths:
        parts.append(Changed(patterns=tuple(paths)))
    if events:
        parts.append(Compare(field="event", op="in", value=tuple(events)))
    return all_of(parts)


def trigger_expr(t: "Trigger") -> Expr:
    parts: list[Expr] = []
    if t.event is not None:
        parts.append(Compare(field="event", op="==", value=t.event))
    if t.branches:
        parts.append(_globs("branch", t.branches))
    if t.pattern is not None:
        parts.append(Compare(field="tag", op="=~", value=t.pattern))
    if t.actions:
        parts.append(Compare(field="action", op="in", value=tuple(t.actions)))
    if t.paths:
        parts.append(Changed(patterns=tuple(t.paths)))
    return all_of(parts)


def triggers_expr(triggers: Iterable["Trigger"]) -> Expr:
    """No triggers: always (a manual `kata run`)."""
    triggers = tuple(triggers)
    if not triggers:
        return Const(value=True)
    return any_of(trigger_expr(t) for t in triggers)
