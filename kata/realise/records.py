"""What a run writes to the store, and the records it reads besides the plan's hits:
input snapshots, cache directories (per scope), step realisations (under both keys, in
the run's scope), derivation records for ``kata why``, and the run record.

Keys come from ``kata.keys``; reads go through the run's ``Lookup`` (scoped, healing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kata import keys
from kata.errors import KataError
from kata.inputs import mismatch
from kata.realise.lookup import Lookup
from kata.realise.results import RealiseOptions, RunResult
from store import Realisation, Run, Store, StoreError

if TYPE_CHECKING:
    from kata.compile import Node
    from kata.inputs import InputSet
    from kata.remote.actioncache import RemoteRecord
    from kata.remote.cache import RemoteCache
    from kata.realise.reports import TestReport


class Records:
    """The run's writes (and snapshot/cache reads) for ``run_id`` of ``pipeline``."""

    def __init__(self, store: Store, lookup: Lookup, options: RealiseOptions, *, run_id: str,
                 pipeline: str, remote: "RemoteCache | None" = None,
                 nodes: "Mapping[str, Node] | None" = None) -> None:
        self.store, self.lookup, self.options = store, lookup, options
        self.remote = remote
        self._nodes = nodes or {}  # the graph's nodes: what a step's stack holds
        self._secret_below: dict[int, frozenset[str]] = {}  # id(node) -> secret names
        self.run_id, self.pipeline = run_id, pipeline
        self._empty_tree = ""
        self._empty_log = ""
        self.recorded: Run | None = None  # the run record, once written
        self._host = os.uname().nodename
        self._derived: set[str] = set()  # derivation records written by this run

    # -- trees --------------------------------------------------------------------

    def empty_tree(self) -> str:
        if not self._empty_tree:
            empty = Path(tempfile.mkdtemp(prefix="kata-empty-"))
            try:
                self._empty_tree = self.store.put_tree(empty, paths=())
            finally:
                empty.rmdir()
        return self._empty_tree

    def empty_log(self) -> str:
        """The digest of the empty log (a quiet step's, a record's without one), stored once."""
        if not self._empty_log:
            self._empty_log = self.store.put_blob(b"")
        return self._empty_log

    def put_tree(self, root: Path, paths: Sequence[str],
                 dir_links: dict[str, str] | None = None) -> str:
        """``paths`` under ``root`` as one tree (the empty tree for none); ``dir_links``
        as ``store.Store.put_tree`` takes it."""
        if not paths:
            return self.empty_tree()
        return self.store.put_tree(root, paths=tuple(paths), dir_links=dir_links)

    def _record(self, outputs: str, *, kind: str, step: str = "", log: str = "",
                duration: float = 0.0, stack: tuple[str, ...] = (), scope: str = "",
                host: str | None = None) -> Realisation:
        return Realisation(outputs=outputs, log=log or self.empty_log(), exit_status=0,
                           duration=duration, host=host or self._host, created=time.time(),
                           kind=kind,
                           run=self.run_id, pipeline=self.pipeline, step=step, stack=stack,
                           scope=scope)

    # -- input snapshots ----------------------------------------------------------

    def input_tree(self, inputs: "InputSet") -> str:
        """The stored tree of an input set: the recorded snapshot when intact (not under
        ``--no-cache``), else taken now from the repository (``keys.input_snapshot_key``).

        A snapshot taken now is checked against the digests the compiler hashed, as the
        store packs it (``put_tree(manifest=)``): a file edited in between would hand the
        step bytes its key does not cover. A mismatch raises ``inputs.changed`` (exit 1,
        naming the file) and records nothing."""
        key = keys.input_snapshot_key(inputs.digest)
        if self.options.use_cache:
            known = self.lookup.shared(key)
            if known.record is not None:
                return known.record.outputs
        paths = inputs.paths
        if not paths:
            return self.empty_tree()
        stored: dict[str, tuple[str, str]] = {}
        try:
            tree = self.store.put_tree(self.options.repo_root, paths, manifest=stored)
            changed = mismatch(inputs, stored)
        except StoreError as err:  # a file gone, shrunk or turned into a directory's parent
            if err.reason not in ("store.tree.missing_path", "store.tree.changed",
                                  "store.tree.bad_path"):
                raise
            changed = err.obj or paths[0]
        if changed is not None:
            raise KataError("inputs.changed", f"input {changed} changed after it was hashed "
                            "(a step must see exactly the bytes its key covers): run again; "
                            "if it is written during every run (a log, kata's own output "
                            "redirected into the repository), leave it out with .gitignore, "
                            "a .kataignore pattern or the step's inputs:",
                            obj=changed, exit_code=1)
        self.store.put_realisation(key, self._record(tree, kind="inputs"))
        return tree

    def forget_input_tree(self, inputs: "InputSet") -> None:
        self.store.delete_realisation(keys.input_snapshot_key(inputs.digest))

    # -- cache directories --------------------------------------------------------

    def cache_key(self, node: "Node") -> str:
        """The step's cache-directory key before scoping ("" without ``cache.paths``)."""
        if not node.step.cache.paths:
            return ""
        d = node.derivation
        assert d.image is not None
        # the secrets of the step and of every step below it: a dependency's artifacts
        # (an .npmrc, a docker config) are in the step's workspace and can end up in its
        # cache directory, which only a run that also held those secrets may restore
        return keys.cache_dir_key(pipeline=d.pipeline, step=node.step.name, image=d.image,
                                  paths=d.cache_paths, key_files=d.key_files,
                                  secrets=sorted(self.secrets_below(node)))

    def cache_tree(self, node: "Node") -> str:
        """The tree to restore ``cache.paths`` from ("" for none, or under --no-cache)."""
        key = self.cache_key(node)
        if not key or not self.options.use_cache:
            return ""
        found = self.lookup.cache_dir(key)
        return found.record.outputs if found.record is not None else ""

    def save_cache(self, node: "Node", workdir: Path) -> None:
        """Record the step's ``cache.paths`` in the run's scope, once per key and scope."""
        key = self.cache_key(node)
        if not key:
            return
        label = self.options.scope.label()
        record_key = keys.scoped_key(label, key)
        if self.lookup.shared(record_key).record is not None:
            return
        paths = [p.rstrip("/") for p in node.step.cache.paths
                 if os.path.lexists(workdir / p.rstrip("/"))]
        tree = self.put_tree(workdir, paths)
        self.store.put_realisation(record_key, self._record(tree, kind="cache-dir",
                                                            step=node.step.name, scope=label))

    # -- step results -------------------------------------------------------------

    def derivation(self, node: "Node") -> None:
        """The derivation record (derivation, input files, dependency names) `kata why`
        diffs against."""
        assert node.drv_hash is not None
        if node.drv_hash in self._derived:  # written earlier in this run (records are immutable)
            return
        self.store.put_derivation(node.drv_hash, node.record().encode())
        self._derived.add(node.drv_hash)

    def step_passed(self, node: "Node", *, resolved: str, outputs: str, log: str,
                    duration: float, stack: tuple[str, ...], report: str = "",
                    host: str | None = None) -> None:
        """Record a step that passed under its derivation and resolved hashes, in scope
        (``report``: its test report's blob, "" for none; the realisation names it;
        ``host``: the machine that ran it, None for this one).

        One record file, hard-linked under the second key (``Store.put_realisations``);
        the derivation record is normally there already (``_realise_step`` wrote it before
        the step ran). This returns when both are durable. The remote cache's upload, if
        any, is queued after them (it runs in the background).
        """
        self.derivation(node)
        if not (self.options.record and node.step.cacheable):
            return
        scope = self.options.scope
        real = self._record(outputs, kind="step", step=node.step.name, log=log,
                            duration=duration, stack=stack,
                            scope="" if scope.trusted else scope.label(), host=host)
        if report:
            real = dataclasses.replace(real, report=report)
        step_keys = tuple(dict.fromkeys(k for k in (node.drv_hash, resolved) if k))
        self.store.put_realisations([scope.realisation_key(k) for k in step_keys], real)
        if self.shares(node):
            assert self.remote is not None
            self.remote.upload(self.store, step_keys, real)

    def shares(self, node: "Node") -> bool:
        """Whether this step's results go to the remote cache: never for an untrusted run
        (its results stay in its quarantine), never for a step that declares a secret (itself
        or in a service: its outputs could hold a value), nor for one that depends on such a
        step, directly or not (its artifact stack, uploaded with it, holds those outputs),
        never without a remote."""
        return (self.remote is not None and self.options.scope.trusted
                and not self.secret_below(node))

    def secret_below(self, node: "Node") -> bool:
        """Whether ``node`` or any step it depends on (transitively) declares a secret."""
        return bool(self.secrets_below(node))

    def secrets_below(self, node: "Node") -> frozenset[str]:
        """The secret names ``node`` and every step it depends on (transitively) declare,
        themselves or in a service."""
        memo = self._secret_below
        todo = [node]  # depth first without recursion: a chain may be thousands deep
        while todo:
            top = todo[-1]
            if id(top) in memo:
                todo.pop()
                continue
            deps = [self._nodes[d] for d in top.deps if d in self._nodes]
            waiting = [d for d in deps if id(d) not in memo]
            if waiting:
                todo.extend(waiting)
                continue
            todo.pop()
            memo[id(top)] = frozenset(top.step.secrets).union(
                *(s.secrets for s in top.step.services), *(memo[id(d)] for d in deps))
        return memo[id(node)]

    def remote_early_cutoff(self, node: "Node", rec: "RemoteRecord", *,
                            resolved: str = "") -> None:
        """A resolved-hash hit in the remote (under ``resolved``): tell the remote it stands
        for this derivation hash too (the next machine hits without rebuilding anything;
        queued for a later run if the remote fails now), and keep the derivation record for
        ``kata why``. The local record follows once its objects are fetched
        (``Realiser._localise``)."""
        self.derivation(node)
        if self.shares(node) and node.drv_hash:
            assert self.remote is not None
            self.remote.alias(node.drv_hash, rec, resolved=resolved)

    def report(self, real: Realisation) -> "TestReport | None":
        """The test report a realisation names (None: none, or unreadable: a hit is not
        lost for its report)."""
        return read_report(self.store, real.report)

    def early_cutoff(self, node: "Node", real: Realisation) -> None:
        """A resolved-hash hit: remember it under the derivation hash too."""
        assert node.drv_hash is not None
        self.store.put_realisation(self.options.scope.realisation_key(node.drv_hash), real)
        self.derivation(node)

    def drop_step(self, *step_keys: str) -> None:
        """Forget a step's results (a damaged tree behind them) under every key read."""
        for key in step_keys:
            if key:
                for scoped in self.options.scope.realisation_keys(key):
                    self.store.delete_realisation(scoped)

    def run(self, result: RunResult, order: Sequence[str], *, started: float,
            needs: Mapping[str, Sequence[str]] | None = None) -> None:
        """The run record: per step in pipeline order, also for failed and interrupted
        runs; ``needs``: each step's dependencies (names), kept in its record."""
        needs = needs or {}
        status = ("passed" if result.ok else
                  "interrupted" if result.interrupted else "failed")
        o = self.options
        run = Run(
            id=self.run_id, pipeline=self.pipeline, commit=o.git_commit, branch=o.git_branch,
            event=o.git_event, tag=o.git_tag, scope=o.scope.label(), started=started,
            wall=result.wall, status=status, targets=tuple(o.targets or ()),
            steps=tuple(dataclasses.replace(r.record(), needs=tuple(needs.get(n, ())))
                        for n in order if (r := result.steps.get(n)) is not None))
        self.store.put_run(run)
        self.recorded = run  # what the store now holds (the no-op record copies it)


def read_report(store: Store, digest: str) -> "TestReport | None":
    """The test report stored as blob ``digest`` ("" or unreadable: None, logged)."""
    if not digest:
        return None
    from kata.realise.reports import TestReport

    try:
        return TestReport.decode(store.read_blob(digest))
    except (StoreError, ValueError, OSError) as err:
        logging.getLogger("kata.realise").warning("test report %s unreadable: %s", digest, err)
        return None
