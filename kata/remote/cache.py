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
    remote.resume(store)                    # send what earlier runs could not (background)
    remote.push_pending(store)              # the same, now (`kata remote push`): PushCounts

A remote that fails (down, slow past ``timeout``, refusing, answering nonsense) is left for
the rest of the run after ONE warning line through ``warn``; lookups then miss, so a run
never fails because of it. ``fetch`` is the one call that raises (RemoteError), because
its caller must then build the step locally instead. A remote that refuses only this host's
writes (PERMISSION_DENIED, UNIMPLEMENTED: a read-only client) stays in use for reading:
one warning, and writes (uploads, aliases, the bundle, the pending queue) stop for the run.
A remote that answers NOT_FOUND for a blob an entry names (``cas.evicted``: an LRU dropped
it) is not failing: ``fetch`` raises for that record only, which later lookups then miss.

With a ``state_dir`` (the store's), an upload is queued durably before it is tried
(``kata.remote.pending``) and forgotten once the remote holds it: what a run could not send
(the remote down, the run killed) is sent by the next run that reaches the remote
(``resume``) or by ``kata remote push``. The run's first call, GetCapabilities, gets
``connect_timeout`` (a remote that accepts connections and never answers costs that, not
``timeout``), and a timeout is remembered for ``backoff`` seconds (``kata.remote.backoff``):
the runs that follow skip the remote at once, saying so in their one warning line.

What goes to the remote is decided by the caller (``kata.realise``): only realisations of
trusted runs, of steps that declare no secret (SECURITY.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kata.remote import trees as remote_trees
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote.actioncache import (
    ActionCache, RemoteRecord, cas_blobs, encode_record, record_digest, result_for,
)
from kata.remote.backoff import FILE_NAME as BACKOFF_FILE, Backoff
from kata.remote.bundle import BUNDLE_PATH, bundle_action, bundle_key, decode_bundle, encode_bundle
from kata.remote.cas import Digest, RemoteError, connect, digest_of, evicted
from kata.remote.config import RemoteConfig
from kata.remote.pending import DIR_NAME as PENDING_DIR, Pending, PendingUploads
from store import Realisation, Store, StoreError

_IN_FLIGHT = 16  # GetActionResult calls outstanding at once during a prefetch (BuildGrid
#                 refuses calls past its thread pool, 5 per CPU by default: those are
#                 retried with backoff; 16 measured ~10% faster than 8 on 2 CPUs)
_PER_KEY = 0.005  # seconds a prefetch may take per key, past the remote's timeout
_WRITE_REFUSED = ("PERMISSION_DENIED", "UNIMPLEMENTED")  # a write this host may not make
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PushCounts:
    """What a drain of the pending queue did: ``sent`` entries the remote now holds,
    ``dropped`` ones that can never go (no longer in the local store, or not nameable in
    REAPI), ``left`` still queued (the remote failed: ``RemoteCache.down_reason``),
    ``busy``: another process was draining the queue, so this one sent nothing."""

    sent: int = 0
    dropped: int = 0
    left: int = 0
    busy: bool = False


class RemoteCache:
    """One run's view of a REAPI cache (thread-safe: steps upload from their threads)."""

    def __init__(self, config: RemoteConfig, *, warn: Callable[[str], None],
                 bundles: bool = True, state_dir: str | Path | None = None,
                 backoff: bool = True) -> None:
        """``bundles=False``: neither read nor write bundles (every key is asked on its
        own; the benchmark's baseline). ``state_dir``: the store's state directory, home
        of the pending queue and the back-off memo (None: neither). ``backoff=False``: ask
        the remote even while a recent timeout is remembered (``kata remote push``)."""
        self.config = config
        self._bundles = bundles
        self._remote = connect(config)
        self._ac = ActionCache(self._remote)
        self._warn = warn
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._down = ""
        self._no_writes = ""  # why the remote refuses this host's results ("": it takes them)
        self._ready = False
        self._queue = PendingUploads(Path(state_dir) / PENDING_DIR) if state_dir else None
        self._memo = Backoff(Path(state_dir) / BACKOFF_FILE,
                             remote=f"{config.url} {config.instance}") if state_dir else None
        self._honour_backoff = backoff
        self._known: dict[str, RemoteRecord | None] = {}
        # records a fetch found blobs of evicted (``cas.evicted``): misses from then on
        self._evicted: set[tuple[str, tuple[str, ...], str, str]] = set()
        self._trees: dict[str, tuple[Digest, Digest]] = {}  # uploaded or seen this run
        # uploads go in order on one thread: a step does not wait for its upload, and a
        # stack tree an earlier upload sent is known to the later ones (_trees)
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kata-remote")
        self._pending: list[Future[None]] = []
        # the bundle (kata.remote.bundle): the keys of the first prefetch, the ones its
        # bundle answered, and what this run learnt the remote holds (uploads, hits)
        self._bundle_keys: tuple[str, ...] | None = None
        self._bundled: set[str] = set()
        self._held: dict[str, RemoteRecord] = {}
        self._uploaded = False
        self.stats = {"lookups": 0, "hits": 0, "uploads": 0, "fetched_trees": 0, "bundled": 0,
                      "asked": 0, "resumed": 0}  # asked: GetActionResult calls sent;
        #                                          resumed: earlier runs' results sent

    @property
    def enabled(self) -> bool:
        """False once the remote failed in this run."""
        return not self._down

    @property
    def down_reason(self) -> str:
        """Why the remote was left in this run ("" while it is in use)."""
        return self._down

    def close(self) -> None:
        """Wait for the uploads, file the run's bundle if it adds anything, then close the
        channel."""
        self.flush()
        self._uploader.shutdown(wait=True)
        try:
            self.write_bundle()
        finally:
            self._remote.close()

    def write_bundle(self) -> None:
        """File the bundle of the first prefetch's keys (``kata.remote.bundle``): only by a
        run that uploaded something, only when it covers more keys than the one read.
        Never raises (a failure is the one warning)."""
        if not self.enabled or not self._uploaded or not self._bundle_keys or not self._bundles \
                or self._no_writes:
            return
        held = {k: r for k in self._bundle_keys
                if (r := self._held.get(k) or self._known.get(k)) is not None
                and _identity(r) not in self._evicted}
        if not held or set(held) <= self._bundled:
            return
        try:
            ka = bundle_action(bundle_key(self._bundle_keys))
            data = encode_bundle({k: _with_root(r) for k, r in held.items()})
            digest = digest_of(data)
            blobs = cas_blobs((), (ka,))
            blobs[(digest.hash, digest.size_bytes)] = (digest, data)
            cas = self._remote.cas
            missing = {(d.hash, d.size_bytes) for d in cas.find_missing(d for d, _ in blobs.values())}
            cas.upload({k: v for k, v in blobs.items() if k in missing})
            result = re_pb2.ActionResult(exit_code=0)
            result.output_files.append(re_pb2.OutputFile(path=BUNDLE_PATH, digest=digest))
            self._ac.update("", result, action=ka)
            self.stats["bundled"] = len(held)
        except RemoteError as err:
            if not self._writes_refused(err):
                self._fail(err)

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
            self._down = err.message or err.reason
        first = err.message.splitlines()[0] if err.message else err.reason
        if err.reason == "remote.deadline" and self._memo is not None:
            # it cost this run a timeout: the next runs skip it for a while
            down = self._memo.failed(first, seconds=self.config.backoff)
            if down is not None:  # `kata remote push` (which ignores it) is not told to push
                first = down.describe(push_hint=self._honour_backoff)
        if err.reason == "remote.bad_answer":
            # it answered, with bytes that are not what its entry names: not an outage
            self._warn(f"remote cache {self.config.url} handed back a corrupt or tampered "
                       f"entry ({first}); what needed it is rebuilt locally and the remote "
                       "is left for this run; its storage was damaged or written by someone "
                       "else: check the server's disk and who holds a token that may write "
                       "to it (SECURITY.md), then empty its CAS and action cache")
            return
        doctor = f"kata doctor --remote-cache {self.config.url}" + (
            f" --remote-instance {self.config.instance}" if self.config.instance else "")
        self._warn(f"remote cache {self.config.url} unavailable ({first}); going on "
                   f"with the local store only; `{doctor}` says what to fix")

    def _writes_refused(self, err: RemoteError) -> bool:
        """Whether ``err``, from a write, says the remote takes no results from this host
        (a read-only client: PERMISSION_DENIED, or UNIMPLEMENTED as BuildGrid answers with
        ``allow-updates: false``). Then writes stop for the run (one warning) and lookups
        go on; False for any other failure (the caller leaves the remote)."""
        if err.code not in _WRITE_REFUSED:
            return False
        with self._lock:
            first, self._no_writes = not self._no_writes, self._no_writes or err.message
        if first:
            self._warn(f"remote cache {self.config.url} refuses this host's results "
                       f"({err.message.splitlines()[0]}); they stay local; lookups go on")
        return True

    def _connect(self) -> None:
        """GetCapabilities once per run, within ``connect_timeout``; at once RemoteError
        remote.backoff while a recent timeout of this remote is remembered."""
        if self._ready:
            return
        with self._connect_lock:
            if self._ready:
                return
            if not self.enabled:
                raise RemoteError("remote.unavailable", self._down)
            if self._memo is not None and self._honour_backoff:
                down = self._memo.active()
                if down is not None:
                    raise RemoteError("remote.backoff", "timed out in an earlier run: "
                                      + down.describe())
            self._remote.cas.capabilities(timeout=min(self.config.connect_timeout,
                                                      self.config.timeout))
            self._ready = True
            if self._memo is not None:
                self._memo.clear()

    # -- reading -------------------------------------------------------------------

    def prefetch(self, keys: Iterable[str], *,
                 local: Callable[[str], bool] | None = None) -> None:
        """Ask for many keys at once (the plan then reads the answers from memory): first
        the bundle of exactly these keys (``kata.remote.bundle``: one call answers every
        key it covers), then the rest, ``_IN_FLIGHT`` GetActionResult calls at a time, the
        record files of the answers read in batches while later answers are awaited. The
        whole prefetch has one deadline, ``timeout`` + ``_PER_KEY`` per key: a remote that
        is slower is left (one warning) and every key it did not answer is a miss.
        ``keys``: every cacheable derivation hash of the graph (they name its bundle);
        ``local(key)``: the local store holds it, so it is not asked (lookups go local
        first; when every key is local the remote is not touched at all)."""
        wanted = list(dict.fromkeys(keys))
        if self._bundle_keys is None and wanted:
            self._bundle_keys = tuple(sorted(wanted))
        todo = [k for k in wanted if k not in self._known and not (local and local(k))]
        if not todo or not self.enabled:
            return
        deadline = time.monotonic() + self.config.timeout + _PER_KEY * len(todo)
        try:
            self._connect()
            if self._bundles and self._bundle_keys == tuple(sorted(wanted)):
                self._read_bundle(deadline)
                todo = [k for k in todo if k not in self._known]
            self._ask(todo, deadline)
        except RemoteError as err:
            self._fail(err)

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RemoteError("remote.deadline", "GetActionResult: DEADLINE_EXCEEDED: the "
                              "remote did not answer the plan's lookups in time")
        return min(left, self.config.timeout)

    def _read_bundle(self, deadline: float) -> None:
        assert self._bundle_keys is not None
        ka = bundle_action(bundle_key(self._bundle_keys))
        self.stats["asked"] += 1
        result = self._ac.answer(self._ac.get_future("", timeout=self._left(deadline), action=ka),
                                 "", action=ka)
        where = None
        if result is not None:
            where = next(((f.digest, f.contents) for f in result.output_files
                          if f.path == BUNDLE_PATH), None)
        if where is None:
            return
        digest, data = where
        if not data:
            try:
                data = self._remote.cas.read_many([digest])[digest.hash]
            except RemoteError as err:
                if not evicted(err):
                    raise
                return  # its keys are asked one by one
        records = decode_bundle(data)
        if records is None:
            return
        wanted = set(self._bundle_keys)
        found = {k: r for k, r in records.items() if k in wanted}
        self._known.update(found)
        self._bundled = set(found)
        self.stats["bundled"] = len(found)

    def _ask(self, todo: list[str], deadline: float) -> None:
        """GetActionResult for each of ``todo``, a window of ``_IN_FLIGHT`` at a time; the
        record files BuildGrid does not inline are read in batches on a second thread
        while the later answers come in. Fills ``_known`` in ``todo``'s order."""
        if not todo:
            return
        self.stats["asked"] += len(todo)
        results: dict[str, re_pb2.ActionResult | None] = {}
        reads: list[Future[dict[str, bytes]]] = []
        unread: list[Digest] = []
        unread_size = 0
        window: deque = deque()
        cas = self._remote.cas
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kata-remote-read") as pool:
            def take() -> None:
                nonlocal unread, unread_size
                key, fut = window.popleft()
                result = self._ac.answer(fut, key)
                results[key] = result
                where = record_digest(result) if result is not None else None
                if where is not None and not where[1] and where[0].size_bytes:
                    unread.append(where[0])
                    unread_size += where[0].size_bytes
                    if unread_size >= cas.batch_limit // 2 or len(unread) >= 256:
                        reads.append(pool.submit(cas.read_many, unread))
                        unread, unread_size = [], 0

            for key in todo:
                window.append((key, self._ac.get_future(key, timeout=self._left(deadline))))
                if len(window) >= _IN_FLIGHT:
                    take()
            while window:
                take()
            if unread:
                reads.append(pool.submit(cas.read_many, unread))
            records: dict[str, bytes] = {}
            for fut in reads:
                try:
                    records.update(fut.result(timeout=max(deadline - time.monotonic(), 0.001)))
                except RemoteError as err:  # one record file evicted: read one by one below
                    if not evicted(err):
                        raise
        checked: set[str] = set()
        for key in todo:
            result = results[key]
            self._known[key] = self._decode(result, records, checked) \
                if result is not None else None

    def _decode(self, result: re_pb2.ActionResult, records: dict[str, bytes] | None = None,
                checked: set[str] | None = None) -> RemoteRecord | None:
        """``ActionCache.decode``; None (a miss) when the record file was evicted."""
        try:
            return self._ac.decode(result, records, checked)
        except RemoteError as err:
            if not evicted(err):
                raise
            return None

    def lookup(self, key: str) -> RemoteRecord | None:
        """The record the remote holds for ``key`` (None: a miss, or the remote is down)."""
        if not self.enabled:
            return None
        with self._lock:
            self.stats["lookups"] += 1
        if key not in self._known:
            try:
                self._connect()
                with self._lock:
                    self.stats["asked"] += 1
                result = self._ac.answer(self._ac.get_future(key), key)
                self._known[key] = self._decode(result) if result is not None else None
            except RemoteError as err:
                self._fail(err)
                return None
        found = self._known[key]
        if found is not None and _identity(found) in self._evicted:
            found = None  # a fetch found its blobs evicted: rebuilt here, not asked again
        if found is not None:
            with self._lock:
                self.stats["hits"] += 1
        return found

    def fetch(self, store: Store, rec: RemoteRecord) -> None:
        """Bring every object of ``rec`` (its trees, its log) into ``store``, so that its
        realisation can be recorded there. RemoteError when the remote fails (it is then
        left for the rest of the run) or hands back other bytes; when it no longer holds
        one of them (``cas.evicted``: NOT_FOUND) only ``rec`` is lost: later lookups miss
        it and the remote stays in use."""
        if not self.enabled:
            raise RemoteError("remote.unavailable", f"the remote cache was left: {self._down}")
        try:
            for tree, tree_digest in rec.trees():
                if not store.has_blob(tree):
                    remote_trees.download_tree(self._remote.cas, store, tree, tree_digest,
                                               memo=True)
                    with self._lock:
                        self.stats["fetched_trees"] += 1
            self._fetch_log(store, rec)
            self._fetch_report(store, rec)
        except RemoteError as err:
            if evicted(err):
                with self._lock:
                    self._evicted.add(_identity(rec))
            else:
                self._fail(err)
            raise

    def fetch_log(self, store: Store, rec: RemoteRecord) -> bool:
        """Bring ``rec``'s log blob alone into ``store`` (`kata logs` of a hit no step of
        this host needed); False when the remote fails or no longer holds it. Never raises."""
        if not self.enabled:
            return False
        try:
            self._fetch_log(store, rec)
        except RemoteError as err:
            if not evicted(err):
                self._fail(err)
            return False
        return bool(rec.realisation.log) and store.has_blob(rec.realisation.log)

    def _fetch_log(self, store: Store, rec: RemoteRecord) -> None:
        real = rec.realisation
        if real.log and rec.log is not None and not store.has_blob(real.log):
            data = self._remote.cas.read_many([rec.log])[rec.log.hash]
            if store.put_blob(data) != real.log:
                raise RemoteError("remote.bad_answer", f"log {real.log} does not match")

    def fetch_report(self, store: Store, rec: RemoteRecord) -> None:
        """Bring ``rec``'s test report blob (small) into ``store``, so a hit shows its
        totals without fetching anything else. Never raises: a failing remote is left for
        the run (one warning) and the hit shows no totals (as one whose report was evicted:
        the remote stays in use)."""
        if not self.enabled:
            return
        try:
            self._fetch_report(store, rec)
        except RemoteError as err:
            if not evicted(err):  # an evicted report: the hit shows no totals
                self._fail(err)

    def _fetch_report(self, store: Store, rec: RemoteRecord) -> None:
        real = rec.realisation
        if real.report and rec.report is not None and not store.has_blob(real.report):
            data = self._remote.cas.read_many([rec.report])[rec.report.hash]
            if store.put_blob(data) != real.report:
                raise RemoteError("remote.bad_answer", f"test report {real.report} does not match")

    # -- writing -------------------------------------------------------------------

    def upload(self, store: Store, keys: Sequence[str], real: Realisation) -> None:
        """Queue the upload of ``real`` under ``keys`` (see ``upload_now``); returns at once.
        With a state directory the upload is first written to the pending queue, so it is
        sent later if not now."""
        if not keys or self._no_writes:  # a read-only client queues nothing: it never goes
            return
        entry = self._queue_add(keys)
        if not self.enabled:
            return
        fut = self._uploader.submit(self.upload_now, store, tuple(keys), real, entry)
        with self._lock:
            self._pending.append(fut)

    def _queue_add(self, keys: Sequence[str], *, alias_of: str = "") -> str | None:
        if self._queue is None:
            return None
        try:
            return self._queue.add(keys, alias_of=alias_of)
        except OSError as err:  # the run goes on; this result just is not retried
            _log.warning("cannot queue a remote upload in %s: %s", self._queue.directory, err)
            return None

    def _queue_done(self, entry: str | None) -> None:
        if entry is not None and self._queue is not None:
            try:
                self._queue.done(entry)
            except OSError as err:  # sent again later: harmless
                _log.warning("cannot forget a sent remote upload: %s", err)

    def upload_now(self, store: Store, keys: Sequence[str], real: Realisation,
                   entry: str | None = None) -> None:
        """Put ``real`` (already recorded in ``store``) under each of ``keys`` (see
        ``_send``), then forget its pending ``entry``. Never raises: a failure of the
        remote leaves it for the run (one warning) and keeps the entry; a tree REAPI cannot
        name (a name that is not UTF-8) stays local."""
        if not self.enabled or not keys:
            return
        if self._no_writes:
            self._queue_done(entry)
            return
        try:
            self._connect()
            self._send(store, keys, real)
        except RemoteError as err:
            if err.reason == "remote.unsupported" or self._writes_refused(err):
                self._queue_done(entry)
                return  # cannot be named in REAPI, or not taken from this host: stays local
            self._fail(err)
            return
        except StoreError:
            self._queue_done(entry)
            return  # the local copy went bad meanwhile: the local store heals it, not us
        self._queue_done(entry)

    def _send(self, store: Store, keys: Sequence[str], real: Realisation) -> None:
        """``real``'s trees as REAPI Directory trees, its log, its report, the record, and
        one ActionResult per key. Blobs the remote has are not sent again
        (FindMissingBlobs). RemoteError, StoreError."""
        cas = self._remote.cas
        trees: dict[str, tuple[Digest, Digest]] = {}
        sent_before: list[str] = []  # trees this run sent earlier (a stack handed on)
        for tree in dict.fromkeys(t for t in (real.outputs, *real.stack) if t):
            known = self._trees.get(tree)
            if known is None:
                known = self._upload_tree(store, tree)
            else:
                sent_before.append(tree)
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
        # the Tree messages of the trees sent earlier are asked about in the same call: a
        # remote restarted empty since (a memory CAS) holds none, and they are sent again
        asked = [d for d, _ in blobs.values()] + [trees[t][0] for t in sent_before]
        missing = {(d.hash, d.size_bytes) for d in cas.find_missing(asked)}
        for tree in sent_before:
            if (trees[tree][0].hash, trees[tree][0].size_bytes) in missing:
                trees[tree] = self._upload_tree(store, tree)
        cas.upload({k: v for k, v in blobs.items() if k in missing})
        result = result_for(real, record=record, record_bytes=record_bytes, trees=trees,
                            log=log, report=report)
        for key in keys:
            self._ac.update(key, result)
        root = trees[real.outputs][1] if real.outputs in trees else None
        held = RemoteRecord(realisation=real, named={t: (d.hash, d.size_bytes)
                                                     for t, (d, _) in trees.items()},
                            log=log, result=result, report=report,
                            root=(root.hash, root.size_bytes) if root is not None else None)
        with self._lock:
            self.stats["uploads"] += 1
            self._uploaded = True
            for key in keys:
                self._held[key] = held

    def _upload_tree(self, store: Store, tree: str) -> tuple[Digest, Digest]:
        """Send ``tree`` (only the blobs the remote lacks); its (Tree, root) digests."""
        up = remote_trees.upload_tree(self._remote.cas, store, tree, memo=True)
        known = (up.tree_digest, up.root_digest)
        with self._lock:
            self._trees[tree] = known
        return known

    def alias(self, key: str, rec: RemoteRecord, *, resolved: str = "") -> None:
        """Record ``rec``'s result under another key too (an early-cutoff hit found by the
        resolved hash, remembered under the derivation hash, for the next machine).
        ``resolved``: the key ``rec`` was found under; when given and the remote fails,
        the alias is queued for a later run."""
        if self._no_writes:
            return
        if not self.enabled:
            if resolved:
                self._queue_add((key,), alias_of=resolved)
            return
        try:
            self._alias_now(key, rec)
        except RemoteError as err:
            if self._writes_refused(err):
                return
            if resolved:
                self._queue_add((key,), alias_of=resolved)
            self._fail(err)

    def _alias_now(self, key: str, rec: RemoteRecord) -> None:
        self._remote.cas.upload({k: v for k, v in cas_blobs((key,)).items()})
        self._ac.update(key, rec.action_result())
        with self._lock:
            self._uploaded = True
            self._held[key] = rec

    # -- what earlier runs could not send -----------------------------------------------

    def check(self) -> bool:
        """Ask the remote now (GetCapabilities, unless it failed earlier in this run or a
        remembered timeout holds and ``backoff`` was not turned off); an answer clears the
        back-off memo. False when it fails (the one warning; ``down_reason`` says why)."""
        try:
            self._connect()
            return True
        except RemoteError as err:
            self._fail(err)
            return False

    def pending(self) -> int:
        """How many entries the pending queue holds (0 without a state directory)."""
        return len(self._queue.names()) if self._queue is not None else 0

    def resume(self, store: Store) -> None:
        """Send the pending queue's entries (earlier runs' results) on the upload thread,
        before this run's own uploads; returns at once (``flush`` waits). Costs one
        directory read when the queue is empty; nothing without a state directory."""
        if self._queue is None or not self.enabled:
            return
        earlier = self._queue.names()  # not this run's own uploads, queued from now on
        if not earlier:
            return
        fut = self._uploader.submit(self.push_pending, store, only=frozenset(earlier))
        with self._lock:
            self._pending.append(fut)

    def push_pending(self, store: Store, *, wait: bool = False,
                     only: frozenset[str] | None = None) -> PushCounts:
        """Send every entry of the pending queue (``only``: those of these names), oldest
        first, each forgotten once the remote holds it; stops at the first failure of the
        remote (one warning, the rest stay queued). ``wait``: wait for another process
        draining the queue (else this one leaves the queue to it). Never raises."""
        if self._queue is None:
            return PushCounts()
        sent = dropped = 0
        with self._queue.draining(wait=wait) as mine:
            if not mine:
                return PushCounts(left=len(self._queue.names()), busy=True)
            entries = [e for e in self._queue.entries() if only is None or e.name in only]
            for n, entry in enumerate(entries):
                try:
                    self._connect()
                    ok = self._send_entry(store, entry)
                except RemoteError as err:
                    if self._writes_refused(err):  # none of them will ever go from here
                        for rest in entries[n:]:
                            self._queue_done(rest.name)
                        return PushCounts(sent=sent, dropped=dropped + len(entries) - n)
                    if err.reason != "remote.unsupported":
                        self._fail(err)
                        return PushCounts(sent=sent, dropped=dropped, left=len(entries) - n)
                    ok = False
                except StoreError:
                    ok = False
                self._queue_done(entry.name)
                sent, dropped = sent + ok, dropped + (not ok)
        with self._lock:
            self.stats["resumed"] += sent
        return PushCounts(sent=sent, dropped=dropped)

    def _send_entry(self, store: Store, entry: Pending) -> bool:
        """Send one queued entry; False when it can never go (its record is gone from the
        local store, or it is not a shared step record). RemoteError, StoreError."""
        keys = entry.keys
        if entry.alias_of:
            rec = self._ac.get(entry.alias_of)
            if rec is not None:
                self._alias_now(keys[0], rec)
                return True
            keys = (keys[0], entry.alias_of)  # the remote lost it: send this host's copy
        real = next((r for k in keys if (r := store.get_realisation(k)) is not None), None)
        # the run that queued it decided it may be shared (Records.shares); a record that
        # is scoped (an untrusted or ref-scoped run's) or not a step's never goes
        if real is None or real.scope or real.kind != "step":
            return False
        self._send(store, keys, real)
        return True


def _identity(rec: RemoteRecord) -> tuple[str, tuple[str, ...], str, str]:
    """What a record names in the CAS (the same under every key it is filed under)."""
    real = rec.realisation
    return (real.outputs, tuple(real.stack), real.log or "", real.report or "")


def _with_root(rec: RemoteRecord) -> RemoteRecord:
    """``rec`` with the root Directory of its output tree named (read from its result)."""
    if rec.root is not None or rec.result is None:
        return rec
    for d in rec.result.output_directories:
        if d.HasField("root_directory_digest"):
            root = d.root_directory_digest
            return RemoteRecord(realisation=rec.realisation, named=rec.named, log=rec.log,
                                result=rec.result, report=rec.report,
                                root=(root.hash, root.size_bytes))
    return rec
