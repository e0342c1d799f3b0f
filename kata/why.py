"""`kata why`: what changed a step's key since its last recorded derivation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Mapping, Sequence

from kata.compile import DerivationGraph
from kata.derivation import Change, DerivationRecord, decode, diff
from kata.labels import select

# step name -> its last recorded derivation (a record, its encoded bytes, or None)
PreviousLookup = Callable[[str], "DerivationRecord | bytes | None"]


#: what a step's miss is explained by when its derivation is the one that passed last
NOT_STORED = ("same derivation as its last recorded result: the result was not in the "
              "store (never stored, collected by gc, damaged, --no-cache, cache: false, "
              "or a step with secrets, never cached without cache: true)")


@dataclass(frozen=True, slots=True, kw_only=True)
class WhyResult:
    """What changed one step's key. ``status``: ``no_previous`` (nothing recorded to
    compare with), ``unchanged``, ``changed`` (``changes`` says what), ``not_stored`` (a
    miss whose derivation is the one that passed last: its result was not in the store)
    or ``unrecorded`` (a run's step whose own derivation was never recorded)."""

    step: str
    status: str
    current_hash: str | None
    changes: tuple[Change, ...] = ()

    def lines(self) -> list[str]:
        """The lines `kata why` prints and `kata web` shows (one source for both)."""
        if self.status == "no_previous":
            return [f"//{self.step}: no previous derivation recorded; nothing to compare (it "
                    "never passed in an earlier run: one that failed, was allowed to fail, "
                    "which is never cached, or never ran has none)"]
        if self.status == "unchanged":
            return [f"//{self.step}: unchanged since its last recorded derivation"]
        if self.status == "not_stored":
            return [f"//{self.step}: {NOT_STORED}"]
        if self.status == "unrecorded":
            return [f"//{self.step}: no derivation recorded for this step (a run from before "
                    "kata recorded them on a miss)"]
        return [f"//{self.step}: {len(self.changes)} change(s) since its last recorded derivation",
                *(f"  {c}" for c in self.changes)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """A step as `why` needs it: its derivation record and hash now, its dependencies (step names)
    and whether it declares artifacts (what a dependent's early-cutoff key covers)."""

    record: DerivationRecord
    drv_hash: str | None  # None: not known (an image tag not resolved)
    deps: tuple[str, ...]
    artifacts: bool


def why(graph: DerivationGraph, label: str, previous: PreviousLookup) -> tuple[WhyResult, ...]:
    """One result per step the label selects, in graph order (``explain`` over the
    graph's derivations now)."""
    subjects = {n: Subject(record=graph.nodes[n].record(), drv_hash=graph.nodes[n].drv_hash,
                           deps=graph.nodes[n].deps,
                           artifacts=bool(graph.nodes[n].step.artifacts))
                for n in graph.order}
    return explain(select([label], graph.order), subjects, graph.order, previous)


def explain(names: Iterable[str], subjects: Mapping[str, Subject], order: Sequence[str],
            previous: PreviousLookup) -> tuple[WhyResult, ...]:
    """One result per step of ``names`` (an iterable of step names, each in
    ``subjects``): its record now against ``previous(name)``. ``order``: every step,
    dependencies first (how handed-on steps are listed). `kata why` passes a compiled
    graph's steps, `kata web` a recorded run's.

    A dependency whose key changed is explained from its own diff (looked up with
    ``previous`` too, once per step): changed itself (it runs, unless a result for its
    new key is stored), or only through its own dependencies' keys (it may still hit by
    early cutoff, if their outputs come out the same), or unknown (no record of it)."""
    diffs: dict[str, tuple[Change, ...] | None] = {}

    def changes_of(name: str) -> tuple[Change, ...] | None:
        if name not in diffs:
            prev = previous(name)
            if isinstance(prev, (bytes, bytearray)):
                prev = decode(bytes(prev))
            diffs[name] = None if prev is None else diff(prev, subjects[name].record)
        return diffs[name]

    out = []
    for name in names:
        drv_hash = subjects[name].drv_hash
        changes = changes_of(name)
        if changes is None:
            out.append(WhyResult(step=name, status="no_previous", current_hash=drv_hash))
            continue
        own = _own(changes)
        changes = tuple(dataclasses.replace(c, note=_dependency_note(
            c, changes_of, bool(own), _handed_on(subjects, order, c.name)))
                        if _through_dependency(c) and c.name in subjects else c
                        for c in changes)
        out.append(WhyResult(step=name, status="changed" if changes else "unchanged",
                             current_hash=drv_hash, changes=changes))
    return tuple(out)


def _through_dependency(change: Change) -> bool:
    """A dependency's key changed (not one added, removed or reordered)."""
    return change.field == "dependency" and change.kind == "changed"


def _own(changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """The changes of a step's own definition (all but its dependencies' new keys)."""
    return tuple(c for c in changes if not _through_dependency(c))


def _dependency_note(change: Change, changes_of: Callable[[str], "tuple[Change, ...] | None"],
                     self_changed: bool, through: tuple[str, ...]) -> str:
    """What a dependency's new key means, from the dependency's own diff; ``through``: the
    steps upstream of it whose artifacts it hands on (``_handed_on``), which a dependent's
    early-cutoff key covers too."""
    dep = change.name
    theirs = changes_of(dep)
    if theirs is None:
        verdict = (f"no earlier derivation of {dep} is recorded, so whether it runs or hits "
                   "by early cutoff is not known")
    elif own := _own(theirs):
        what = ", ".join(f"{c.field} {c.name}".strip() for c in own[:3])
        verdict = (f"{dep} itself changed ({what}{', …' if len(own) > 3 else ''}), so it "
                   "runs unless a result for its new key is stored")
    else:
        via = [c.name for c in theirs if _through_dependency(c)]
        # the dependencies' outputs by name: "its output" read as the dependency's own
        outputs = (f"{via[0]}'s output comes" if len(via) == 1 else
                   f"the outputs of {_names(via)} come")
        verdict = (f"{dep} itself is unchanged, its key changed only through "
                   f"{_names(via)}: it may hit by early cutoff if {outputs} out the same")
    if self_changed:
        then = "this step runs for its own changes"
    elif through:  # the early-cutoff key covers the whole stack the dependency hands on
        then = (f"this step still hits if what {dep} passes on comes out the same: its "
                f"artifacts and those it hands on from {', '.join(through)} (early cutoff)")
    else:
        then = f"this step still hits if {dep}'s output comes out the same (early cutoff)"
    return f"{verdict}; {then}"


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "its dependencies"


def _handed_on(subjects: Mapping[str, Subject], order: Sequence[str], dep: str
               ) -> tuple[str, ...]:
    """The steps upstream of ``dep`` (transitively, in ``order``) that declare artifacts:
    what ``dep`` hands on beside its own, all of it in a dependent's early-cutoff key."""
    seen: set[str] = set()
    todo = list(subjects[dep].deps)
    while todo:
        name = todo.pop()
        if name not in seen and name in subjects:
            seen.add(name)
            todo.extend(subjects[name].deps)
    return tuple(n for n in order if n in seen and subjects[n].artifacts)
