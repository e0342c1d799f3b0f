"""The one loop that runs things and writes the store.

The plan (``plan.py``) decides what runs, what hits and what is skipped; the keys come
from ``kata.keys``; records are read through ``lookup.py`` (scoped, self-healing); the
container spec is built by ``spec.py``; a step's working directory is a workspace
(``workspace.py``). What is left here, per step (docs/architecture.md, "Realiser"):
1. derivation-hash hits are reported before anything runs;
2. once a step's dependencies are realised, its resolved hash (their artifact-stack
   digests in place of their derivation hashes) is looked up: early cutoff;
3. a miss assembles the workspace, runs the container, collects the declared artifacts
   as one tree, stores the log as a blob and records the realisation under both keys
   (in the run's scope), only when the step exited 0 and produced every artifact;
4. a dependency whose tree turns out damaged while a dependent needs it is dropped and
   rebuilt in this run (the scheduler re-queues it), then the dependent goes on.
The run (per step: status, HIT/MISS, keys, duration, log digest) is recorded at the end,
also for failed and interrupted runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kata import keys, trust
from kata.errors import KataError
from kata.realise import artifacts
from kata.realise import events as ev
from kata.realise import spec as specs
from kata.realise.lookup import Looked, Lookup
from kata.realise.noop import new_run_id
from kata.realise.output import MaskedOutput
from kata.realise.records import Records
from kata.realise.plan import (
    DAMAGED, NOT_STORED, NOT_STORED_ANYWHERE, Plan, StepPlan, caches, check, local_only, make_plan,
    miss_reason, plan_entries, plan_run, prefetch, status_waits,
)
from kata.realise.results import PlanEntry, RealiseOptions, RunResult, StepResult  # noqa: F401
from kata.realise.scheduler import ALLOWED, Cancel, Requeue, schedule
from kata.realise.workspace import (
    BackgroundCloser, OverlayWorkspace, SecretsDir, WorkspaceFactory, sweep_dead_runs,
)
from kata.resources import effective, format_size
from kata.runtimes.base import (
    CANCEL_EXIT, DISK_EXIT, LOCAL_ONLY_LABEL, OOM_EXIT, TIMEOUT_EXIT, Runtime, ServiceSpec,
    give_cache_paths, user_ids,
)
from kata.secrets import Masker, maskable
from procs import pid_tag
from store import Realisation, Store, StoreError
from store.runs import Phases

if TYPE_CHECKING:
    from kata.compile import DerivationGraph, Node
    from kata.remote.actioncache import RemoteRecord
    from kata.remote.cache import RemoteCache
    from kata.realise.reports import TestReport

image_of = specs.image_of  # kept importable from here
_LOG_MEMORY = 1 << 20  # log bytes kept in memory before spilling to a temp file
_DAMAGE = ("store.corrupt_object", "store.missing_object")
_HEAL_ROUNDS = 8  # damaged trees healed while one step is set up, before giving up
REMOTE_LOST = "remote cache unavailable, rebuilding"
# a hit whose blobs the remote no longer holds (NOT_FOUND: an LRU evicted them); only that
# hit is rebuilt, the remote stays in use
REMOTE_EVICTED = "evicted from the remote cache, rebuilding"
# a hit whose bytes do not match the digests its entry names (remote.bad_answer: the
# remote's storage damaged, or its entry tampered with); the remote is left for the run
REMOTE_CORRUPT = "corrupt or tampered in the remote cache, rebuilding"
# A dependency stack deeper than _DIRECT_LAYERS is mounted as aligned blocks of merged trees
# (the store's merged stacks): whole blocks of 4096, then 256, then 16 trees from the bottom,
# each cut at a multiple of its size, then the last (< 16) trees one by one. A block is keyed
# by its trees, so the consumers of a chain or of a common first dependency share them, and
# each tree is laid into a given block once; at most 15 layers per block size.
_DIRECT_LAYERS = 24
_MERGE_BLOCKS = (4096, 256, 16)


class _Damaged(Exception):
    """A tree a step needs turned out missing or corrupt while the step was set up."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


#: The shell's "command not found" (POSIX sh, bash, busybox ash); also what runc gives
#: for an argv[0] the image does not have.
COMMAND_NOT_FOUND_EXIT = 127


class Realiser:
    """Realises the steps of one compiled graph against a store and a runtime.

    ``workspace`` makes a step's working directory from its layers (top first): the
    overlay for real runs, ``CopyWorkspace`` where no mount is possible.
    ``remote``: the remote cache behind the store (kata.remote): looked up after a local
    miss, fetched from only when a step that runs needs a remote hit's trees, and given
    every result this run records (trusted runs, steps without secrets).
    """

    def __init__(self, graph: "DerivationGraph", *, store: Store, runtime: Runtime | None,
                 emit: ev.Emit, options: RealiseOptions, pipeline: str = "",
                 workspace: WorkspaceFactory = OverlayWorkspace,
                 remote: "RemoteCache | None" = None) -> None:
        check(graph, options.targets)
        self.graph = graph
        self.store = store
        self.runtime = runtime
        self.options = options
        self.pipeline = pipeline or graph.pipeline.name
        self.run_id = new_run_id()
        self._workspace = workspace
        self._emit_lock = threading.Lock()
        self._emit = emit
        self._lock = threading.Lock()
        self._stacks: dict[str, tuple[str, ...]] = {}  # step -> visible artifact trees
        self._results: dict[str, StepResult] = {}
        self._planned: Mapping[str, StepPlan] = {}  # the plan being run, per step
        self._snapshots: dict[str, str] = {}  # step -> input snapshot tree digest
        self._snapshot_faults: dict[str, Exception] = {}  # step -> why its snapshot failed
        self._producer: dict[str, str] = {}  # tree digest -> the step whose stack has it
        self.remote = remote
        # step -> (a remote hit whose objects are not local yet, the keys to record it under)
        self._remote_hits: dict[str, tuple["RemoteRecord", tuple[str, ...]]] = {}
        # remote hits whose fetch failed, until they are rebuilt: every step that needs one
        # waits for that rebuild, not only the step that found it lost
        self._lost_hits: set[str] = set()
        self._missed: set[str] = set()  # steps whose MISS was said (once, even if re-queued)
        self._lookup = Lookup(store, options.scope, remote=remote)
        # steps never looked up in the remote (a secret in or below them: never uploaded)
        self._private = local_only(graph) if remote is not None else frozenset()
        self._private_keys = {graph.nodes[n].drv_hash for n in self._private}
        self.record_error = ""  # why the run could not be recorded ("" when it was)
        self.records = Records(store, self._lookup, options, run_id=self.run_id,
                               pipeline=self.pipeline, remote=remote, nodes=graph.nodes)
        # an untrusted run holds no value at all: not for a step, not even for the masker
        # (masking a value in output an attacker controls would confirm their guesses)
        self._secrets = dict(options.secrets) if options.scope.trusted else {}
        # every value given to this run, in every encoded form, masked in every step's output
        # (a value too short to mask is not: the CLI warned about it)
        self._masker = Masker(maskable(self._secrets.values()))
        self._unpack_locks: dict[str, threading.Lock] = {}
        self._run_dir = options.work_root
        self._closer = BackgroundCloser()  # workspaces are closed off the step's slot
        self._created = time.time()  # the run's start, unix time (phase times count from it)
        self._phases: dict[str, list[float]] = {}  # step -> [ready, started, running] so far
        self._ran_on: dict[str, str | None] = {}  # step -> the worker that ran it last
        self._ended: dict[str, float] = {}  # step -> when its result was set (unix time)

    def emit(self, event: ev.Event) -> None:
        with self._emit_lock:
            self._emit(event)

    # -- planning ---------------------------------------------------------------

    def plan(self, *, heal: bool = True) -> Plan:
        """The run's plan over this store and scope (``heal=False``: change nothing)."""
        if not heal:
            return plan_run(self.graph, self.store, self.options, heal=False, remote=self.remote)
        prefetch(self.graph, self.options.use_cache, self.remote, local=self._lookup.local)
        return make_plan(self.graph, targets=self.options.targets, skip=self.options.skip,
                         use_cache=self.options.use_cache, lookup=self._step_lookup,
                         scope=self.options.scope, statuses=self.options.statuses)

    def _step_lookup(self, drv_hash: str) -> Looked:
        return self._lookup.step(drv_hash, remote=drv_hash not in self._private_keys)

    def dry_run(self) -> list[PlanEntry]:
        return plan_entries(self.graph, self.plan(heal=False))

    def excluded(self) -> dict[str, str]:
        return self.plan(heal=False).skipped

    # -- the run ----------------------------------------------------------------

    def run(self, plan: Plan | None = None) -> RunResult:
        started = time.monotonic()
        created = self._created = time.time()
        plan = plan or self.plan()
        self._planned = plan.steps
        self.emit(ev.Parsed(pipeline=self.pipeline, steps=len(self.graph.order),
                            groups=len(self.graph.levels), planned=plan.order,
                            needs={n: self.graph.nodes[n].deps for n in plan.order}))
        for name, why in plan.skipped.items():
            self._skipped(name, why)
        for name, hit in plan.hits.items():  # derivation-hash hits: done before anything runs
            assert hit.found is not None and hit.found.record is not None
            self._hit(name, hit.found.record, hit.key, "derivation", remote=hit.found.remote)
        to_run = list(plan.to_run)
        lost = self._fetch_wanted()
        if lost:  # rebuilt here, in the graph's order among the steps that run
            chosen = {*to_run, *lost}
            to_run = [n for n in self.graph.order if n in chosen]
        sched = None
        run_dir = self.options.work_root / f"run-{pid_tag()}-{self.run_id}"
        try:
            if to_run:
                self._need_runtime()
                sweep_dead_runs(self.options.work_root)
                run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                # OWNERSHIP: the run's workspaces (inputs, outputs) and secrets are root's
                # alone; a container reaches its workspace through its bind mount, which
                # the modes of the directories above it do not gate
                os.chmod(run_dir, 0o700)
                self._run_dir = run_dir
                self._snapshot_inputs(to_run)
                deps = {n: self.graph.nodes[n].deps for n in self.graph.order}
                deps.update(status_waits(self.graph, self.options.statuses))
                max_parallel = self.options.max_parallel or os.cpu_count() or 1
                sched = schedule(to_run, deps, self._work, max_parallel=max_parallel,
                                 fail_fast=self.options.fail_fast, timeout=self.options.timeout,
                                 on_skip=self._skipped, on_start=self._started_together,
                                 statuses=self.options.statuses)
        finally:
            self._closer.drain()
            if run_dir.exists():
                try:
                    run_dir.rmdir()
                except OSError:
                    pass
            if self.remote is not None:
                self.remote.flush()  # the results this run sends are in the remote when it ends
            wall = time.monotonic() - (self.options.started or started)
            result = RunResult(run_id=self.run_id, steps=dict(self._results), wall=wall,
                               stop_reason=sched.stop_reason if sched else "",
                               interrupted=sched.interrupted if sched else False)
            try:
                self.records.run(result, self.graph.order, started=created,
                                 needs={n: self.graph.nodes[n].deps for n in self.graph.order})
            except (StoreError, OSError) as err:  # a full disk must not hide the outcome
                self.record_error = getattr(err, "message", None) or str(err)
                logging.getLogger("kata.realise").warning(
                    "run %s not recorded: %s", self.run_id, self.record_error)
        self._done(result, time.monotonic() - (self.options.started or started))
        return result

    def _done(self, result: RunResult, wall: float) -> None:
        """The ``Done`` event; ``wall``: seconds since the run (for ``kata run``, the process)
        began, taken now: the run record written, as late as the line can be."""
        results = [self._results.get(n) for n in self.graph.order]
        passed = [r for r in results if r and r.status == "passed"]
        stopped = bool(not result.ok and result.stop_reason in ("interrupted", "pipeline timeout"))
        self.emit(ev.Done(
            run_id=self.run_id, passed=len(passed),
            failed=sum(1 for r in results if r and r.status == "failed"),
            cancelled_steps=sum(1 for r in results if r and r.status == "cancelled"),
            allowed=sum(1 for r in results if r and r.status == "allowed"),
            skipped=sum(1 for r in results if r and r.status == "skipped"),
            cached=sum(1 for r in passed if r.cache == "HIT"),
            ran=sum(1 for r in results if r and r.cache == "MISS" and r.exit_status is not None),
            total=sum(r.duration for r in results if r and r.cache == "MISS"),
            wall=wall, cancelled=stopped, stop=result.stop_reason if stopped else ""))

    def _started_together(self, names: tuple[str, ...]) -> None:
        if len(names) > 1:
            self.emit(ev.ParallelStarted(steps=names))

    def _need_runtime(self) -> None:
        if self.runtime is None:
            raise KataError("runtime.unavailable", "no container runtime to run steps with",
                            exit_code=1)

    def _set(self, result: StepResult, stack: tuple[str, ...] | None = None) -> None:
        now = time.time()
        with self._lock:
            phase = self._phases.pop(result.name, None)
            if result.phases is None and phase is not None:  # it went through _work
                ready, began, running = phase
                result = dataclasses.replace(result, phases=Phases(
                    ready=ready, started=began, running=running or began, ended=now))
            if result.status != "skipped":
                self._ended[result.name] = now
            self._results[result.name] = result
            if stack is not None:
                self._stacks[result.name] = stack
                self._lost_hits.discard(result.name)
                for tree in stack:
                    self._producer.setdefault(tree, result.name)

    def _deps_stack(self, name: str) -> tuple[str, ...]:
        """The artifact trees a step sees, bottom first: its dependencies' stacks, merged.

        Artifacts flow transitively (the overview's ``deploy`` runs the ``bin/app``
        that ``build`` made, through ``unit-test``): a step's stack is its
        dependencies' stacks in ``depends_on`` order, then its own output tree.
        """
        seen: dict[str, None] = {}
        status_step = name in self.options.statuses  # sees what passed of its dependencies
        for dep in self.graph.nodes[name].deps:
            for tree in (self._stacks.get(dep, ()) if status_step else self._stacks[dep]):
                seen.setdefault(tree)
        return tuple(seen)

    def _stack_with(self, base: tuple[str, ...], tree: str) -> tuple[str, ...]:
        if not tree or tree == self.records.empty_tree() or tree in base:
            return base
        return base + (tree,)

    def _hit(self, name: str, real: Realisation, key: str, source: str,
             remote: "RemoteRecord | None" = None, keys: tuple[str, ...] = ()) -> None:
        """A step is a hit. A remote hit's objects stay remote until a step that runs
        needs them (``_localise``); then it is recorded locally under ``keys or (key,)``."""
        self.store.count(True)
        if remote is not None:
            with self._lock:
                self._remote_hits[name] = (remote, keys or (key,))
            if real.report and self.remote is not None:  # its totals, as the builder saw them
                self.remote.fetch_report(self.store, remote)
        drv_hash = self.graph.nodes[name].drv_hash
        # the derivation hash, as a direct hit, --dry-run and `kata graph` name it; an
        # early-cutoff hit also gives the resolved hash it was found by
        self.emit(ev.CacheChecked(step=name, hit=True, key=drv_hash or key,  # type: ignore[arg-type]
                                  source=source, produced_by=real.run, remote=remote is not None,
                                  resolved=key if source == "resolved" else ""))
        stack = real.stack if real.kind == "step" else self._stack_with((), real.outputs)
        now = time.time()  # a hit is one instant (an early-cutoff one: found, not run)
        self._set(StepResult(name=name, status="passed", cache="HIT",
                             drv_hash=self.graph.nodes[name].drv_hash or "", key=key,
                             duration=0.0, exit_status=real.exit_status, log=real.log or "",
                             outputs=real.outputs, produced_by=real.run, report=real.report,
                             phases=Phases(ready=now, started=now, running=now, ended=now)),
                  stack)
        self.emit(ev.StepPassed(step=name, duration=0.0, cached=True,
                                report=self.records.report(real)))

    def _skipped(self, name: str, reason: str) -> None:
        self._set(StepResult(name=name, status="skipped",
                             drv_hash=self.graph.nodes[name].drv_hash or "", message=reason))
        self.emit(ev.StepSkipped(step=name, reason=reason))

    # -- inputs -------------------------------------------------------------------

    def _snapshot_inputs(self, names: Sequence[str]) -> None:
        """Store each running step's input files as a tree, now, before anything runs.

        Snapshots are remembered in the store by the input set's digest, so
        unchanged inputs are not read again on the next run.
        """
        by_digest: dict[str, str] = {}
        for name in names:
            inputs = self.graph.nodes[name].inputs
            assert inputs is not None
            try:
                if inputs.digest not in by_digest:
                    by_digest[inputs.digest] = self.records.input_tree(inputs)
            except (StoreError, OSError) as err:  # e.g. a full disk: that step fails
                self._snapshot_faults[name] = err
                continue
            self._snapshots[name] = by_digest[inputs.digest]

    # -- one step -------------------------------------------------------------------

    def _work(self, name: str, cancel: Cancel) -> "bool | str":
        """Realise one step; a fault of the machine rather than of the step (a full disk,
        an object collected by a concurrent gc, an I/O error) fails that step with its
        reason instead of stopping the run as an internal error."""
        started = time.monotonic()
        began = time.time()
        with self._lock:
            ready = max((self._ended[d] for d in self.graph.nodes[name].deps
                         if d in self._ended), default=self._created)
            self._phases[name] = [min(ready, began), began, 0.0]
        try:
            if name in self._snapshot_faults:
                raise self._snapshot_faults.pop(name)
            return self._realise_step(name, cancel)
        except (KataError, StoreError, OSError) as err:
            return self._faulted(name, err, time.monotonic() - started)

    def _faulted(self, name: str, err: Exception, duration: float) -> bool:
        if isinstance(err, (KataError, StoreError)):
            reason, message = err.reason, err.message
        else:
            assert isinstance(err, OSError)
            code = errno.errorcode.get(err.errno or 0, "EIO")
            reason = "store.disk_full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "os.error"
            message = f"{err.strerror or err} ({code})" + (f": {err.filename}" if err.filename else "")
        message = self._masker.mask(message.encode()).decode("utf-8", "replace")
        node = self.graph.nodes[name]
        self._set(StepResult(name=name, status="failed", cache="MISS",
                             drv_hash=node.drv_hash or "", key=node.drv_hash or "",
                             duration=duration, message=message))
        self.emit(ev.StepFailed(step=name, exit_status=None, duration=duration, message=message,
                                reason=reason))
        return False

    def _realise_step(self, name: str, cancel: Cancel) -> "bool | str":
        node = self.graph.nodes[name]
        step = node.step
        if name not in self.options.statuses:
            # a remote hit re-queued to be rebuilt (its trees could not be fetched) may
            # depend on steps the plan never decided (nothing needed them below a hit):
            # they are decided first, as any step's dependencies are
            with self._lock:
                undecided = tuple(d for d in node.deps
                                  if d not in self._results and d not in self._stacks)
            if undecided:
                raise Requeue(undecided)
        resolved = ""
        if all(d in self._stacks for d in node.deps):
            resolved = node.resolved_hash({d: keys.stack_digest(self._stacks[d])
                                           for d in node.deps})
        use_cache = self.options.use_cache
        damaged = False
        if caches(step, use_cache) and resolved:
            found = self._lookup.step(resolved, remote=name not in self._private)
            if found.remote is not None:  # early cutoff across machines
                self.records.remote_early_cutoff(node, found.remote, resolved=resolved)
                self._hit(name, found.record, resolved, "resolved", remote=found.remote,
                          keys=(resolved, node.drv_hash or resolved))
                return True
            if found.record is not None:
                # early cutoff; remember it under the derivation hash too
                self.records.early_cutoff(node, found.record)
                self._hit(name, found.record, resolved, "resolved")
                return True
            damaged = found.damaged
        planned = self._planned.get(name)
        # the plan found the derivation-hash record damaged: a miss says so here too, as
        # the dry run did (the resolved lookup only decides whether it still hits)
        damaged = damaged or (planned is not None and planned.damaged)
        with self._lock:  # a re-queued step (or a lost hit) said so the first time
            first = name not in self._results and name not in self._missed
            self._missed.add(name)
        if first:
            self.store.count(False)
            asked = self.remote is not None and self.remote.enabled and name not in self._private
            why = miss_reason(step, use_cache) or (
                DAMAGED if damaged else NOT_STORED_ANYWHERE if asked else NOT_STORED)
            # the derivation hash, as the dry run and the next run's hit name it (the
            # resolved hash only for a step that has none)
            self.emit(ev.CacheChecked(step=name, hit=False, key=node.drv_hash or resolved,
                                      source="derivation" if node.drv_hash else "resolved",
                                      reason=why, damaged=damaged))
        if node.drv_hash:  # what `kata why` (and the dashboard) diffs a miss against
            self.records.derivation(node)
        return self._execute(name, node, resolved, cancel)

    def _unpacked(self, tree: str) -> Path:
        """The store's unpacked copy; dependents starting together wait for one extraction
        instead of each extracting the same tree."""
        with self._lock:
            lock = self._unpack_locks.setdefault(tree, threading.Lock())
        with lock:
            try:
                return Path(self.store.unpacked(tree))
            except StoreError as err:
                if err.reason in _DAMAGE:
                    raise _Damaged(tree) from err
                raise

    def _merged(self, trees: tuple[str, ...]) -> Path:
        """The store's merged directory of a block of a stack; dependents starting
        together wait for one build (the store unpacks the trees it needs)."""
        key = "\0".join(trees)
        with self._lock:
            lock = self._unpack_locks.setdefault(key, threading.Lock())
        with lock:
            try:
                return Path(self.store.merged(trees))
            except StoreError as err:
                if err.reason not in _DAMAGE:
                    raise
                for tree in trees:  # name the damaged tree, so that it is healed
                    self._unpacked(tree)
                raise

    def _layers(self, name: str, node: "Node") -> list[Path]:
        """The workspace's lower layers, top first: the dependencies' artifact trees (a deep
        stack as merged blocks, see _MERGE_BLOCKS), the restored cache directory, the input
        snapshot."""
        self._localise(name)
        empty = self.records.empty_tree()
        layers: list[Path] = []
        stack = self._deps_stack(name)
        blocks: list[tuple[str, ...]] = []
        start = 0
        if len(stack) > _DIRECT_LAYERS:
            for size in _MERGE_BLOCKS:
                while len(stack) - start >= size:
                    blocks.append(stack[start:start + size])
                    start += size
        for tree in reversed(stack[start:]):  # top first
            layers.append(self._unpacked(tree))
        for block in reversed(blocks):
            layers.append(self._merged(block))
        cache_tree = self.records.cache_tree(node)
        if cache_tree and cache_tree != empty:
            layers.append(self._unpacked(cache_tree))
        if name not in self._snapshots:  # a hit re-queued to be rebuilt
            self._snapshot_inputs([name])
            if name in self._snapshot_faults:
                raise self._snapshot_faults.pop(name)
        snapshot = self._snapshots[name]
        if snapshot != empty:
            layers.append(self._unpacked(snapshot))
        return layers

    def _localise(self, name: str) -> None:
        """Fetch the remote hits among ``name``'s dependencies into the store (their trees
        and logs) and record them there; a dependency whose fetch fails (the remote went
        away) is re-queued to be built here instead (``Requeue``)."""
        for dep in self.graph.nodes[name].deps:
            if not self._fetch_hit(dep):
                raise Requeue((dep,))
        self._record_fetched_stack(name)

    def _fetch_wanted(self) -> list[str]:
        """Fetch the remote hits among ``options.fetch`` (what ``--out`` copies) now, before
        any step runs; the ones the remote cannot hand over (blobs it evicted, the remote
        gone) are returned, each said to be a miss, to be rebuilt here in this run."""
        # (a hit's dependencies were not decided, nothing needed them: ``_realise_step``
        # has them decided first, by their resolved hashes: a hit there, or run too)
        return [name for name in self.options.fetch if not self._fetch_hit(name)]

    def _record_fetched_stack(self, name: str) -> None:
        """Record the remote hits deeper below ``name`` whose trees its dependencies'
        stacks brought into the store: only their logs and reports are still fetched (small
        blobs), so the next run hits them here without the remote. A failure just leaves
        one unrecorded (it is a hit in the remote still)."""
        seen: set[str] = set()
        todo = [d for dep in self.graph.nodes[name].deps for d in self.graph.nodes[dep].deps]
        while todo:
            anc = todo.pop()
            if anc in seen:
                continue
            seen.add(anc)
            todo.extend(self.graph.nodes[anc].deps)
            with self._lock:
                entry = self._remote_hits.get(anc)
            if entry is not None and all(self.store.has_blob(t) for t, _ in entry[0].trees()):
                self._fetch_hit(anc, lose=False)

    def _fetch_hit(self, name: str, *, announce: bool = True, lose: bool = True) -> bool:
        """If ``name`` is a remote hit not fetched yet: fetch its objects and record it in
        the store. False when that failed (the remote went away, or sent bad bytes), or
        failed earlier and ``name`` is not rebuilt yet: the hit is then a miss, said once
        (``announce``: as a ``CacheChecked`` event), to be rebuilt here. ``lose=False``: a
        failure only leaves it unrecorded here (its trees are here already)."""
        from kata.remote.cas import RemoteError, evicted

        with self._lock:
            if name not in self._remote_hits:
                return name not in self._lost_hits
            lock = self._unpack_locks.setdefault("remote\0" + name, threading.Lock())
        with lock:
            with self._lock:
                entry = self._remote_hits.get(name)
                if entry is None:  # a step starting together fetched it, or found it lost
                    return name not in self._lost_hits
            rec, step_keys = entry
            assert self.remote is not None
            try:
                self.remote.fetch(self.store, rec)
                for key in dict.fromkeys(step_keys):
                    self.store.put_realisation(self.options.scope.realisation_key(key),
                                               rec.realisation)
                if self.graph.nodes[name].drv_hash:  # what `kata why` diffs against here
                    self.records.derivation(self.graph.nodes[name])
            except (RemoteError, StoreError) as err:
                if isinstance(err, StoreError) and err.reason not in _DAMAGE:
                    raise
                with self._lock:
                    self._remote_hits.pop(name, None)
                    if not lose:
                        return False
                    self._lost_hits.add(name)
                    self._stacks.pop(name, None)
                    self._producer = {t: s for t, s in self._producer.items() if s != name}
                if announce:
                    gone = isinstance(err, RemoteError) and evicted(err)
                    bad = isinstance(err, RemoteError) and err.reason == "remote.bad_answer"
                    self.emit(ev.CacheChecked(step=name, hit=False, key=self._results[name].key,
                                              reason=REMOTE_EVICTED if gone else
                                              REMOTE_CORRUPT if bad else REMOTE_LOST,
                                              damaged=True))
                return False
            with self._lock:
                self._remote_hits.pop(name, None)
            return True

    def localise_all(self, names: "Sequence[str] | None") -> None:
        """Fetch the remote hits among ``names`` (None: every step) into the store, for
        what reads their trees after the run (``--out``). KataError remote.fetch_failed
        (exit 2) naming the step and the remote when one cannot be fetched any more (the
        remote went away, or handed back other bytes): a run without the remote rebuilds
        it locally."""
        for name in names if names is not None else self.graph.order:
            if not self._fetch_hit(name, announce=False):
                assert self.remote is not None
                why = self.remote.down_reason or \
                    "it no longer holds them (evicted), or they did not arrive intact"
                raise KataError("remote.fetch_failed", f"step {name} was a hit in the remote "
                                f"cache {self.remote.config.url}, which cannot hand over its "
                                f"outputs now ({why.splitlines()[0][:200]}); run again once "
                                "the remote is back, or without it to rebuild the step "
                                "locally", obj=name)

    def _healed_layers(self, name: str, node: "Node") -> list[Path]:
        """``_layers``, healing each damaged tree met on the way (``_heal`` may re-queue)."""
        for _ in range(_HEAL_ROUNDS):
            try:
                return self._layers(name, node)
            except _Damaged as damage:
                self._heal(name, node, damage.digest)
        raise KataError("store.damaged", f"step {name}: the trees it needs keep turning out "
                        "damaged; check the store's disk (kata store verify)", obj=name)

    def _heal(self, name: str, node: "Node", tree: str) -> None:
        """A tree ``name`` needs is damaged: quarantine it, drop what points at it, and
        re-queue whoever produced it (``Requeue``), or re-take the input snapshot."""
        if self._lookup.intact(tree):  # the damage was elsewhere (the unpacked copy)
            self.store.evict_unpacked(tree)
            return
        if tree == self._snapshots.get(name):
            assert node.inputs is not None
            self.records.forget_input_tree(node.inputs)
            fresh = self.records.input_tree(node.inputs)
            with self._lock:
                for other, snap in self._snapshots.items():
                    if snap == tree:
                        self._snapshots[other] = fresh
            return
        producer = self._producer.get(tree)
        if producer is None:  # the cache directory: restored from nowhere next time
            return
        self.records.drop_step(self._results[producer].key,
                               self.graph.nodes[producer].drv_hash or "")
        with self._lock:
            for step, stack in list(self._stacks.items()):
                if tree in stack:
                    del self._stacks[step]
            self._producer = {t: s for t, s in self._producer.items() if t != tree}
        self.emit(ev.CacheChecked(step=producer, hit=False, key=self._results[producer].key,
                                  reason=DAMAGED, damaged=True))
        raise Requeue((producer,))

    # running ---------------------------------------------------------------------

    def _execute(self, name: str, node: "Node", resolved: str, cancel: Cancel) -> "bool | str":
        """Run the step; True when it passed (and is recorded), ``ALLOWED`` when it failed
        as its ``allow_failure`` allows (never recorded as a realisation), else False."""
        step = node.step
        attempts = 1 + (step.retry.max if step.retry is not None else 0)
        with contextlib.ExitStack() as files:
            # spilled beside the run's workspaces, on the filesystem whose reserve the
            # runtime keeps (kata.runtimes.diskguard), not in the host's /tmp
            # (unbuffered: a full disk fails the write that hit it, with its reason)
            log = files.enter_context(tempfile.SpooledTemporaryFile(
                max_size=_LOG_MEMORY, dir=self._run_dir, buffering=0))
            log_lock = threading.Lock()
            # each service's output: its own log, stored as a blob (`kata logs --service`)
            service_logs = {s.name: files.enter_context(
                tempfile.SpooledTemporaryFile(max_size=_LOG_MEMORY, dir=self._run_dir,
                                              buffering=0))
                for s in step.services}
            attempt = 1
            while True:  # every attempt in a fresh workspace, all of them in the one log
                started = time.monotonic()
                exit_status, reason, message, outputs, report = self._attempt(
                    name, node, cancel, log, log_lock, service_logs)
                duration = time.monotonic() - started  # the final attempt's, as recorded
                if not reason or attempt >= attempts or cancel.is_set() \
                        or not step.retry.covers(reason, exit_status):  # type: ignore[union-attr]
                    break
                attempt += 1
                what = f"exit {exit_status}" if reason == "step.failed" else message
                with log_lock:
                    try:
                        log.write(f"kata: attempt {attempt - 1}/{attempts} failed ({what}); "
                                  f"attempt {attempt}/{attempts}\n".encode())
                    except OSError:  # the log's disk is full: the retry event says it
                        pass
                self.emit(ev.StepRetrying(step=name, attempt=attempt, attempts=attempts,
                                          exit_status=exit_status, reason=reason,
                                          message=message))
            if log.tell() == 0:  # nothing written (a quiet step): the run's one empty log
                log_digest = self.records.empty_log()
            else:
                log.seek(0)
                log_digest = self.store.put_blob(log)
            digests = []
            for sname, slog in service_logs.items():
                slog.seek(0)
                digests.append((sname, self.store.put_blob(slog)))
        # the report as a blob: the realisation names it (a hit shows it), the run record too
        report_digest = self.store.put_blob(report.encode()) if report is not None else ""
        if exit_status == 0 and not reason:
            self._passed(name, node, resolved, outputs, log_digest, duration, tuple(digests),
                         attempts=attempt, report=report, report_digest=report_digest)
            return True
        allowed = step.allows(reason or "step.failed", exit_status)
        status = "cancelled" if reason == "step.cancelled" else "allowed" if allowed else "failed"
        self._set(StepResult(name=name, status=status, cache="MISS", drv_hash=node.drv_hash or "",
                             key=resolved or node.drv_hash or "", duration=duration,
                             exit_status=exit_status, log=log_digest, message=message,
                             service_logs=tuple(digests), attempts=attempt,
                             report=report_digest))
        self.emit(ev.StepFailed(step=name, exit_status=exit_status, duration=duration,
                                message=message, reason=reason or "step.failed", allowed=allowed,
                                report=report))
        return ALLOWED if allowed else False

    def _attempt(self, name: str, node: "Node", cancel: Cancel, log: IO[bytes],
                 log_lock: threading.Lock, service_logs: dict[str, IO[bytes]],
                 ) -> tuple[int | None, str, str, str, "TestReport | None"]:
        """One attempt in a fresh workspace: (exit status, reason, masked message, output
        tree, test report); reason "" when it passed. Its output goes to ``log`` as it
        comes. The report (``reports:``) is read from the workspace however the step
        exited, before its artifacts are collected."""
        step = node.step
        exit_status: int | None = None
        message = reason = outputs = ""
        report = None
        applied_memory: int | None = None
        killed_note: str | None = None
        try:
            ws = self._workspace(self._run_dir, self._healed_layers(name, node))
            with contextlib.ExitStack() as release:
                release.callback(self._closer.close, ws)
                if (owner := user_ids(step.user)) is not None:  # its root is theirs
                    os.chown(ws.path, *owner)
                    if not getattr(self.runtime, "gives_cache_paths", False):  # a remote one
                        give_cache_paths(Path(ws.path), self._given_cache_paths(node), owner)
                try:
                    exit_status = self._run_container(name, node, ws.path, cancel, log,
                                                      log_lock, service_logs)
                    # the limit the runtime applied where it is not this host's default
                    applied_memory = getattr(exit_status, "memory", None)
                    killed_note = getattr(exit_status, "note", None)  # why it was ended
                    self._ran_on[name] = getattr(exit_status, "host", None)  # a worker
                    exit_status = int(exit_status)
                except KataError as err:  # e.g. a missing secret, an image not found
                    message, reason = err.message, err.reason
                # a step that passed has its report even when a fail_fast cancel came
                # after its exit (it passes, below); one that failed under a cancel is
                # "cancelled", its report cut short
                if step.junit_reports and exit_status is not None \
                        and (exit_status == 0 or not cancel.is_set()):
                    report = self._report(ws.path, step.junit_reports)
                if reason:
                    pass
                elif exit_status == 0:
                    reason, message, outputs = self._collect(node, ws.path)
                elif cancel.is_set():
                    reason, message = "step.cancelled", f"cancelled ({cancel.reason})"
                elif exit_status == TIMEOUT_EXIT:  # never a status the step chose itself
                    exit_status, reason = 124, "step.timeout"
                    message = f"timed out after {step.timeout}" if step.timeout else "timed out"
                elif exit_status == DISK_EXIT:  # killed by the runtime's disk guard: SIGKILL
                    exit_status, reason = 137, "step.disk_reserve"
                    message = killed_note or ("killed to keep the disk's reserve: its host's "
                                              "filesystem fell below it while the step wrote")
                elif exit_status == OOM_EXIT:  # killed by the kernel: SIGKILL
                    exit_status, reason = 137, "step.oom"
                    limit = format_size(applied_memory or effective(step.resources).memory
                                        or 0)
                    message = f"out of memory: limit {limit}"
                elif exit_status == COMMAND_NOT_FOUND_EXIT:
                    reason = "step.command_not_found"
                    message = (f"exit {exit_status}: a command was not found in the image "
                               f"{step.image} (install it there, or use an image that has it)")
                else:
                    reason = "step.failed"
        except (KataError, StoreError) as err:
            message, reason = err.message, err.reason
        message = self._masker.mask(message.encode()).decode("utf-8", "replace")
        if message and reason != "step.failed":
            with log_lock:
                try:
                    log.write(f"kata: {message}".encode() + b"\n")
                except OSError:  # the log's disk is full: the message is in the result
                    pass
        return exit_status, reason, message, outputs, report

    def _report(self, workdir: Path, patterns: tuple[str, ...]) -> "TestReport":
        """The step's test report, its names, lines and paths masked (a test may print a
        secret); a fault reading the workspace is a warning in it, never a failure."""
        from kata.realise.reports import FailedTest, TestReport, collect

        try:
            report = collect(workdir, patterns)
        except OSError as err:
            return TestReport(warnings=(f"not read ({err.strerror or err})",))

        def mask(text: str) -> str:
            return self._masker.mask(text.encode()).decode("utf-8", "replace")

        return dataclasses.replace(
            report, failures=tuple(FailedTest(name=mask(f.name), line=mask(f.line))
                                   for f in report.failures),
            files=tuple(mask(f) for f in report.files),
            warnings=tuple(mask(w) for w in report.warnings))

    def _collect(self, node: "Node", workdir: Path) -> tuple[str, str, str]:
        """(reason, message, output tree) of a step that exited 0: its declared artifacts
        stored as one tree (and its cache directory saved), or why not."""
        step = node.step
        paths, missing = artifacts.select(workdir, step.artifacts)
        if missing:
            return ("artifact.missing", artifacts.missing_message(missing, workdir), "")
        try:
            outputs = self.records.put_tree(
                workdir, paths, artifacts.dir_links(workdir, paths, step.workdir))
        except StoreError as err:  # e.g. a FIFO among the artifacts
            return err.reason, f"artifacts: {err.message}", ""
        if self.options.record:
            try:
                self.records.save_cache(node, workdir)
            except StoreError as err:  # e.g. a FIFO left in a cache directory
                return err.reason, f"cache.paths: {err.message}", ""
        return "", "", outputs

    def _passed(self, name: str, node: "Node", resolved: str, outputs: str, log: str,
                duration: float, service_logs: tuple[tuple[str, str], ...],
                attempts: int = 1, report: "TestReport | None" = None,
                report_digest: str = "") -> None:
        stack = self._stack_with(self._deps_stack(name), outputs)
        self.records.step_passed(node, resolved=resolved, outputs=outputs, log=log,
                                 duration=duration, stack=stack, report=report_digest,
                                 host=self._ran_on.pop(name, None))
        self._set(StepResult(name=name, status="passed", cache="MISS",
                             drv_hash=node.drv_hash or "", key=resolved or node.drv_hash or "",
                             duration=duration, exit_status=0, log=log, outputs=outputs,
                             produced_by=self.run_id, service_logs=service_logs,
                             attempts=attempts, report=report_digest), stack)
        self.emit(ev.StepPassed(step=name, duration=duration, report=report))

    def _running(self, name: str) -> None:
        """The runtime has the step's images: preparing is over, the container is next."""
        with self._lock:
            phase = self._phases.get(name)
            if phase is not None:
                phase[2] = time.time()

    def _given_cache_paths(self, node: "Node") -> tuple[str, ...]:
        """The step's ``cache.paths`` its user is given before it starts: all of them when
        it runs as a user (not root) and a cache directory was restored, else ()."""
        if user_ids(node.step.user) is None \
                or self.records.cache_tree(node) in ("", self.records.empty_tree()):
            return ()
        return tuple(node.step.cache.paths)

    def _run_container(self, name: str, node: "Node", workdir: Path, cancel: Cancel,
                       log: IO[bytes], log_lock: threading.Lock,
                       service_logs: dict[str, IO[bytes]]) -> int:
        step = node.step
        scope = self.options.scope
        why = trust.refused(step, scope) or trust.withheld(step, scope)
        if why:  # withheld steps never get here (the plan skips them); refused ones fail here
            raise KataError("trust.refused", why, obj=name)
        values = specs.secret_values(node, self._secrets)
        with contextlib.ExitStack() as stack:
            dirs: dict[str, Path] = {}  # "" = the step's; else a service's own
            for owner, names, user in (("", step.secrets, step.user),
                                       *((s.name, s.secrets, s.user) for s in step.services)):
                chosen = {n: values[n] for n in names}
                if chosen:
                    dirs[owner] = stack.enter_context(SecretsDir(
                        self._run_dir, chosen, user_ids(user))).path
            services = tuple(specs.service_spec(node, s, dirs.get(s.name))
                             for s in step.services)
            spec = specs.step_spec(node, workdir=workdir, secrets_dir=dirs.get(""),
                                   run_id=self.run_id, services=services,
                                   cache_paths=self._given_cache_paths(node))
            if self.records.secret_below(node):  # its workspace holds a secret step's artifacts
                spec = dataclasses.replace(spec, labels={**spec.labels, LOCAL_ONLY_LABEL: "1"})
            return self._start(name, spec, cancel, log, log_lock, services, service_logs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _start(self, name: str, spec: "specs.StepSpec", cancel: Cancel, log: IO[bytes],
               log_lock: threading.Lock, services: tuple[ServiceSpec, ...],
               service_logs: dict[str, IO[bytes]]) -> int:
        masker = self._masker
        # service output arrives line by line: one streaming masker per service, so a
        # value split across lines or streams is masked as in the step's own output
        service_outs = {sname: MaskedOutput(masker, sname, lambda _e: None, slog, log_lock)
                        for sname, slog in service_logs.items()}

        def service_sink(service: str, stream: str, data: bytes) -> None:
            service_outs[service](stream, data + b"\n")

        commands = self.graph.nodes[name].step.commands
        command = masker.mask(" && ".join(commands).encode()).decode("utf-8", "replace")
        self.emit(ev.StepStarted(step=name, command=command))
        assert self.runtime is not None
        if cancel.is_set():
            return CANCEL_EXIT
        sink = MaskedOutput(masker, name, self.emit, log, log_lock)
        sink.running = lambda: self._running(name)
        try:
            if services:
                return self.runtime.run(spec, sink, cancel, service_sink=service_sink)
            return self.runtime.run(spec, sink, cancel)
        finally:
            sink.close()  # what the masker held back (never a partial value)
            for out in service_outs.values():
                out.close()
