"""The one loop that runs things and writes the store.

Per step (DESIGN.md, "Derivations" and "Realiser and reporting"):
1. look up the derivation hash (input-addressed; known before anything runs);
2. once its dependencies are realised, look up the resolved hash (their output
   tree digests in place of their derivation hashes: early cutoff);
3. a hit restores nothing: its output tree digest is simply what dependents get;
4. a miss assembles the workspace (``workspace.py``), runs the container,
   collects the declared artifacts as one tree, stores the log as a blob and
   records the realisation under both keys, only when the step exited 0 and
   produced every declared artifact.
The run (per step: status, HIT/MISS, derivation hash, duration, log digest) is
recorded in the store at the end, also for failed and interrupted runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kata.errors import KataError
from kata.model import is_env_name
from kata.realise import events as ev
from kata.realise.results import PlanEntry, RealiseOptions, RunResult, StepResult  # noqa: F401
from kata.realise.scheduler import Cancel, schedule
from kata.realise.workspace import (
    SECRETS_PRELUDE, SECRETS_TARGET, SecretsDir, Workspace, sweep_dead_runs,
)
from kata.runtimes.base import (
    CANCEL_EXIT, TIMEOUT_EXIT, Mount, Readiness, Runtime, ServiceSpec, StepSpec,
)
from kata.secrets import Masker
from store import StoreError

_LOG_MEMORY = 1 << 20  # log bytes kept in memory before spilling to a temp file
# A dependency stack deeper than _DIRECT_LAYERS is mounted as aligned blocks of merged trees
# (the store's merged stacks): whole blocks of 4096, then 256, then 16 trees from the bottom,
# each cut at a multiple of its size, then the last (< 16) trees one by one. A block is keyed
# by its trees, so the consumers of a chain or of a common first dependency share them, and
# each tree is laid into a given block once; at most 15 layers per block size.
_DIRECT_LAYERS = 24
_MERGE_BLOCKS = (4096, 256, 16)


def _shell_script(commands: Sequence[str]) -> str:
    # one shell, commands in order, stop at the first failure (a CI step's contract)
    return "set -e\n" + "\n".join(commands) + "\n"


def image_of(node: Any) -> str:
    """The step's image pinned by the digest the compiler hashed: ``name@sha256:…``."""
    digest = node.derivation.image
    if not digest:
        raise KataError("image.unresolved", f"step {node.step.name}: image {node.step.image} "
                        "has no resolved digest", obj=node.step.name)
    return str(node.step.image.pin(digest))


def _empty_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kata-empty-"))
    return path


class _MaskedOutput:
    """The step's output sink: raw bytes per stream, masked by a streaming ``MaskStream``
    (one per stream, fed in order, so a value split across writes or lines is still
    found), then cut into lines for the log and the events. Nothing unmasked leaves."""

    raw = True  # the runtime hands over chunks as read (kata.runtimes.base.OutputSink)
    _MAX_PENDING = 1 << 20  # a longer line without a newline is passed on in pieces

    def __init__(self, realiser: "Realiser", name: str, log: Any, log_lock: threading.Lock) -> None:
        self._r, self._name, self._log, self._log_lock = realiser, name, log, log_lock
        self._streams = {s: realiser._masker.stream() for s in ("stdout", "stderr")}
        self._pending = {s: b"" for s in ("stdout", "stderr")}

    def __call__(self, stream: str, data: bytes) -> None:
        self._lines(stream, self._streams[stream].feed(data), final=False)

    def close(self) -> None:
        for stream, masking in self._streams.items():
            self._lines(stream, masking.close(), final=True)

    def _lines(self, stream: str, data: bytes, *, final: bool) -> None:
        buf = self._pending[stream] + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        if rest and (final or len(rest) >= self._MAX_PENDING):
            lines.append(rest)
            rest = b""
        self._pending[stream] = rest
        if not lines:
            return
        lines.append(b"")  # one write per chunk, each line ending in a newline
        with self._log_lock:
            self._log.write(b"\n".join(lines))
        emit, name = self._r.emit, self._name
        for line in lines[:-1]:
            emit(ev.OutputLine(step=name, stream=stream,  # type: ignore[arg-type]
                               text=line.decode("utf-8", errors="replace")))


class Realiser:
    """Realises the steps of one compiled graph against a store and a runtime."""

    def __init__(self, graph: Any, *, store: Any, runtime: Runtime | None, emit: ev.Emit,
                 options: RealiseOptions, pipeline: str = "") -> None:
        self.graph = graph
        self.store = store
        self.runtime = runtime
        self.options = options
        self.pipeline = pipeline or graph.pipeline.name
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._emit_lock = threading.Lock()
        self._emit = emit
        self._lock = threading.Lock()
        self._stacks: dict[str, tuple[str, ...]] = {}  # step -> visible artifact trees
        self._results: dict[str, StepResult] = {}
        self._snapshots: dict[str, str] = {}  # step -> input snapshot tree digest
        self._empty_tree = ""
        self._empty_log_digest = ""
        # every value given to this run, in every encoded form, masked in every step's output
        self._masker = Masker(v for v in options.secrets.values() if v)
        self._unpack_locks: dict[str, threading.Lock] = {}
        unknown = [t for t in (options.targets or ()) if t not in graph.nodes]
        if unknown:
            raise KataError("target.unknown", f"no step named {unknown[0]!r}", obj=unknown[0])
        for name in graph.order:
            node = graph.nodes[name]
            if node.drv_hash is None or node.inputs is None:
                raise KataError("image.unresolved", f"step {name}: its image {node.step.image} "
                                "could not be resolved to a digest", obj=name)

    # -- events -----------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        with self._emit_lock:
            self._emit(event)

    # -- planning ---------------------------------------------------------------

    def _caches(self, name: str) -> bool:
        return self.options.use_cache and self.graph.nodes[name].step.cacheable

    def _miss_reason(self, name: str) -> str:
        if not self.options.use_cache:
            return "--no-cache"
        step = self.graph.nodes[name].step
        if not step.cache.enabled:
            return "cache: false"
        if not step.cacheable:
            return "declares secrets (cache: true caches it)"
        return ""

    def _lookup(self, key: str) -> Any:
        """A realisation whose objects are all still here (gc on another host may have
        collected them behind this host's index): else a miss."""
        real = self.store.get_realisation(key)
        if real is None:
            return None
        meta = real.meta if isinstance(real.meta, dict) else {}
        needed = {real.outputs, *(meta.get("stack") or ())}
        if all(self.store.has_blob(d) for d in needed):
            return real
        return None

    def plan(self) -> tuple[list[str], dict[str, Any]]:
        """The steps to realise (topological) and the derivation-hash hits among them.

        A step hit by its derivation hash needs none of its dependencies, so
        only the dependencies of steps that miss are pulled into the plan.
        """
        nodes = self.graph.nodes
        order = list(self.graph.order)
        wanted = set(self.options.targets) if self.options.targets else set(order)
        hits: dict[str, Any] = {}
        needed: set[str] = set()
        excluded = self.excluded()
        for name in reversed(order):
            if name not in wanted or name in excluded:
                continue
            needed.add(name)
            real = self._lookup(nodes[name].drv_hash) if self._caches(name) else None
            if real is not None:
                hits[name] = real
            else:
                wanted.update(nodes[name].deps)
        return [n for n in order if n in needed], hits

    def excluded(self) -> dict[str, str]:
        """Steps skipped by a condition, and everything that depends on them."""
        out: dict[str, str] = {}
        for name in self.graph.order:
            if name in self.options.skip:
                out[name] = self.options.skip[name]
            else:
                off = [d for d in self.graph.nodes[name].deps if d in out]
                if off:
                    out[name] = f"dependency {off[0]} skipped"
        return out

    def dry_run(self) -> list[PlanEntry]:
        order, hits = self.plan()
        entries = []
        for name in order:
            node = self.graph.nodes[name]
            if name in hits:
                entries.append(PlanEntry(step=name, hit=True, key=node.drv_hash, why=""))
                continue
            why = self._miss_reason(name)
            if not why:
                rebuilt = [d for d in node.deps if d not in hits]
                why = ("not in the store" if not rebuilt else
                       f"not in the store; may still hit once {', '.join(rebuilt)} "
                       "rebuilt (early cutoff)")
            entries.append(PlanEntry(step=name, hit=False, key=node.drv_hash, why=why))
        return entries

    # -- the run ----------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.monotonic()
        created = time.time()
        order, hits = self.plan()
        self.emit(ev.Parsed(pipeline=self.pipeline, steps=len(self.graph.order),
                            groups=len(self.graph.levels), planned=tuple(order)))
        wanted = self.options.targets
        for name, why in self.excluded().items():
            if wanted is None or name in wanted:
                self._skipped(name, why)
        for name in order:  # derivation-hash hits: done before anything runs
            if name in hits:
                self._hit(name, hits[name], self.graph.nodes[name].drv_hash, "derivation")
        to_run = [n for n in order if n not in hits]
        sched = None
        run_dir = self.options.work_root / f"run-{os.getpid()}-{self.run_id}"
        try:
            if to_run:
                self._need_runtime()
                sweep_dead_runs(self.options.work_root)
                run_dir.mkdir(parents=True, exist_ok=True)
                self._run_dir = run_dir
                self._snapshot_inputs(to_run)
                deps = {n: self.graph.nodes[n].deps for n in to_run}
                max_parallel = self.options.max_parallel or os.cpu_count() or 1
                sched = schedule(to_run, deps, self._work, max_parallel=max_parallel,
                                 fail_fast=self.options.fail_fast, timeout=self.options.timeout,
                                 on_skip=self._skipped)
        finally:
            if run_dir.exists():
                try:
                    run_dir.rmdir()
                except OSError:
                    pass
            wall = time.monotonic() - started
            result = RunResult(run_id=self.run_id, steps=dict(self._results), wall=wall,
                               stop_reason=sched.stop_reason if sched else "",
                               interrupted=sched.interrupted if sched else False)
            self._record_run(result, created)
        results = [self._results.get(n) for n in self.graph.order]
        passed = [r for r in results if r and r.status == "passed"]
        self.emit(ev.Done(
            run_id=self.run_id, passed=len(passed),
            failed=sum(1 for r in results if r and r.status in ("failed", "cancelled")),
            skipped=sum(1 for r in results if r and r.status == "skipped"),
            cached=sum(1 for r in passed if r.cache == "HIT"),
            ran=sum(1 for r in results if r and r.cache == "MISS" and r.exit_status is not None),
            total=sum(r.duration for r in results if r and r.cache == "MISS"),
            wall=wall, cancelled=bool(result.stop_reason and not result.ok and
                                      result.stop_reason in ("interrupted", "pipeline timeout"))))
        return result

    def _need_runtime(self) -> None:
        if self.runtime is None:
            raise KataError("runtime.unavailable", "no container runtime to run steps with",
                            exit_code=1)

    def _set(self, result: StepResult, stack: tuple[str, ...] | None = None) -> None:
        with self._lock:
            self._results[result.name] = result
            if stack is not None:
                self._stacks[result.name] = stack

    def _deps_stack(self, name: str) -> tuple[str, ...]:
        """The artifact trees a step sees, bottom first: its dependencies' stacks, merged.

        Artifacts flow transitively (the overview's ``deploy`` runs the ``bin/app``
        that ``build`` made, through ``unit-test``): a step's stack is its
        dependencies' stacks in ``depends_on`` order, then its own output tree.
        """
        seen: dict[str, None] = {}
        for dep in self.graph.nodes[name].deps:
            for tree in self._stacks[dep]:
                seen.setdefault(tree)
        return tuple(seen)

    def _stack_with(self, base: tuple[str, ...], tree: str) -> tuple[str, ...]:
        if not tree or tree == self._empty() or tree in base:
            return base
        return base + (tree,)

    @staticmethod
    def _stack_digest(stack: tuple[str, ...]) -> str:
        # what a dependent's resolved hash sees of a dependency: everything it passes on
        return "sha256:" + hashlib.sha256("\0".join(("kata-stack/1",) + stack).encode()).hexdigest()

    def _hit(self, name: str, real: Any, key: str, source: str) -> None:
        meta = getattr(real, "meta", None) or {}
        produced_by = str(meta.get("run", ""))
        self.store.count(True)
        self.emit(ev.CacheChecked(step=name, hit=True, key=key, source=source,  # type: ignore[arg-type]
                                  produced_by=produced_by))
        stack = meta.get("stack")
        stack = tuple(stack) if stack is not None else self._stack_with((), real.outputs)
        self._set(StepResult(name=name, status="passed", cache="HIT",
                             drv_hash=self.graph.nodes[name].drv_hash, key=key,
                             duration=0.0, exit_status=real.exit_status, log=real.log or "",
                             outputs=real.outputs, produced_by=produced_by), stack)
        self.emit(ev.StepPassed(step=name, duration=0.0, cached=True))

    def _skipped(self, name: str, reason: str) -> None:
        self._set(StepResult(name=name, status="skipped",
                             drv_hash=self.graph.nodes[name].drv_hash, message=reason))
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
            digest = inputs.digest
            if digest not in by_digest:
                by_digest[digest] = self._input_tree(inputs)
            self._snapshots[name] = by_digest[digest]

    def _input_tree(self, inputs: Any) -> str:
        key = hashlib.sha256(f"kata-inputs/1\0{inputs.digest}".encode()).hexdigest()
        known = self._lookup(key)
        if known is not None and self.store.has_blob(known.outputs):
            return known.outputs
        paths = tuple(f.path for f in inputs.files)
        tree = self._put_tree(self.options.repo_root, paths)
        self._put_realisation(key, tree, log=self._empty_log(), exit_status=0, duration=0.0)
        return tree

    def _put_tree(self, root: Path, paths: Sequence[str]) -> str:
        if not paths:
            return self._empty()
        return self.store.put_tree(root, paths=tuple(paths))

    def _empty(self) -> str:
        if not self._empty_tree:
            empty = _empty_dir()
            try:
                self._empty_tree = self.store.put_tree(empty, paths=())
            finally:
                empty.rmdir()
        return self._empty_tree

    def _empty_log(self) -> str:
        if not self._empty_log_digest:
            self._empty_log_digest = self.store.put_blob(b"")
        return self._empty_log_digest

    def _put_realisation(self, key: str, outputs: str, *, log: str, exit_status: int,
                         duration: float, meta: Mapping[str, Any] | None = None) -> Any:
        from store import Realisation

        real = Realisation(outputs=outputs, log=log, exit_status=exit_status, duration=duration,
                           host=os.uname().nodename, created=time.time(), meta=dict(meta or {}))
        self.store.put_realisation(key, real)
        return real

    # -- one step -------------------------------------------------------------------

    def _work(self, name: str, cancel: Cancel) -> bool:
        node = self.graph.nodes[name]
        resolved = ""
        if all(d in self._stacks for d in node.deps):
            resolved = node.resolved_hash({d: self._stack_digest(self._stacks[d])
                                           for d in node.deps})
        if self._caches(name) and resolved:
            real = self._lookup(resolved)
            if real is not None:
                # early cutoff; remember it under the derivation hash too
                self.store.put_realisation(node.drv_hash, real)
                self._put_derivation(node)
                self._hit(name, real, resolved, "resolved")
                return True
        self.store.count(False)
        self.emit(ev.CacheChecked(step=name, hit=False, key=resolved or node.drv_hash,
                                  reason=self._miss_reason(name) or "not in the store"))
        return self._execute(name, node, resolved, cancel)

    def _unpacked(self, tree: str) -> Path:
        """The store's unpacked copy; dependents starting together wait for one extraction
        instead of each extracting the same tree."""
        with self._lock:
            lock = self._unpack_locks.setdefault(tree, threading.Lock())
        with lock:
            return Path(self.store.unpacked(tree))

    def _merged(self, trees: tuple[str, ...]) -> Path:
        """The store's merged directory of a block of a stack; dependents starting
        together wait for one build (the store unpacks the trees it needs)."""
        key = "\0".join(trees)
        with self._lock:
            lock = self._unpack_locks.setdefault(key, threading.Lock())
        with lock:
            return Path(self.store.merged(trees))

    def _layers(self, name: str, node: Any) -> list[Path]:
        empty = self._empty()
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
        cache_tree = self._cache_tree(node)
        if cache_tree and cache_tree != empty:
            layers.append(self._unpacked(cache_tree))
        snapshot = self._snapshots[name]
        if snapshot != empty:
            layers.append(self._unpacked(snapshot))
        return layers

    # cache.paths ----------------------------------------------------------------

    def _cache_key(self, node: Any) -> str:
        step = node.step
        if not step.cache.paths:
            return ""
        h = hashlib.sha256(b"kata-cache-paths/1\0")
        h.update(image_of(node).encode() + b"\0")
        for p in step.cache.paths:
            h.update(b"p\0" + p.encode() + b"\0")
        root = self.options.repo_root
        for kf in step.cache.key_files:
            h.update(b"k\0" + kf.encode() + b"\0")
            try:
                h.update(hashlib.sha256((root / kf).read_bytes()).digest())
            except FileNotFoundError:
                h.update(b"missing")
        return h.hexdigest()

    def _cache_tree(self, node: Any) -> str:
        key = self._cache_key(node)
        if not key or not self.options.use_cache:
            return ""
        real = self._lookup(key)
        return real.outputs if real is not None else ""

    def _save_cache(self, node: Any, workdir: Path) -> None:
        key = self._cache_key(node)
        if not key or self._lookup(key) is not None:
            return  # saved once per key, like the key it is named by
        paths = [p for p in node.step.cache.paths if os.path.lexists(workdir / p.rstrip("/"))]
        tree = self._put_tree(workdir, [p.rstrip("/") for p in paths])
        self._put_realisation(key, tree, log=self._empty_log(), exit_status=0, duration=0.0)

    # running ---------------------------------------------------------------------

    def _execute(self, name: str, node: Any, resolved: str, cancel: Cancel) -> bool:
        step = node.step
        started = time.monotonic()
        log = tempfile.SpooledTemporaryFile(max_size=_LOG_MEMORY)
        log_lock = threading.Lock()
        # each service's output: its own log, stored as a blob (`kata logs --service`)
        service_logs = {s.name: tempfile.SpooledTemporaryFile(max_size=_LOG_MEMORY)
                        for s in step.services}
        service_digests: tuple[tuple[str, str], ...] = ()
        exit_status: int | None = None
        message = ""
        reason = ""
        outputs = ""
        try:
            try:
                ws = Workspace(self._run_dir, self._layers(name, node))
            except (KataError, StoreError) as err:
                message, reason = err.message, err.reason
                ws = None
            if ws is not None:
                with ws:
                    try:
                        exit_status = self._run_container(name, node, ws.path, cancel, log,
                                                          log_lock, service_logs)
                    except KataError as err:  # e.g. a missing secret, an image not found
                        message, reason = err.message, err.reason
                    if reason:
                        pass
                    elif exit_status == 0:
                        missing = [a for a in step.artifacts
                                   if not os.path.lexists(ws.path / a.rstrip("/"))]
                        if missing:
                            reason = "artifact.missing"
                            message = (f"declared artifact {missing[0]} was not produced"
                                       if len(missing) == 1 else
                                       f"declared artifacts {', '.join(missing)} were not produced")
                        else:
                            try:
                                outputs = self._put_tree(ws.path,
                                                         [a.rstrip("/") for a in step.artifacts])
                                if self.options.record:
                                    self._save_cache(node, ws.path)
                            except StoreError as err:  # e.g. a FIFO among the artifacts
                                reason, message = err.reason, f"artifacts: {err.message}"
                    elif cancel.is_set():
                        reason, message = "step.cancelled", f"cancelled ({cancel.reason})"
                    elif exit_status == TIMEOUT_EXIT and step.timeout is not None:
                        reason, message = "step.timeout", f"timed out after {step.timeout}"
                    else:
                        reason = "step.failed"
            message = self._masker.mask(message.encode()).decode("utf-8", "replace")
            if message and reason != "step.failed":
                line = f"kata: {message}"
                log.write(line.encode() + b"\n")
            duration = time.monotonic() - started
            if log.tell() == 0:  # nothing written (a quiet step): the run's one empty log
                log_digest = self._empty_log()
            else:
                log.seek(0)
                log_digest = self.store.put_blob(log)
            digests = []
            for sname, slog in service_logs.items():
                slog.seek(0)
                digests.append((sname, self.store.put_blob(slog)))
            service_digests = tuple(digests)
        finally:
            log.close()
            for slog in service_logs.values():
                slog.close()
        ok = exit_status == 0 and not reason
        if ok:
            stack = self._stack_with(self._deps_stack(name), outputs)
            # "objects": gc keeps every tree a dependent will be handed, not only our own
            meta = {"run": self.run_id, "step": name, "pipeline": self.pipeline,
                    "stack": list(stack), "objects": list(stack)}
            self._put_derivation(node)
            if self.options.record and step.cacheable:
                for key in dict.fromkeys(k for k in (node.drv_hash, resolved) if k):
                    self._put_realisation(key, outputs, log=log_digest, exit_status=0,
                                          duration=duration, meta=meta)
            self._set(StepResult(name=name, status="passed", cache="MISS",
                                 drv_hash=node.drv_hash, key=resolved or node.drv_hash,
                                 duration=duration, exit_status=0, log=log_digest,
                                 outputs=outputs, produced_by=self.run_id,
                                 service_logs=service_digests), stack)
            self.emit(ev.StepPassed(step=name, duration=duration))
            return True
        status = "cancelled" if reason == "step.cancelled" else "failed"
        self._set(StepResult(name=name, status=status, cache="MISS", drv_hash=node.drv_hash,
                             key=resolved or node.drv_hash, duration=duration,
                             exit_status=exit_status, log=log_digest, message=message,
                             service_logs=service_digests))
        self.emit(ev.StepFailed(step=name, exit_status=exit_status, duration=duration,
                                message=message, reason=reason or "step.failed"))
        return False

    def _put_derivation(self, node: Any) -> None:
        # the record (derivation + input file list + dependency names) is what `kata why` diffs
        self.store.put_derivation(node.drv_hash, node.record().encode())

    def _run_container(self, name: str, node: Any, workdir: Path, cancel: Cancel,
                       log: Any, log_lock: threading.Lock,
                       service_logs: dict[str, Any] | None = None) -> int:
        step = node.step
        values: dict[str, str] = {}
        for secret in dict.fromkeys([*step.secrets, *(x for s in step.services
                                                        for x in s.secrets)]):
            if secret not in self.options.secrets:
                raise KataError("secret.missing", f"step {name} needs the secret {secret}: "
                                f"set ${secret} or pass --secret {secret}=...", obj=name)
            if not is_env_name(secret):
                raise KataError("secret.bad_name", f"step {name}: {secret!r} is not a valid "
                                "environment variable name", obj=name)
            values[secret] = self.options.secrets[secret]
        with contextlib.ExitStack() as stack:
            dirs: dict[str, Path] = {}  # "" = the step's; else a service's own
            for owner, names in (("", step.secrets),
                                 *((s.name, s.secrets) for s in step.services)):
                if owner and not names:
                    continue
                chosen = {n: values[n] for n in names}
                if chosen:
                    dirs[owner] = stack.enter_context(SecretsDir(self._run_dir, chosen)).path
            services = tuple(self._service_spec(node, s, dirs.get(s.name))
                             for s in step.services)
            return self._start(name, node, workdir, dirs.get(""), cancel, log, log_lock,
                               services, service_logs or {})
        raise AssertionError("unreachable")  # pragma: no cover

    def _service_spec(self, node: Any, service: Any, secrets_dir: Path | None) -> ServiceSpec:
        """A service as the runtime runs it: the image the compiler hashed, its command."""
        digest = next((s.image for s in node.derivation.services if s.name == service.name),
                      None)
        if not digest:
            raise KataError("image.unresolved", f"step {node.step.name}: service "
                            f"{service.name}'s image {service.image} has no resolved digest",
                            obj=node.step.name)
        mounts: tuple[Mount, ...] = ()
        argv: tuple[str, ...] = service.entrypoint
        if service.commands:
            script = _shell_script(service.commands)
            if secrets_dir is not None:
                script = SECRETS_PRELUDE + script
            argv = ("/bin/sh", "-c", script)
        if secrets_dir is not None:  # files only, for a service without commands
            mounts = (Mount(kind="bind", target=SECRETS_TARGET, source=str(secrets_dir),
                            readonly=True),)
        ready = None
        if service.ready is not None:
            ready = Readiness(kind=service.ready.kind, target=service.ready.target,
                              timeout=service.ready.timeout.seconds)
        return ServiceSpec(name=service.name, image=str(service.image.pin(digest)), argv=argv,
                           env=dict(service.env), mounts=mounts, ready=ready)

    def _start(self, name: str, node: Any, workdir: Path, secrets_dir: Path | None,
               cancel: Cancel, log: Any, log_lock: threading.Lock,
               services: tuple[ServiceSpec, ...] = (),
               service_logs: dict[str, Any] | None = None) -> int:
        step = node.step
        env = dict(self.options.env)
        env.update(dict(step.env))
        mounts = [Mount(kind="bind", target=step.workdir, source=str(workdir))]
        script = _shell_script(step.commands)
        if secrets_dir is not None:
            # values reach the step through files, never through the spec containerd stores
            mounts.append(Mount(kind="bind", target=SECRETS_TARGET, source=str(secrets_dir),
                                readonly=True))
            script = SECRETS_PRELUDE + script
        timeout = step.timeout.seconds if step.timeout is not None else None
        spec = StepSpec(
            image=image_of(node),
            argv=("/bin/sh", "-c", script),
            env=env,
            workdir=step.workdir,
            user=step.user or "0:0",  # the runtime takes uid[:gid]; no user: root
            mounts=tuple(mounts),
            network=step.network,  # type: ignore[arg-type]
            timeout=timeout,
            labels={"kata.run": self.run_id, "kata.step": name},
            services=services,
        )
        masker = self._masker
        service_logs = service_logs or {}

        def service_sink(service: str, stream: str, data: bytes) -> None:
            # service output arrives line by line; every form of every value is masked
            text = masker.mask(data).decode("utf-8", errors="replace")
            with log_lock:
                service_logs[service].write(text.encode() + b"\n")

        command = masker.mask(" && ".join(step.commands).encode()).decode("utf-8", "replace")
        self.emit(ev.StepStarted(step=name, command=command))
        assert self.runtime is not None
        if cancel.is_set():
            return CANCEL_EXIT
        sink = _MaskedOutput(self, name, log, log_lock)
        try:
            if services:
                return self.runtime.run(spec, sink, cancel, service_sink=service_sink)
            return self.runtime.run(spec, sink, cancel)
        finally:
            sink.close()  # what each stream's masker held back (never a partial value)

    # -- history ----------------------------------------------------------------------

    def _record_run(self, result: RunResult, created: float) -> None:
        status = ("passed" if result.ok else
                  "interrupted" if result.interrupted else "failed")
        self.store.put_run({
            "id": self.run_id,
            "pipeline": self.pipeline,
            "commit": self.options.git_commit,
            "branch": self.options.git_branch,
            "event": self.options.git_event,
            "tag": self.options.git_tag,
            "started": created,
            "wall": result.wall,
            "status": status,
            "targets": list(self.options.targets or ()),
            "steps": [r.record() for n in self.graph.order
                      if (r := result.steps.get(n)) is not None],
        })
