"""Pipeline -> DerivationGraph: one Derivation per step, in topological order.

The image resolver is a parameter (tag -> manifest digest); digest-pinned
references never reach it. A resolver returning None (or no resolver, as for
`kata validate` and `kata graph` without a runtime) leaves that step, and every
step depending on it, unresolved: it has a Derivation with None in the unknown
fields and no hash, and the graph is still complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from kata import derivation as drv
from kata import keys
from kata.errors import KataError
from kata.graph import levels as graph_levels
from kata.graph import topo_order
from kata.inputs import InputSet, Snapshot, StatCache
from kata.model import DIGEST_RE, ImageRef, Pipeline, Step

Resolver = Callable[[ImageRef], "str | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    step: Step
    derivation: drv.Derivation
    drv_hash: str | None             # None: unresolved
    inputs: InputSet | None          # None: inputs not hashed
    deps: tuple[str, ...]            # dependency step names (config order, deduplicated)
    dep_hashes: tuple[tuple[str, str | None], ...] = ()

    @property
    def resolved(self) -> bool:
        return self.drv_hash is not None

    def resolved_hash(self, outputs: Mapping[str, str]) -> str:
        """The early-cutoff key; `outputs` maps each dependency step name to the digest
        of the artifact stack it hands on (``kata.keys.stack_digest``: its output tree over
        every tree it received), not its own output tree alone."""
        missing = [d for d in self.deps if d not in outputs]
        if missing:
            raise KataError("derivation.outputs", f"no output digest for {', '.join(missing)}",
                            obj=self.step.name)
        return keys.resolved_hash(self.derivation, [outputs[d] for d in self.deps])

    def record(self) -> drv.DerivationRecord:
        """What to store beside the realisation so `kata why` can name files and deps."""
        return drv.DerivationRecord(derivation=self.derivation, step=self.step.name,
                                    files=self.inputs.files if self.inputs else None,
                                    dep_names=self.dep_hashes)


@dataclass(frozen=True, slots=True, kw_only=True)
class DerivationGraph:
    pipeline: Pipeline
    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    nodes: Mapping[str, Node]
    #: the repository's file list the inputs were selected from (None: no repo_root)
    repo_paths: tuple[str, ...] | None = None

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """(dependency, dependent) pairs in order."""
        return tuple((d, n) for n in self.order for d in self.nodes[n].deps)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The DAG alone (no derivations): what `kata validate` needs."""

    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    deps: Mapping[str, tuple[str, ...]]


def plan(pipeline: Pipeline) -> Plan:
    deps = {s.name: tuple(dict.fromkeys(s.depends_on)) for s in pipeline.steps}
    order, leftover = topo_order(deps)
    assert not leftover, "the loader rejects cycles"
    return Plan(order=order, levels=graph_levels(order, deps), deps=MappingProxyType(deps))


def resolve_images(pipeline: Pipeline, resolver: Resolver, *,
                   pinned: Callable[[ImageRef], object] | None = None,
                   steps: Iterable[str] | None = None,
                   known: Callable[[], Iterable[str]] | None = None
                   ) -> dict[ImageRef, str | None]:
    """Every tag the pipeline names (steps' and services' images) -> its manifest digest
    (or None from a resolver that cannot tell); digest-pinned references are not asked,
    but each is given to ``pinned`` when there is one (it raises ``image.*`` when the image
    is neither stored nor fetchable). ``steps``: only the images of these steps (and their
    services); None: every step's.

    An image the resolver cannot find (a ``KataError`` ``image.*``: not in kata's image
    store and not fetchable — offline, unknown, unauthorized) is collected, and all of
    them are reported together as ``image.unavailable`` (exit 2, before any step runs),
    naming for each image the steps (and services) that use it, the cause, and the fix:
    ``kata image import FILE`` or ``kata image pull REF``, and, from ``known`` (the
    names of the images this host has), a close name when there is one (a typo: `did you
    mean ...?`). Other errors (containerd unreachable) pass through.
    """
    users: dict[ImageRef, list[str]] = {}
    wanted = None if steps is None else set(steps)
    for step in pipeline.steps:
        if wanted is not None and step.name not in wanted:
            continue
        users.setdefault(step.image, []).append(step.name)
        for service in step.services:
            users.setdefault(service.image, []).append(f"{step.name} (service {service.name})")
    found: dict[ImageRef, str | None] = {}
    failed: list[str] = []
    for ref, names in users.items():
        if ref.digest is not None and pinned is None:
            continue
        try:
            if ref.digest is not None:
                assert pinned is not None
                pinned(ref)
                continue
            got = resolver(ref)
        except KataError as err:
            if not err.reason.startswith("image.") or err.reason == "image.resolve":
                raise
            if err.reason == "image.refresh_failed":  # --pull, and the registry is away
                failed.append(f"image {ref} (used by {', '.join(names)}) could not be refreshed "
                              f"(--pull asks the registry): {err.message}")
                continue
            hint = _close_image(str(ref), known)
            failed.append(f"image {ref} (used by {', '.join(names)}) is neither in kata's "
                          f"image store nor fetchable: {err.message}; {hint}fix: `kata image pull "
                          f"{ref}` where the registry is reachable, or `kata image import FILE` "
                          "(an archive from `docker save` or `skopeo copy ... oci-archive:`)")
            continue
        if got is not None and not (isinstance(got, str) and DIGEST_RE.fullmatch(got)):
            raise KataError("image.resolve", f"resolver gave {got!r} for {ref}, "
                            "not a sha256 digest", obj=str(ref))
        found[ref] = got
    if failed:
        raise KataError("image.unavailable", "\n".join(failed), obj=str(next(iter(users))))
    return found


def _close_image(ref: str, known: Callable[[], Iterable[str]] | None) -> str:
    """``did you mean NAME? `` for a name of ``known()`` close to ``ref`` (else "")."""
    import difflib

    if known is None:
        return ""
    try:
        names = sorted(set(known()) - {ref})
    except KataError:  # no list to look in: no guess
        return ""
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.85)
    return f"did you mean {close[0]} (this host has it)? " if close else ""


def compile_pipeline(pipeline: Pipeline, resolver: Resolver | None = None,
                     repo_root: str | os.PathLike | None = None,
                     stat_cache: StatCache | None = None,
                     context: Mapping[str, str] | None = None) -> DerivationGraph:
    """Compile every step. `repo_root` None: inputs are not hashed (every derivation is
    unresolved; the graph's shape is still complete). `context`: the run's values of
    ``kata.model.CONTEXT_VARS`` (missing ones are ""); a step gets, in its env and so in
    its key, only the names its ``context:`` lists."""
    p = plan(pipeline)
    # every image up front: an unavailable one is reported with all its users at once
    digests: dict[ImageRef, str | None] = resolve_images(pipeline, resolver) if resolver else {}

    def image_digest(ref: ImageRef) -> str | None:
        if ref.digest is not None:
            return ref.digest
        if ref not in digests:  # every image was resolved up front
            digests[ref] = None
        return digests[ref]

    snapshot = None
    if repo_root is not None:
        # the config is already in each derivation field by field; hashing its bytes
        # too would make every edit (a step's name) change every key
        exclude = ()
        if pipeline.file:
            rel = os.path.relpath(os.path.abspath(pipeline.file), os.path.abspath(repo_root))
            exclude = (rel.replace(os.sep, "/"),)
        snapshot = Snapshot(repo_root, stat_cache, exclude=exclude)
    global_env = pipeline.env
    nodes: dict[str, Node] = {}
    by_name = {s.name: s for s in pipeline.steps}
    for name in p.order:
        step = by_name[name]
        inputs = key_files = None
        if snapshot is not None:
            inputs = snapshot.input_set(step.inputs)
            if step.cache.key_files:
                key_files = snapshot.key_set(step.cache.key_files,
                                             what=f"step {name}: cache.key_files").digest
        dep_hashes = tuple((d, nodes[d].drv_hash) for d in p.deps[name])
        asked = tuple((n, "true" if n == "CI" else (context or {}).get(n, "")) for n in step.context)
        d = drv.make(
            pipeline=pipeline.name, image=image_digest(step.image), commands=step.commands,
            workdir=step.workdir, user=drv.canonical_user(step.user, root_default=True),
            env=(*global_env, *step.env, *asked),
            secrets=step.secrets,
            inputs=inputs.digest if inputs is not None else None, key_files=key_files,
            artifacts=step.artifacts, cache_paths=step.cache.paths,
            services=[drv.ServiceDrv(name=s.name, image=image_digest(s.image),
                                     env=tuple(sorted(dict(s.env).items())), commands=s.commands,
                                     entrypoint=s.entrypoint,
                                     ready=(s.ready.kind, s.ready.target, s.ready.timeout.millis)
                                     if s.ready is not None else None,
                                     secrets=tuple(sorted(set(s.secrets))),
                                     user=drv.canonical_user(s.user, root_default=False),
                                     resources=drv.limits(s.resources.memory, s.resources.cpus,
                                                          s.resources.pids))
                      for s in step.services],
            network=step.network, deps=[h for _, h in dep_hashes],
            junit_reports=step.junit_reports,
            resources=drv.limits(step.resources.memory, step.resources.cpus,
                                 step.resources.pids))
        nodes[name] = Node(step=step, derivation=d, drv_hash=keys.derivation_hash(d) if d.resolved else None,
                           inputs=inputs, deps=p.deps[name], dep_hashes=dep_hashes)
    return DerivationGraph(pipeline=pipeline, order=p.order, levels=p.levels,
                           nodes=MappingProxyType(nodes),
                           repo_paths=snapshot.paths if snapshot is not None else None)


def unmatched_patterns(pipeline: Pipeline, repo_root: str | os.PathLike,
                       paths: tuple[str, ...] | None = None) -> list[str]:
    """Each ``inputs`` and ``cache.key_files`` pattern (not a ``!`` negation) that selects
    no file of the repository at ``repo_root``, as ``FILE:LINE:COLUMN: step 'a': inputs
    pattern 'scr/**' matches no file of the repository`` (the pattern's position, else the
    step's), once per
    matrix step: most likely a typo, with which the step sees none of what it names and
    stays a cache hit whatever changes there. A warning, not an error (the file may be
    generated later). ``paths``: the repository's file list when known (a compiled
    graph's ``repo_paths``); else it is read (``kata.inputs.Snapshot``)."""
    from kata.inputs import Snapshot, match

    exclude: tuple[str, ...] = ()
    if pipeline.file:
        rel = os.path.relpath(os.path.abspath(pipeline.file), os.path.abspath(repo_root))
        exclude = (rel.replace(os.sep, "/"),)
    if paths is None:
        paths = Snapshot(repo_root, exclude=exclude).paths
    out: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for step in pipeline.steps:
        base = step.matrix_of or step.name
        for field, patterns in (("inputs", step.inputs or ()),
                                ("cache.key_files", step.cache.key_files)):
            for pattern in patterns:
                if pattern.startswith("!") or (base, field, pattern) in seen:
                    continue
                seen.add((base, field, pattern))
                if not match((pattern,), paths):
                    pos = next((p for f, pat, p in step.pattern_positions
                                if f == field and pat == pattern and p is not None),
                               step.position)
                    where = f"{pos.file}:{pos.line}:{pos.column}: " if pos is not None else ""
                    what = ("only the config file, which is never an input (the key holds "
                            "its settings field by field)") if exclude and match(
                        (pattern,), exclude) else "no file of the repository"
                    out.append(f"{where}step {base!r}: {field} pattern {pattern!r} matches "
                               + what + _unexpanded(step, field, pattern))
    return out


def _unexpanded(step, field: str, pattern: str) -> str:  # noqa: ANN001 - model.Step
    """The hint for a pattern naming one of the step's matrix variables as ``${VAR}``,
    which only ``image:`` expands (the trial's ``inputs: ["${PART}/**"]``), else ""."""
    names = [n for n, _ in step.matrix if "${" + n + "}" in pattern]
    if not names:
        return ""
    return (f": ${{{names[0]}}} is not expanded in {field} (matrix variables are replaced "
            "only in image:; the value is in the step's env): to give each value its own "
            "files, write one step per value (a YAML anchor, `<<: *base`)")

