"""Which trigger fires, and why a condition is false (compiler layer: pure).

``context(git)`` turns a ``kata.gitctx.GitContext`` into the ``kata.conditions.Context``
conditions evaluate; ``match(pipeline, ctx)`` says whether the pipeline's ``triggers:``
let it run and, when none matches, which trigger came closest (one for this event
first, then the fewest failing fields, then the first) and why; ``explain(expr, ctx)`` says in words why a condition is false
(the ``[SKIP] step (why)`` text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kata.conditions import And, Changed, Compare, Const, Context, Expr, Not, Or, trigger_expr

if TYPE_CHECKING:
    from kata.gitctx import GitContext
    from kata.model import Pipeline


def context(git: "GitContext") -> Context:
    return Context(event=git.event, branch=git.branch or "", tag=git.tag or "",
                   action=git.action or "", changed=tuple(sorted(git.changed)))


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerMatch:
    runs: bool  # the pipeline runs (a trigger matched, or there are none)
    index: int | None = None  # 1-based: the trigger that matched, else the closest one
    why: str = ""  # for no match: "trigger 1 (push): branch 'x' does not match main, release/*"


def match(pipeline: "Pipeline", ctx: Context) -> TriggerMatch:
    triggers = pipeline.triggers
    if not triggers:
        return TriggerMatch(runs=True)
    best: tuple[int, tuple[bool, int], list[str]] | None = None
    for i, trig in enumerate(triggers, 1):
        expr = trigger_expr(trig)
        parts = expr.items if isinstance(expr, And) else (expr,)
        failing = [p for p in parts if not p.evaluate(ctx)]
        if not failing:
            return TriggerMatch(runs=True, index=i)
        # closest: a trigger for this event first, then the fewest failing fields
        rank = (trig.event is not None and trig.event != ctx.event, len(failing))
        if best is None or rank < best[1]:
            best = (i, rank, [explain(p, ctx) for p in failing])
    assert best is not None
    i, _, whys = best
    event = triggers[i - 1].event or "any event"
    return TriggerMatch(runs=False, index=i, why=f"trigger {i} ({event}): " + "; ".join(whys))


def describe(ctx: Context) -> str:
    """The context in a few words: ``event push, branch 'main'``."""
    out = [f"event {ctx.event}"]
    if ctx.branch:
        out.append(f"branch {ctx.branch!r}")
    if ctx.tag:
        out.append(f"tag {ctx.tag!r}")
    if ctx.action:
        out.append(f"action {ctx.action!r}")
    return ", ".join(out)


def _value(ctx: Context, field: str) -> str:
    actual = getattr(ctx, field)
    return repr(actual) if actual else f"(no {field})"


def explain(expr: Expr, ctx: Context) -> str:
    """Why ``expr`` is false in ``ctx``, in words (its failing parts only)."""
    if isinstance(expr, Compare):
        actual = _value(ctx, expr.field)
        if expr.op == "=~":
            return f"{expr.field} {actual} does not match {expr.value}"
        if expr.op == "!~":
            return f"{expr.field} {actual} matches {expr.value}"
        if expr.op == "==":
            return f"{expr.field} is {actual}, not {expr.value!r}"
        if expr.op == "!=":
            return f"{expr.field} is {actual}"
        if expr.op == "in":
            return f"{expr.field} {actual} is not one of {', '.join(expr.value)}"
        return f"{expr.field} {actual} is one of {', '.join(expr.value)}"
    if isinstance(expr, Changed):
        shown = ", ".join(sorted(ctx.changed or ())[:3]) or "none"
        more = len(ctx.changed or ()) - 3
        return (f"no changed path matches {', '.join(expr.patterns)} (changed: {shown}"
                + (f" and {more} more" if more > 0 else "") + ")")
    if isinstance(expr, Or):
        fields = {i.field for i in expr.items if isinstance(i, Compare) and i.op == "=~"}
        if len(fields) == 1 and all(isinstance(i, Compare) and i.op == "=~" for i in expr.items):
            field = fields.pop()
            pats = ", ".join(str(i.value) for i in expr.items)  # type: ignore[attr-defined]
            return f"{field} {_value(ctx, field)} does not match {pats}"
        return "none of: " + "; ".join(explain(i, ctx) for i in expr.items)
    if isinstance(expr, And):
        return "; ".join(explain(i, ctx) for i in expr.items if not i.evaluate(ctx))
    if isinstance(expr, Not):
        return f"{expr.item} is true"
    if isinstance(expr, Const):
        return "false"
    return f"{expr} is false"
