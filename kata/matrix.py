"""Matrix steps: one step in the config, one step per combination in the graph.

A step with ``matrix:`` expands at load time (GitLab's ``parallel: matrix``, GitHub's
``strategy.matrix``) into instances: the cartesian product of its variables, minus the
combinations an ``exclude`` entry matches, plus each ``include`` entry. Each instance is
an ordinary ``kata.model.Step``: the values are in its env (so in its derivation and its
cache key), ``${VAR}`` in ``image:`` is replaced by them, and it is named
``test (PYTHON=3.11, DB=postgres)``. Pure: no YAML, no I/O; the loader positions errors.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

# what a matrix value may hold: it appears in a step name, a label and an image tag
VALUE_RE = re.compile(r"[A-Za-z0-9_.:/+@-]+", re.ASCII)
_VAR_RE = re.compile(r"\$\{([^}]*)\}")
MAX_INSTANCES = 256  # a matrix past this is a mistake, not a pipeline

Values = tuple[tuple[str, str], ...]  # (variable, value) pairs, in the matrix's order


@dataclass(frozen=True, slots=True, kw_only=True)
class Matrix:
    """``axes``: (variable, values) in file order; ``exclude``/``include``: partial and
    whole combinations. Errors: ValueError on construction for an empty axis, a bad value,
    an ``exclude`` naming no axis, or a matrix that expands to nothing or to more than
    MAX_INSTANCES instances."""

    axes: tuple[tuple[str, tuple[str, ...]], ...]
    exclude: tuple[Values, ...] = ()
    include: tuple[Values, ...] = ()

    def __post_init__(self) -> None:
        names = {a for a, _ in self.axes}
        for name, values in self.axes:
            if not values:
                raise ValueError(f"matrix variable {name} has no values")
            for v in values:
                check_value(v)
        for entry in (*self.exclude, *self.include):
            if not entry:
                raise ValueError("an exclude or include entry must name at least one variable")
            for _, v in entry:
                check_value(v)
        for entry in self.exclude:
            unknown = [k for k, _ in entry if k not in names]
            if unknown:
                raise ValueError(f"exclude names {unknown[0]}, which is no matrix variable "
                                 f"(variables: {', '.join(sorted(names)) or 'none'})")
        if not self.axes and not self.include:
            raise ValueError('the matrix names no variable: give one, e.g. matrix: '
                             '{PYTHON: ["3.11", "3.12"]}')
        n = len(self.combinations())
        if n == 0:
            raise ValueError("the matrix expands to no combination (every one is excluded)")

    def combinations(self) -> tuple[Values, ...]:
        """Every instance's values: the product in axis order (the last axis varies
        fastest), those an exclude entry matches (all its pairs) dropped, then each include
        entry not already present. ValueError past MAX_INSTANCES."""
        total = 1
        for _, values in self.axes:
            total *= len(values)
        if total > MAX_INSTANCES * 4:
            raise ValueError(f"the matrix has {total} combinations; at most {MAX_INSTANCES}")
        out: list[Values] = []
        if self.axes:
            for combo in itertools.product(*(vs for _, vs in self.axes)):
                values = tuple(zip((a for a, _ in self.axes), combo))
                if not any(set(e) <= set(values) for e in self.exclude):
                    out.append(values)
        seen = {frozenset(v) for v in out}
        for entry in self.include:
            if frozenset(entry) not in seen:
                seen.add(frozenset(entry))
                out.append(entry)
        if len(out) > MAX_INSTANCES:
            raise ValueError(f"the matrix expands to {len(out)} instances; at most {MAX_INSTANCES}")
        return tuple(out)


def check_value(value: str) -> None:
    """ValueError unless ``value`` may be a matrix value (``VALUE_RE``)."""
    if not VALUE_RE.fullmatch(value):
        raise ValueError(f"bad matrix value {value!r}: use letters, digits and . _ - + : / @ "
                         "(it becomes part of the step's name and may be an image tag)")


def instance_name(base: str, values: Values) -> str:
    """``test (PYTHON=3.11, DB=postgres)``: the name an instance is shown, addressed and
    recorded under. A step name has no space, so no instance name is a plain step's."""
    return f"{base} ({', '.join(f'{k}={v}' for k, v in values)})"


def split_name(name: str) -> tuple[str, Values] | None:
    """The inverse of ``instance_name``: (base, values), or None for a plain step name."""
    base, sep, rest = name.partition(" (")
    if not sep or not rest.endswith(")"):
        return None
    pairs = []
    for part in rest[:-1].split(", "):
        k, eq, v = part.partition("=")
        if not eq:
            return None
        pairs.append((k, v))
    return base, tuple(pairs)


def substitute(text: str, values: Values) -> str:
    """``text`` with each ``${VAR}`` replaced by the instance's value; ValueError naming a
    ``${VAR}`` that is no matrix variable (no host env reaches a key this way)."""
    env = dict(values)

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise ValueError(f"${{{m.group(1)}}} is no matrix variable of this step "
                             f"(variables: {', '.join(env) or 'none'})")
        return env[m.group(1)]

    return _VAR_RE.sub(one, text)
