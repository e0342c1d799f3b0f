"""`kata why`: what changed a step's key since its last recorded derivation."""

from __future__ import annotations

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
        changes = diff(prev, node.record())
        out.append(WhyResult(step=name, status="changed" if changes else "unchanged",
                             current_hash=node.drv_hash, changes=changes))
    return tuple(out)
