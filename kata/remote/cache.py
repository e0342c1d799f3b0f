"""The remote cache as a second level behind the local store (issue 13, item 1).

    remote = RemoteCache(config, warn=print_one_line)
    remote.prefetch(keys)                   # the plan's derivation hashes, asked concurrently
    rec = remote.lookup(key)                # RemoteRecord | None (after a local miss)
    remote.fetch(store, rec)                # its trees and log into the local store (lazy:
                                            #   only when a step that runs needs them)
    remote.upload(store, keys, realisation) # after a step passed and was recorded locally
                                            #   (sent by one background thread, in order)
    remote.flush()                          # the run's end: wait for the uploads
    remote.alias(key, rec)                  # an early-cutoff hit under another key

A remote that fails (down, slow past ``timeout``, refusing, answering nonsense) is left for
the rest of the run after ONE warning line through ``warn``; lookups then miss and uploads
are dropped, so a run never fails because of it. ``fetch`` is the one call that raises
(RemoteError), because its caller must then build the step locally instead.

What goes to the remote is decided by the caller (``kata.realise``): only realisations of
trusted runs, of steps that declare no secret (SECURITY.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from kata.remote import trees as remote_trees
from kata.remote.actioncache import (
    ActionCache, RemoteRecord, cas_blobs, encode_record, record_digest, result_for,
)
from kata.remote.cas import Digest, RemoteError, connect, digest_of
from kata.remote.config import RemoteConfig
from store import Realisation, Store, StoreError

_IN_FLIGHT = 8  # GetActionResult calls outstanding at once during a prefetch (BuildGrid
#                refuses calls past its thread pool, 5 per CPU by default)


class RemoteCache:
    """One run's view of a REAPI cache (thread-safe: steps upload from their threads)."""

    def __init__(self, config: RemoteConfig, *, warn: Callable[[str], None]) -> None:
        self.config = config
        self._remote = connect(config)
        self._ac = ActionCache(self._remote)
        self._warn = warn
        self._lock = threading.Lock()
        self._down = ""
        self._ready = False
        self._known: dict[str, RemoteRecord | None] = {}
        self._trees: dict[str, tuple[Digest, Digest]] = {}  # uploaded or seen this run
        # uploads go in order on one thread: a step does not wait for its upload, and a
        # stack tree an earlier upload sent is known to the later ones (_trees)
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kata-remote")
        self._pending: list[Future[None]] = []
        self.stats = {"lookups": 0, "hits": 0, "uploads": 0, "fetched_trees": 0}

    @property
    def enabled(self) -> bool:
        """False once the remote failed in this run."""
        return not self._down

    def close(self) -> None:
        """Wait for the uploads, then close the channel."""
        self.flush()
        self._uploader.shutdown(wait=True)
        self._remote.close()

    def flush(self) -> None:
        """Wait until every upload asked for so far is done (or dropped)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def _fail(self, err: RemoteError) -> None:
        with self._lock:
            if self._down:
                return
            self._down = err.message
        first = err.message.splitlines()[0] if err.message else err.reason
        self._warn(f"remote cache {self.config.url} unavailable ({first[:200]}); going on "
                   "with the local store only")

    def _connect(self) -> None:
        if not self._ready:
            self._remote.cas.capabilities()
            self._ready = True

    # -- reading -------------------------------------------------------------------

    def prefetch(self, keys: Iterable[str]) -> None:
        """Ask for many keys at once (the plan then reads the answers from memory)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._known]
        if not todo or not self.enabled:
            return
        try:
            self._connect()
            results = {}
            pending: list = []  # a sliding window of _IN_FLIGHT calls
            for k in todo:
                pending.append((k, self._ac.get_future(k)))
                if len(pending) >= _IN_FLIGHT:
                    key, fut = pending.pop(0)
                    results[key] = self._ac.answer(fut, key)
            for key, fut in pending:
                results[key] = self._ac.answer(fut, key)
            # servers that do not inline the record file (BuildGrid): one batched read
            wanted = [where[0] for r in results.values() if r is not None
                      and (where := record_digest(r)) is not None and not where[1]]
            records = self._remote.cas.read_many(wanted) if wanted else {}
            for key, result in results.items():
                self._known[key] = self._ac.decode(result, records) if result is not None else None
        except RemoteError as err:
            self._fail(err)

    def lookup(self, key: str) -> RemoteRecord | None:
        """The record the remote holds for ``key`` (None: a miss, or the remote is down)."""
        if not self.enabled:
            return None
        with self._lock:
            self.stats["lookups"] += 1
        if key not in self._known:
            try:
                self._connect()
                self._known[key] = self._ac.get(key)
            except RemoteError as err:
                self._fail(err)
                return None
        found = self._known[key]
        if found is not None:
            with self._lock:
                self.stats["hits"] += 1
        return found

    def fetch(self, store: Store, rec: RemoteRecord) -> None:
        """Bring every object of ``rec`` (its trees, its log) into ``store``, so that its
        realisation can be recorded there. RemoteError when the remote fails (it is then
        left for the rest of the run) or hands back other bytes."""
        if not self.enabled:
            raise RemoteError("remote.unavailable", f"the remote cache was left: {self._down}")
        try:
            for tree, tree_digest in rec.trees():
                if not store.has_blob(tree):
                    remote_trees.download_tree(self._remote.cas, store, tree, tree_digest)
                    with self._lock:
                        self.stats["fetched_trees"] += 1
            real = rec.realisation
            if real.log and rec.log is not None and not store.has_blob(real.log):
                data = self._remote.cas.read_many([rec.log])[rec.log.hash]
                if store.put_blob(data) != real.log:
                    raise RemoteError("remote.bad_answer", f"log {real.log} does not match")
            self._fetch_report(store, rec)
        except RemoteError as err:
            self._fail(err)
            raise

    def fetch_report(self, store: Store, rec: RemoteRecord) -> None:
        """Bring ``rec``'s test report blob (small) into ``store``, so a hit shows its
        totals without fetching anything else. Never raises: a failing remote is left for
        the run (one warning) and the hit shows no totals."""
        if not self.enabled:
            return
        try:
            self._fetch_report(store, rec)
        except RemoteError as err:
            self._fail(err)

    def _fetch_report(self, store: Store, rec: RemoteRecord) -> None:
        real = rec.realisation
        if real.report and rec.report is not None and not store.has_blob(real.report):
            data = self._remote.cas.read_many([rec.report])[rec.report.hash]
            if store.put_blob(data) != real.report:
                raise RemoteError("remote.bad_answer", f"test report {real.report} does not match")

    # -- writing -------------------------------------------------------------------

    def upload(self, store: Store, keys: Sequence[str], real: Realisation) -> None:
        """Queue the upload of ``real`` under ``keys`` (see ``upload_now``); returns at once."""
        if not self.enabled or not keys:
            return
        fut = self._uploader.submit(self.upload_now, store, tuple(keys), real)
        with self._lock:
            self._pending.append(fut)

    def upload_now(self, store: Store, keys: Sequence[str], real: Realisation) -> None:
        """Put ``real`` (already recorded in ``store``) under each of ``keys``: its trees as
        REAPI Directory trees, its log, the record, and one ActionResult per key. Blobs the
        remote has are not sent again (FindMissingBlobs). Never raises: a failure of the
        remote leaves it for the run (one warning); a tree REAPI cannot name (a name that
        is not UTF-8) stays local."""
        if not self.enabled or not keys:
            return
        try:
            self._connect()
            cas = self._remote.cas
            trees: dict[str, tuple[Digest, Digest]] = {}
            for tree in dict.fromkeys(t for t in (real.outputs, *real.stack) if t):
                known = self._trees.get(tree)
                if known is None:
                    up = remote_trees.upload_tree(cas, store, tree)
                    known = (up.tree_digest, up.root_digest)
                    with self._lock:
                        self._trees[tree] = known
                trees[tree] = known
            blobs = cas_blobs(tuple(keys))
            log = None
            if real.log:
                data = store.read_blob(real.log)
                log = digest_of(data)
                blobs[(log.hash, log.size_bytes)] = (log, data)
            report = None
            if real.report:  # the test report: a host that hits shows the same totals
                data = store.read_blob(real.report)
                report = digest_of(data)
                blobs[(report.hash, report.size_bytes)] = (report, data)
            record_bytes = encode_record(real, trees)
            record = digest_of(record_bytes)
            blobs[(record.hash, record.size_bytes)] = (record, record_bytes)
            missing = {(d.hash, d.size_bytes) for d in cas.find_missing(d for d, _ in blobs.values())}
            cas.upload({k: v for k, v in blobs.items() if k in missing})
            result = result_for(real, record=record, record_bytes=record_bytes, trees=trees,
                                log=log, report=report)
            for key in keys:
                self._ac.update(key, result)
            with self._lock:
                self.stats["uploads"] += 1
        except RemoteError as err:
            if err.reason == "remote.unsupported":
                return  # this result cannot be named in REAPI: it stays local
            self._fail(err)
        except StoreError:
            return  # the local copy went bad meanwhile: the local store heals it, not us

    def alias(self, key: str, rec: RemoteRecord) -> None:
        """Record ``rec``'s result under another key too (an early-cutoff hit found by the
        resolved hash, remembered under the derivation hash, for the next machine)."""
        if not self.enabled:
            return
        try:
            self._remote.cas.upload({k: v for k, v in cas_blobs((key,)).items()})
            self._ac.update(key, rec.result)
        except RemoteError as err:
            self._fail(err)
