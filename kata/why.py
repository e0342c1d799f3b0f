"""`kata why`: what changed a step's key since its last recorded derivation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from kata.compile import DerivationGraph
from kata.derivation import Change, DerivationRecord, decode, diff
from kata.labels import select

# step name -> its last recorded derivation (a record, its encoded bytes, or None)
PreviousLookup = Callable[[str], "DerivationRecord | bytes | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WhyResult:
    step: str
    status: str                          # "no_previous" | "unchanged" | "changed"
    current_hash: str | None
    changes: tuple[Change, ...] = ()

    def lines(self) -> list[str]:
        if self.status == "no_previous":
            return [f"//{self.step}: no previous derivation recorded; nothing to compare"]
        if self.status == "unchanged":
            return [f"//{self.step}: unchanged since its last recorded derivation"]
        return [f"//{self.step}: {len(self.changes)} change(s) since its last recorded derivation",
                *(f"  {c}" for c in self.changes)]


def why(graph: DerivationGraph, label: str, previous: PreviousLookup) -> tuple[WhyResult, ...]:
    """One result per step the label selects, in graph order."""
    out = []
    for name in select([label], graph.order):
        node = graph.nodes[name]
        prev = previous(name)
        if prev is None:
            out.append(WhyResult(step=name, status="no_previous", current_hash=node.drv_hash))
            continue
        if isinstance(prev, (bytes, bytearray)):
            prev = decode(bytes(prev))
        changes = tuple(
            dataclasses.replace(c, through=_handed_on(graph, c.name))
            if c.field == "dependency" and c.kind == "changed" and c.name in graph.nodes else c
            for c in diff(prev, node.record()))
        out.append(WhyResult(step=name, status="changed" if changes else "unchanged",
                             current_hash=node.drv_hash, changes=changes))
    return tuple(out)


def _handed_on(graph: DerivationGraph, dep: str) -> tuple[str, ...]:
    """The steps upstream of ``dep`` (transitively, in graph order) that declare artifacts:
    what ``dep`` hands on beside its own, all of it in a dependent's early-cutoff key."""
    seen: set[str] = set()
    todo = list(graph.nodes[dep].deps)
    while todo:
        name = todo.pop()
        if name not in seen and name in graph.nodes:
            seen.add(name)
            todo.extend(graph.nodes[name].deps)
    return tuple(n for n in graph.order if n in seen and graph.nodes[n].step.artifacts)
