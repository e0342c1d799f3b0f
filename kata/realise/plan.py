"""The planner: what a run will do, decided once, before anything runs (ninja's ``Plan``).

:func:`make_plan` is a pure function of the compiled graph, the targets, the steps a
condition skips, whether the cache is used, and a lookup (``kata.realise.lookup``:
the store and the run's scope behind one callable). Its :class:`Plan` says, per step,
whether it is a hit (and by which key), runs (and why), or is skipped (and why), and
which secrets the steps that run need. ``kata run --dry-run`` renders it, the CLI
resolves exactly its secrets, and the realiser executes it.

Rules:
- the steps considered are the targets (None: every step) and, transitively, the
  dependencies of those that miss: a step hit by its derivation hash needs none;
- a step whose ``only:``/``when:`` is false is skipped, and so is everything
  depending on it (a skipped step's dependents cannot run);
- in an untrusted scope a step that declares a secret (itself or in a service) is
  skipped, and its dependents with it (``kata.trust.withheld``): the run resolves no value;
- a status step (``when: failure()``/``always()``, :func:`status_steps`) is not skipped
  with a dependency a condition skipped: the scheduler decides it once every step before
  it (:func:`status_waits`) has ended; it is never cached;
- a step is looked up only when it caches: the cache is on (not ``--no-cache``, not
  ``settings.cache_enabled: false``), its ``cache:`` is not false, and it declares no
  secret unless ``cache: true`` says so (``Step.cacheable``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kata import trust
from kata.errors import KataError
from kata.keys import Scope
from kata.realise.lookup import Looked
from kata.realise.results import PlanEntry

if TYPE_CHECKING:
    from kata.compile import DerivationGraph
    from kata.conditions import Context
    from kata.model import Pipeline, Step
    from kata.realise.results import RealiseOptions
    from kata.remote.cache import RemoteCache
    from store import Store

Action = Literal["hit", "run", "skip"]
DAMAGED = "cached output damaged, rebuilding"
NOT_STORED = "not in the store"
NOT_STORED_ANYWHERE = "not in the store or the remote cache"  # the remote was asked too
WAITS = "waits for"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPlan:
    """One step's part in the run.

    ``key``: for a hit the key that hit; else the derivation hash looked up.
    ``why``: for a step that runs, why it misses; for a skipped step, why it is skipped.
    ``found``: for a hit, the record (``Looked``) it hit with.
    ``after``: for a step that misses by its derivation hash (not stored, or damaged),
    its dependencies that run in this run: once they passed, the step is looked up again
    by its resolved hash and hits if they rebuilt to the output they had (early cutoff;
    this is how a run heals a dependency's deleted tree and still hits its dependents).
    No plan can know that output before it exists, so a dry run says so.
    """

    step: str
    action: Action
    key: str = ""
    why: str = ""
    found: Looked | None = None
    after: tuple[str, ...] = ()

    @property
    def damaged(self) -> bool:
        return self.why == DAMAGED


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The steps to realise (``order``: hits and runs, topological), the skipped ones,
    and the secrets needed (names, in first-use order)."""

    order: tuple[str, ...]
    steps: Mapping[str, StepPlan]  # every planned and every skipped step
    secrets: tuple[str, ...]

    @property
    def hits(self) -> dict[str, StepPlan]:
        return {n: self.steps[n] for n in self.order if self.steps[n].action == "hit"}

    @property
    def to_run(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self.steps[n].action == "run")

    @property
    def skipped(self) -> dict[str, str]:
        return {n: p.why for n, p in self.steps.items() if p.action == "skip"}


def caches(step: "Step", use_cache: bool) -> bool:
    """Whether a step's result is looked up at all."""
    return use_cache and step.cacheable


def miss_reason(step: "Step", use_cache: bool) -> str:
    """Why a step is not looked up ("" when it is)."""
    if not use_cache:
        return "--no-cache"
    if not step.cache.enabled:
        return "cache: false"
    if step.on_status:
        return "when: failure()/always() (never cached; runs once the steps before it ended)"
    if not step.cacheable:
        if not step.secrets:
            return "a service declares secrets (cache: true caches it)"
        return "declares secrets (cache: true caches it)"
    return ""


def gated(graph: "DerivationGraph", use_cache: bool) -> dict[str, str]:
    """Steps downstream of a step that always runs (``cache: false``, secrets): step ->
    the nearest such dependency. Such a step is no hit before that dependency passed in
    this run (``depends_on`` means "must pass first"): it is looked up by its resolved
    hash once its dependencies are done (early cutoff), and skipped if one fails."""
    out: dict[str, str] = {}
    if not use_cache:
        return out  # every step runs anyway
    for name in graph.order:
        for dep in graph.nodes[name].deps:
            if miss_reason(graph.nodes[dep].step, use_cache) or dep in out:
                out[name] = out.get(dep, dep)
                break
    return out


def local_only(graph: "DerivationGraph") -> frozenset[str]:
    """Steps whose results never go to the remote cache because of a secret: one declared
    by the step (itself or in a service) or by a step it depends on, transitively (its
    artifact stack holds that step's outputs; ``Records.shares``). They are never looked up
    in the remote either: an entry there can only have been written by someone else."""
    out: set[str] = set()
    for name in graph.order:  # dependencies first
        node = graph.nodes[name]
        if node.step.secrets or any(s.secrets for s in node.step.services) \
                or any(d in out for d in node.deps):
            out.add(name)
    return frozenset(out)


def excluded(graph: "DerivationGraph", skip: Mapping[str, str],
             statuses: Mapping[str, bool] | None = None) -> dict[str, str]:
    """Steps skipped by a condition (``skip``: step -> why), and everything depending
    on them but the status steps (``statuses``), in topological order."""
    out: dict[str, str] = {}
    for name in graph.order:
        if name in skip:
            out[name] = skip[name]
        elif name not in (statuses or {}):
            off = [d for d in graph.nodes[name].deps if d in out]
            if off:
                out[name] = f"dependency {off[0]} skipped"
    return out


def context_values(pipeline: "Pipeline", ctx: "Context", commit: str) -> dict[str, str]:
    """The values of ``kata.model.CONTEXT_VARS`` for this run (what ``context:`` asks for):
    the commit, the branch (none on a tag event), the tag (only on a tag event), the event
    (``push`` for a local run) and the pipeline's name."""
    return {"KATA_COMMIT_SHA": commit, "KATA_BRANCH": ctx.branch, "KATA_TAG": ctx.tag,
            "KATA_EVENT": ctx.event or "push", "KATA_PIPELINE": pipeline.name, "CI": "true"}


def select_targets(graph: "DerivationGraph", *, steps: Sequence[str] = (),
                   labels: Sequence[str] = ()) -> tuple[str, ...] | None:
    """The run's targets: the steps ``//labels`` select, else the named ``steps``
    (``cli.unknown_step`` with the closest name for one that is no step); None: all."""
    if labels:
        from kata.labels import select

        return tuple(select(labels, graph.order))
    if not steps:
        return None
    # a matrix step's config name runs every instance of it
    instances: dict[str, list[str]] = {}
    for n in graph.order:
        if graph.nodes[n].step.matrix_of:
            instances.setdefault(graph.nodes[n].step.matrix_of, []).append(n)
    steps = tuple(x for s in steps for x in (instances.get(s) or (s,)))
    unknown = [s for s in steps if s not in graph.nodes]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(graph.order), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise KataError("cli.unknown_step", f"no step named {unknown[0]!r}{hint}", obj=unknown[0])
    return tuple(steps)


def condition_skips(pipeline: "Pipeline", ctx: "Context") -> dict[str, str]:
    """Steps whose ``only:`` or ``when:`` is false in this run's git context, with why
    (a ``when:`` with a status function: false whether or not a step before it fails)."""
    from kata.conditions import status_gate
    from kata.triggers import explain

    out = {}
    for step in pipeline.steps:
        for what, cond in (("only", step.only), ("when", step.when)):
            if cond is None:
                continue
            if not (any(status_gate(cond, ctx)) if what == "when" else cond.evaluate(ctx)):
                out[step.name] = f"{what}: {explain(cond, ctx)}"
                break
    return out


def status_steps(pipeline: "Pipeline", ctx: "Context") -> dict[str, bool]:
    """The run's status steps: those whose ``when:`` is true when a step before them
    failed (``failure()``, ``always()``, ``failure() or branch == "main"``...) in this
    git context; step -> whether it also runs when none failed (``always()``)."""
    from kata.conditions import status_gate

    out = {}
    for step in pipeline.steps:
        if step.when is not None and step.on_status:
            on_success, on_failure = status_gate(step.when, ctx)
            if on_failure:
                out[step.name] = on_success
    return out


def status_waits(graph: "DerivationGraph", statuses: Mapping[str, bool]) -> dict[str, tuple[str, ...]]:
    """What each status step waits for and looks at ("the steps before it"): the steps it
    depends on, transitively, and every step listed above it in the file (a matrix's
    instances where the matrix step is) that does not itself wait for it. Status steps
    are taken in file order, so a later one never makes an earlier one wait for it: the
    graph stays acyclic. Pure; step -> steps in topological order."""
    nodes = graph.nodes
    topo = {n: i for i, n in enumerate(graph.order)}
    edges: dict[str, set[str]] = {n: set(nodes[n].deps) for n in graph.order}
    file_order = [s.name for s in graph.pipeline.steps if s.name in nodes]

    def reach(name: str, links: Mapping[str, set[str]]) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for d in links[stack.pop()]:
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen

    def upstream(name: str) -> set[str]:
        return reach(name, edges)

    out: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(file_order):
        if name not in statuses:
            continue
        dependents: dict[str, set[str]] = {n: set() for n in edges}
        for n, ds in edges.items():
            for d in ds:
                dependents[d].add(n)
        downstream = reach(name, dependents)
        family = nodes[name].step.matrix_of  # instances of one matrix step: side by side
        edges[name] |= {e for e in file_order[:i] if e not in downstream
                        and not (family and nodes[e].step.matrix_of == family)}
        out[name] = tuple(sorted(upstream(name), key=topo.__getitem__))
    return out


def reach_all(targets: Sequence[str], graph: "DerivationGraph") -> tuple[str, ...]:
    """``targets`` and every step they depend on, transitively (graph order)."""
    from kata.labels import with_dependencies

    return with_dependencies(targets, {n: graph.nodes[n].deps for n in graph.order},
                             graph.order)


def check(graph: "DerivationGraph", targets: Sequence[str] | None) -> None:
    """A graph the realiser can run: every target is a step (``target.unknown``) and every
    step the targets need (all steps without targets) has a derivation hash and hashed
    inputs (``image.unresolved``); a step no target needs may stay unresolved."""
    unknown = [t for t in (targets or ()) if t not in graph.nodes]
    if unknown:
        raise KataError("target.unknown", f"no step named {unknown[0]!r}", obj=unknown[0])
    needed = None if targets is None else set(reach_all(targets, graph))
    for name in graph.order:
        if needed is not None and name not in needed:
            continue
        node = graph.nodes[name]
        if node.drv_hash is None or node.inputs is None:
            raise KataError("image.unresolved", f"step {name}: its image {node.step.image} "
                            "could not be resolved to a digest", obj=name)


def make_plan(graph: "DerivationGraph", *, targets: Sequence[str] | None,
              skip: Mapping[str, str], use_cache: bool,
              lookup: Callable[[str], Looked], scope: Scope = Scope(),
              statuses: Mapping[str, bool] | None = None) -> Plan:
    """Decide the run. ``lookup(derivation hash)`` reads the store in the run's scope;
    ``scope.trusted`` False withholds secrets (``kata.trust.skips``; a condition's reason
    wins). Raises ``target.unknown`` for a target that is no step, ``image.unresolved``
    for a step whose derivation has no hash."""
    nodes = graph.nodes
    check(graph, targets)
    withheld = trust.skips((nodes[n].step for n in graph.order), scope)
    off = excluded(graph, {**withheld, **skip}, statuses)
    wanted = set(targets) if targets else set(graph.order)
    waits = gated(graph, use_cache)
    plans: dict[str, StepPlan] = {}
    for name in reversed(graph.order):
        if name not in wanted:
            continue
        node = nodes[name]
        drv_hash = node.drv_hash
        assert drv_hash is not None
        if name in off:
            plans[name] = StepPlan(step=name, action="skip", why=off[name])
            continue
        why = miss_reason(node.step, use_cache)
        if not why and name in waits:
            why = f"{WAITS} {waits[name]} (never cached) to pass"
        elif not why:
            found = lookup(drv_hash)
            if found.record is not None:
                plans[name] = StepPlan(step=name, action="hit", key=drv_hash, found=found)
                continue
            why = DAMAGED if found.damaged else \
                NOT_STORED_ANYWHERE if found.asked_remote else NOT_STORED
        plans[name] = StepPlan(step=name, action="run", key=drv_hash, why=why)
        wanted.update(node.deps)
    for name in graph.order:  # dependencies first: whether each runs is known by now
        p = plans.get(name)
        if p is not None and p.action == "run" and p.why in (NOT_STORED, NOT_STORED_ANYWHERE, DAMAGED):
            after = tuple(d for d in nodes[name].deps if d in plans and plans[d].action == "run")
            if after:
                plans[name] = StepPlan(step=name, action="run", key=p.key, why=p.why, after=after)
    ordered = {n: plans[n] for n in graph.order if n in plans}
    order = tuple(n for n, p in ordered.items() if p.action != "skip")
    secrets: dict[str, None] = {}
    for name in order:
        if ordered[name].action == "run":
            step = nodes[name].step
            secrets.update(dict.fromkeys(step.secrets))
            for service in step.services:
                secrets.update(dict.fromkeys(service.secrets))
    return Plan(order=order, steps=ordered, secrets=tuple(secrets))


def plan_entries(graph: "DerivationGraph", plan: Plan) -> list[PlanEntry]:
    """What ``--dry-run`` says per planned step (skipped steps: ``Plan.skipped``)."""
    entries = []
    for name in plan.order:
        p = plan.steps[name]
        if p.action == "hit":
            entries.append(PlanEntry(step=name, hit=True, key=p.key, why="",
                                     remote=p.found is not None and p.found.remote is not None))
            continue
        why = p.why
        if p.after:
            why += f"; may still hit once {', '.join(p.after)} rebuilt (early cutoff)"
        entries.append(PlanEntry(step=name, hit=False, key=p.key, why=why))
    return entries


def plan_run(graph: "DerivationGraph", store: "Store", options: "RealiseOptions", *,
             heal: bool = True, remote: "RemoteCache | None" = None) -> Plan:
    """:func:`make_plan` over ``store`` in ``options.scope`` (what the CLI and the
    realiser call); ``heal=False`` reports damage without repairing it (a dry run).
    ``remote``: the remote cache behind the store (its answers asked for at once first)."""
    from kata.realise.lookup import Lookup

    lookup = Lookup(store, options.scope, heal=heal, remote=remote)
    prefetch(graph, options.use_cache, remote, local=lookup.local)
    private = {graph.nodes[n].drv_hash for n in local_only(graph)}
    return make_plan(graph, targets=options.targets, skip=options.skip,
                     use_cache=options.use_cache,
                     lookup=lambda key: lookup.step(key, remote=key not in private),
                     scope=options.scope, statuses=options.statuses)


def prefetch(graph: "DerivationGraph", use_cache: bool, remote: "RemoteCache | None", *,
             local: "Callable[[str], bool] | None" = None) -> None:
    """Ask the remote cache about every step's derivation hash that the local store does
    not hold (``local(key)``) at once (concurrently), so the plan's lookups after a local
    miss are answered from memory. Lookups go local first: a fully cached run asks the
    remote nothing (a hung remote costs it nothing). Steps with a secret in or below them
    (``local_only``) are never asked."""
    if remote is None or not use_cache:
        return
    private = local_only(graph)
    remote.prefetch((n.drv_hash for name, n in graph.nodes.items()
                     if n.drv_hash and caches(n.step, use_cache) and name not in private),
                    local=local)
