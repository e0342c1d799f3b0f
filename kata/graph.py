"""Graph algorithms over step dependencies: topological order, levels, cycles.

Pure functions over `{name: depends_on}` in config order; no model types, so the
loader (cycle check) and the compiler (order, parallel groups) share them.
"""

from __future__ import annotations

import heapq
from typing import Mapping, Sequence


def topo_order(deps: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(order, leftover): Kahn's algorithm, ties broken by config order (the mapping's
    order). `leftover` is non-empty exactly when there is a cycle."""
    index = {n: i for i, n in enumerate(deps)}
    pending = {n: len(set(ds)) for n, ds in deps.items()}
    dependents: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in set(ds):
            dependents[d].append(n)
    ready = [index[n] for n, c in pending.items() if c == 0]
    heapq.heapify(ready)
    names = list(deps)
    order: list[str] = []
    while ready:
        n = names[heapq.heappop(ready)]
        order.append(n)
        for m in dependents[n]:
            pending[m] -= 1
            if pending[m] == 0:
                heapq.heappush(ready, index[m])
    done = set(order)
    return tuple(order), tuple(n for n in deps if n not in done)


def find_cycle(deps: Mapping[str, Sequence[str]], leftover: Sequence[str]) -> tuple[str, ...]:
    """One cycle among `leftover`, in run order: each step runs before the next, the last
    is the first again (`a, b, c, a`: b depends on a, c on b, a on c)."""
    left = set(leftover)
    path: list[str] = []
    on_path: dict[str, int] = {}
    n = leftover[0]
    while n not in on_path:
        on_path[n] = len(path)
        path.append(n)
        n = next(d for d in deps[n] if d in left)
    cycle = path[on_path[n]:] + [n]
    return tuple(reversed(cycle))


def levels(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """Parallel groups: level 0 has no dependencies, level k depends on something at k-1.
    Within a level, steps keep config order."""
    level: dict[str, int] = {}
    for n in order:
        level[n] = 1 + max((level[d] for d in deps[n]), default=-1)
    groups: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for n in deps:  # config order
        groups[level[n]].append(n)
    return tuple(tuple(g) for g in groups)
