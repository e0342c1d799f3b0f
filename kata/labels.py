"""Target labels: `//build`, `//...` (every step), `//test*` (steps whose name starts so),
`//test(PYTHON=3.11)` (the instances of matrix step `test` with those values; `//test`
alone is every instance, see `kata.matrix`).

`parse_label` gives a `Label`; `select(labels, names)` picks step names in graph order;
`with_dependencies` closes a selection over `depends_on`.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from kata.errors import KataError


@dataclass(frozen=True, slots=True, kw_only=True)
class Label:
    kind: str  # "exact" | "prefix" | "all" | "instance"
    name: str = ""
    values: tuple[tuple[str, str], ...] = ()  # "instance": the matrix values to match

    def matches(self, step: str) -> bool:
        """``exact`` matches the step so named or every instance of the matrix step so
        named; ``instance`` the instances whose values include all of ``values``."""
        if self.kind == "all":
            return True
        if self.kind == "prefix":
            return step.startswith(self.name)
        if step == self.name:
            return self.kind == "exact"
        from kata.matrix import split_name

        split = split_name(step)
        if split is None or split[0] != self.name:
            return False
        return set(self.values) <= set(split[1])

    def __str__(self) -> str:
        if self.kind == "instance":
            return f"//{self.name}({', '.join(f'{k}={v}' for k, v in self.values)})"
        return {"all": "//...", "prefix": f"//{self.name}*", "exact": f"//{self.name}"}[self.kind]


@functools.cache
def _step_name_re() -> re.Pattern[str]:
    from grammar import load

    m = re.search(r"^NAME: /(.+)/$", load("labels"), re.MULTILINE)
    assert m is not None, "grammar/labels.lark defines NAME"
    return re.compile(m.group(1), re.ASCII)


def is_step_name(name: str) -> bool:
    """Whether ``name`` may name a step (and a service): what a label can address, the
    ``NAME`` terminal of ``grammar/labels.lark`` (``[A-Za-z0-9_][A-Za-z0-9_.-]*``), the one
    definition the config loader checks names against."""
    return isinstance(name, str) and _step_name_re().fullmatch(name) is not None


@functools.cache
def _parser():
    import lark

    from grammar import load

    return lark.Lark(load("labels"), parser="lalr")


def parse_label(text: str) -> Label:
    import lark

    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        fix = _slashed(text)
        hint = f" (did you mean {fix}?)" if fix else ""
        raise KataError("label.syntax", f"bad target label {text!r}: expected //step, "
                        f"//prefix*, //step(VAR=value) or //...{hint}", obj=text) from None
    target = tree.children[0]
    name = str(target.children[0]) if target.data in ("exact", "prefix", "instance") else ""
    values: tuple[tuple[str, str], ...] = ()
    if target.data == "instance":
        pairs = (p.strip().partition("=") for p in str(target.children[1]).strip().strip("()").split(","))
        values = tuple((k.strip(), v.strip()) for k, _, v in pairs)
    return Label(kind=str(target.data), name=name, values=values)


def _slashed(text: str) -> str:
    """``text`` with the ``//`` it lacks (``build``, ``/build`` -> ``//build``) when that
    is a label, else ""."""
    import lark

    if text.startswith("//"):
        return ""
    fixed = "//" + text.lstrip("/")
    try:
        _parser().parse(fixed)
    except lark.exceptions.LarkError:
        return ""
    return fixed


def select(labels: Iterable[str | Label], names: Sequence[str]) -> tuple[str, ...]:
    """The step names (in the order of `names`) any label matches; a label matching
    nothing is `KataError('label.no_match')` with a did-you-mean."""
    parsed = [lbl if isinstance(lbl, Label) else parse_label(lbl) for lbl in labels]
    chosen: set[str] = set()
    for lbl in parsed:
        hit = {n for n in names if lbl.matches(n)}
        if not hit:
            near = difflib.get_close_matches(lbl.name, list(names), n=1)
            hint = f" (did you mean //{near[0]}?)" if near else ""
            raise KataError("label.no_match", f"{lbl} matches no step{hint}", obj=str(lbl))
        chosen |= hit
    return tuple(n for n in names if n in chosen)


def with_dependencies(selected: Iterable[str], depends_on: Mapping[str, Sequence[str]],
                      order: Sequence[str]) -> tuple[str, ...]:
    """`selected` plus everything they depend on, transitively, in `order`."""
    seen: set[str] = set()
    stack = list(selected)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(depends_on.get(n, ()))
    return tuple(n for n in order if n in seen)
