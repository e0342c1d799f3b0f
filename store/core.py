"""``Store``: the handful of verbs the realiser and the CLI use."""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO


from . import tree as trees
from .errors import StoreError
from .files import iter_sharded, link_immutable, read_file, write_immutable
from .index import LmdbIndex, LmdbStatCache, default_state_dir, is_network_fs  # noqa: F401
from .objects import ObjectStore, os_error
from .realisations import Realisation, check_key, key_file_name
from .merged import MergedTrees
from .runs import Run, RunSummary, decode_summary, encode_summary, record_name, summarise
from .unpacked import UnpackedTrees

VERSION = "kata-store/1"
_FLUSH_EVERY = 1000
READ_ONLY_PREFIX = "kata-read-only-"  # a read-only open's private state in the temp directory
_RACY_NS = 2_000_000_000  # a verified stat younger than this is not trusted later


class Store:
    """A content-addressed store rooted at a directory (local or a network mount)."""

    def __init__(self, root: str, state_dir: str, *, limits: trees.Limits, grace: float,
                 level: int, read_only: bool = False) -> None:
        self.root = root
        self.state_dir = state_dir
        self.limits = limits
        self.grace = grace
        self.read_only = read_only
        self.objects = ObjectStore(root, level=level)
        self.tmp = os.path.join(root, "tmp")
        self.index = LmdbIndex(os.path.join(state_dir, "index"))
        # what opening had to repair, for the caller to tell the user (store/ never prints)
        self.notices: list[str] = []
        if read_only:
            from .verify import rebuild_index

            rebuild_index(self)  # a private index of a store nobody writes here
        else:
            self._sweep_dead_writers()
        if self.index.discarded:
            from .verify import rebuild_index

            count = rebuild_index(self)
            self.notices.append(f"the store's index was damaged ({self.index.discarded}); "
                                f"rebuilt it from the store's files ({count} realisations)")
        self.stat_cache = LmdbStatCache(self.index)
        self.unpacked_dir = os.path.join(state_dir, "unpacked")
        self._unpacked = UnpackedTrees(self.unpacked_dir, self.extract_tree, self.index)
        self.merged_dir = os.path.join(state_dir, "merged")
        self._merged = MergedTrees(self.merged_dir, self.unpacked)
        self._used: dict[str, int] = {}
        self._counts: dict[str, int] = {}  # hit/miss counters not yet in the index
        self._verified: dict[str, tuple[int, ...]] = {}  # stat signatures not yet indexed
        self.host = os.uname().nodename  # socket.gethostname(), without loading socket

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, root: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None = None, *,
             limits: trees.Limits | None = None, grace: float = 3600.0, level: int = 3,
             read_only: bool = False) -> "Store":
        """Open (creating it when missing) the store at ``root``, its host-local state
        (index, unpacked trees) in ``state_dir`` (default: ``default_state_dir``).

        ``read_only``: open an existing store this process cannot write (a read-only
        mount, another user's files) to read it: nothing under ``root`` or its state
        directory is written, and the index is a private one in a temporary directory,
        rebuilt from the record files (O(records); removed by :meth:`close`); a write
        then fails with ``store.permission``. Raises StoreError ``store.read_only`` (the
        store or its index cannot be written; not with ``read_only``), ``store.missing``
        (``read_only`` and no store there), ``store.not_a_directory``, ``store.version``,
        ``store.permission``, ``store.disk_full``, ``store.io``."""
        root = os.path.abspath(os.fspath(root))
        if os.path.exists(root) and not os.path.isdir(root):
            raise StoreError("store.not_a_directory", f"the store {root} is not a directory",
                             obj=root)
        if read_only:
            return cls._open_read_only(root, limits=limits, grace=grace, level=level)
        try:
            os.makedirs(root, exist_ok=True)
            for sub in ("objects/sha256", "realisations", "derivations", "runs", "pins", "tmp"):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            version_file = os.path.join(root, "VERSION")
            found = read_file(version_file)
            if found is None:
                write_immutable(os.path.join(root, "tmp"), version_file, (VERSION + "\n").encode())
                found = read_file(version_file) or b""
            if found.decode(errors="replace").strip() != VERSION:
                raise StoreError("store.version", f"{root} holds an unknown store format "
                                 f"{found[:40]!r}; expected {VERSION}", obj=root)
            state = os.path.abspath(os.fspath(state_dir)) if state_dir else default_state_dir(root)
            os.makedirs(state, exist_ok=True)
            if is_network_fs(state):
                raise StoreError("store.state_on_network_fs",
                                 f"the index cannot live on a network filesystem ({state})", obj=state)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError("store.read_only", f"cannot write the store at {root}: {err}",
                                 obj=root) from err
            raise os_error(err, f"opening the store at {root}", root) from err
        return cls(root, state, limits=limits or trees.Limits(), grace=grace, level=level)

    @classmethod
    def _open_read_only(cls, root: str, *, limits: trees.Limits | None, grace: float,
                        level: int) -> "Store":
        import tempfile

        import procs
        from procs.leftovers import sweep_dead_dirs

        from .files import force_rmtree

        try:
            found = read_file(os.path.join(root, "VERSION"))
        except OSError as err:
            raise os_error(err, f"reading the store at {root}", root) from err
        if found is None or not os.path.isdir(os.path.join(root, "realisations")):
            raise StoreError("store.missing", f"there is no store at {root}", obj=root)
        if found.decode(errors="replace").strip() != VERSION:
            raise StoreError("store.version", f"{root} holds an unknown store format "
                             f"{found[:40]!r}; expected {VERSION}", obj=root)
        # named by pid and start time: what a reader killed while it held the store open
        # left (its private index, O(records)) goes at the next read-only open
        sweep_dead_dirs(tempfile.gettempdir(), READ_ONLY_PREFIX)
        state = tempfile.mkdtemp(prefix=f"{READ_ONLY_PREFIX}{procs.pid_tag()}-")
        try:
            store = cls(root, state, limits=limits or trees.Limits(), grace=grace, level=level,
                        read_only=True)
        except BaseException:
            force_rmtree(state)
            raise
        return store

    def _sweep_dead_writers(self) -> int:
        """Remove the partial ingest files of writers of this host that died (a SIGKILLed
        kata): their names carry the writer's owner label (``objects.tmp_name``).
        Files of live writers, or of another boot or host, wait for gc's grace period."""
        from .objects import tmp_owner_dead

        removed = 0
        try:
            names = os.listdir(self.tmp)
        except OSError:
            return 0
        for name in names:
            if tmp_owner_dead(name):
                try:
                    os.unlink(os.path.join(self.tmp, name))
                    removed += 1
                except OSError:
                    continue
        return removed

    def close(self) -> None:
        try:
            self.flush()
            self.index.close()
        finally:
            if self.read_only:  # the private index and whatever was unpacked beside it
                from .files import force_rmtree

                force_rmtree(self.state_dir)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        """Write buffered last-use times, verified stat signatures and hit/miss counts to
        the index."""
        if self._verified:
            verified, self._verified = self._verified, {}
            self.index.note_verified(verified)
        if self._used:
            used, self._used = self._used, {}
            self.index.note_objects({d: -1 for d in used})
        if self._counts:
            counts, self._counts = self._counts, {}
            for name, delta in counts.items():
                self.index.count(name, delta)

    def _note_use(self, digest: str) -> None:
        self._used[digest] = 1
        if len(self._used) >= _FLUSH_EVERY:
            self.flush()

    # ------------------------------------------------------------ blobs

    def put_blob(self, data: bytes | bytearray | memoryview | BinaryIO) -> str:
        digest = self.objects.put(data)
        self.index.note_objects({digest: -1})
        return digest

    def open_blob(self, digest: str):
        reader = self.objects.open(digest)
        self._note_use(digest)
        return reader

    def has_blob(self, digest: str) -> bool:
        return self.objects.has(digest)

    def damaged(self, digests: Iterable[str], *, repair: bool = True) -> tuple[str, ...]:
        """The objects among ``digests`` that are missing or whose content does not match
        their digest; with ``repair`` the corrupt ones are quarantined (as ``verify
        --repair`` does).

        Cheap when nothing changed: an object is re-hashed only when the stat of its file
        (dev, ino, size, mtime_ns, ctime_ns) differs from the one recorded when its
        content was last verified (a rewrite in place changes ctime whatever it does to
        mtime), so a fully cached run costs a stat and an index read per object. A file whose
        ctime is within 2 s of the hash is not remembered (git's racily-clean rule).
        """
        bad: list[str] = []
        corrupt: list[str] = []
        for digest in digests:
            try:
                st = os.stat(self.objects.path(digest))
            except FileNotFoundError:
                bad.append(digest)
                continue
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._verified.get(digest) == signature or self.index.verified(digest) == signature:
                continue
            hashed_at = time.time_ns()
            try:
                with self.objects.open(digest) as blob:
                    while blob.read(1 << 20):
                        pass
            except StoreError as err:
                if err.reason not in ("store.corrupt_object", "store.missing_object"):
                    raise
                bad.append(digest)
                if err.reason == "store.corrupt_object":
                    corrupt.append(digest)
                continue
            if hashed_at - st.st_ctime_ns > _RACY_NS:
                # the stat taken before the read; a file changed within the clock's
                # granularity of that stat could change again unseen ("racily clean", as
                # git says): such a one is simply hashed again next time
                self._verified[digest] = signature
                if len(self._verified) >= _FLUSH_EVERY:
                    self.flush()
        if repair and corrupt:
            from .verify import quarantine
            quarantine(self, corrupt)
        return tuple(bad)

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    # ------------------------------------------------------------ trees

    def put_tree(self, root_dir: str | os.PathLike[str], paths: Sequence[str] | None = None, *,
                 manifest: dict[str, tuple[str, str]] | None = None,
                 dir_links: Mapping[str, str] | None = None) -> str:
        """Pack ``paths`` under ``root_dir`` (all of it: None) as one canonical tree blob;
        returns its digest. ``manifest``, when given, is filled with what the stored
        bytes hold per file and link: path -> (kind "f"|"x"|"l", "sha256:<hex>" of the
        content or link target), read from the very stream that was stored, so a caller
        can check it against digests it computed earlier (a file edited in between).
        ``dir_links``: links among ``paths`` packed as the real directory they lead to
        (``store.tree.scan``); every other link is stored as the link it is."""
        entries = trees.scan(os.fspath(root_dir), paths, dir_links)
        chunks = trees.stream(entries)
        if manifest is not None:
            chunks = trees.tap_manifest(chunks, manifest)
        digest, size = self.objects.put_chunks(chunks)
        self.index.note_objects({digest: size})
        return digest

    def extract_tree(self, digest: str, dest: str | os.PathLike[str], *,
                     readonly: bool = False) -> None:
        with self.open_blob(digest) as blob:
            try:
                trees.extract(blob, os.fspath(dest), limits=self.limits, readonly=readonly)
            except StoreError as err:
                if err.reason.startswith("store.archive."):
                    # A stored blob that does not parse may simply be damaged: say so if it is.
                    while blob.read(1 << 20):
                        pass
                raise

    def unpacked(self, digest: str) -> str:
        """A host-local read-only extracted copy of a tree, made once and reused."""
        path, fresh = self._unpacked.get(digest)
        if not fresh:
            self._note_use(digest)
        return path

    def evict_unpacked(self, digest: str | None = None) -> int:
        """Remove one unpacked tree (or all, and every merged stack); they are rebuilt on
        demand. Returns how many unpacked trees went."""
        if digest is None:
            self._merged.evict()
        return self._unpacked.evict(digest)

    def merged(self, trees: Sequence[str]) -> str:
        """A host-local read-only directory holding ``trees`` (two or more tree digests,
        bottom first, no duplicates) laid over each other with overlayfs' rules: a later
        tree's path hides an earlier one's, directories merge. Made once per stack from
        hard links to the unpacked trees, reused, evictable (see ``store.merged``)."""
        path, _fresh = self._merged.get(trees)
        return path

    def evict_merged(self, keep_trees: Callable[[str], bool] | None = None) -> int:
        """Remove merged stacks: all, or those holding a tree ``keep_trees`` refuses."""
        if keep_trees is None:
            return self._merged.evict()

        def keep(name: str) -> bool:
            trees = self._merged.trees_of(name)
            return trees is not None and all(keep_trees(t) for t in trees)

        return self._merged.evict(keep)

    # ------------------------------------------------------------ realisations

    def _realisation_path(self, key: str) -> str:
        shard, name = key_file_name(key)
        return os.path.join(self.root, "realisations", shard, name)

    def put_realisation(self, key: str, realisation: Realisation) -> None:
        """Record what ``key`` produced. Its objects must already be in the store.

        Records are immutable: a key already realised keeps its first record.
        """
        self.put_realisations((key,), realisation)

    def put_realisations(self, keys: Sequence[str], realisation: Realisation) -> None:
        """Record ``realisation`` under each of ``keys`` (a step's derivation and resolved
        hashes): ``put_realisation`` for each, with the record's bytes written once and
        hard-linked under the other keys (a link allocates no inode and syncs no data:
        creating inodes is most of a record's CPU on ext4); where the filesystem has no
        hard links, each key gets its own copy. Each key already realised keeps its first
        record (the index then holds that one).

        The objects it points at (its stack's trees too) are checked and touched once
        per call, not once per key."""
        keys = tuple(dict.fromkeys(check_key(k) for k in keys))
        if not isinstance(realisation, Realisation):
            raise StoreError("store.bad_realisation", "put_realisation needs a Realisation")
        if not realisation.host or not realisation.created:
            realisation = dataclasses.replace(realisation, host=realisation.host or self.host,
                                              created=realisation.created or time.time())
        objs = realisation.objects()
        self._touch(objs, keys[0] if keys else "")
        raw = realisation.encode()
        first = ""  # the path written, that the other keys link to
        written: list[str] = []
        records: dict[str, Realisation] = {}
        for key in keys:
            path = self._realisation_path(key)
            wrote = link_immutable(first, path) if first else None
            if wrote is None:
                wrote = write_immutable(self.tmp, path, raw)
                first = path if wrote else first
            records[key] = realisation
            if wrote:
                written.append(path)
            else:
                existing = read_file(path)
                if existing is not None:
                    records[key] = Realisation.decode(existing, what=f"realisation {key}")
        if written:
            missing = [d for d in objs if not self.objects.has(d)]
            if missing:  # a gc elsewhere won the race: never leave a record pointing at nothing
                for path in written:
                    os.unlink(path)
                raise StoreError("store.missing_object", f"{missing[0]} was collected while "
                                 f"realisation {keys[0]} was written; store it again",
                                 obj=missing[0])
        self.index.put_realisations({key: record.index_encode()
                                     for key, record in records.items()})

    def _touch(self, objs: Sequence[str], key: str) -> None:
        """Check that each of ``objs`` is present and refresh its mtime (young again: a
        concurrent gc keeps it). StoreError store.missing_object naming ``key`` for one
        absent."""
        for digest in objs:
            try:
                os.utime(self.objects.path(digest))  # one call: it fails on a missing file
            except FileNotFoundError:
                raise StoreError("store.missing_object", f"realisation {key} points at {digest}, "
                                 "which is not in the store", obj=digest) from None

    def get_realisation(self, key: str) -> Realisation | None:
        """Index first, then the files (a realisation written by another host is then indexed)."""
        raw = self.index.get_realisation(key)
        if raw is not None:
            return Realisation.index_decode(raw)
        check_key(key)
        raw = read_file(self._realisation_path(key))
        if raw is None:
            return None
        real = Realisation.decode(raw, what=f"realisation {key}")
        self.index.put_realisation(key, real.index_encode())
        return real

    def reread_realisation(self, key: str) -> Realisation | None:
        """The record in the files, past this host's index (which may hold an older record
        another host has since replaced after healing it); re-indexed when found."""
        check_key(key)
        self.index.drop_realisations([key])
        raw = read_file(self._realisation_path(key))
        if raw is None:
            return None
        real = Realisation.decode(raw, what=f"realisation {key}")
        self.index.put_realisation(key, real.index_encode())
        return real

    def delete_realisation(self, key: str) -> bool:
        self.index.drop_realisations([key])
        try:
            os.unlink(self._realisation_path(key))
            return True
        except FileNotFoundError:
            return False

    def iter_realisations(self):
        """(key, path, mtime) of every realisation file."""
        yield from iter_sharded(os.path.join(self.root, "realisations"))

    # ------------------------------------------------------------ derivations

    def _derivation_path(self, drv_hash: str) -> str:
        shard, name = key_file_name(drv_hash)
        return os.path.join(self.root, "derivations", shard, name)

    def put_derivation(self, drv_hash: str, encoded: bytes) -> None:
        write_immutable(self.tmp, self._derivation_path(drv_hash), bytes(encoded))

    def get_derivation(self, drv_hash: str) -> bytes | None:
        return read_file(self._derivation_path(drv_hash))

    # ------------------------------------------------------------ runs

    def put_run(self, run: Run) -> str:
        """Store a run record (immutable; ``started`` 0 means now); returns its id."""
        if not isinstance(run, Run):
            raise StoreError("store.bad_run", "put_run needs a Run")
        if not run.started:
            run = dataclasses.replace(run, started=time.time())
        raw = run.encode()
        name = record_name(run)
        write_immutable(self.tmp, os.path.join(self.root, "runs", name), raw)
        # the record first, then its index rows in one transaction: a crash between the
        # two leaves a record without a summary, which run_summaries computes when read
        self.index.put_run(run.id, raw, name, encode_summary(summarise(run)))
        return run.id

    def get_run(self, run_id: str) -> Run | None:
        raw = self.index.get_run(run_id)
        if raw is None:
            for name in os.listdir(os.path.join(self.root, "runs")):
                if name.endswith("-" + run_id):
                    raw = read_file(os.path.join(self.root, "runs", name))
                    break
        return Run.decode(raw, what=f"run {run_id}") if raw is not None else None

    def run_names(self) -> list[str]:
        """The run records' file names (``<started ns>-<id>``), newest first. A record is
        immutable, so a name read once names the same bytes for ever (readers cache
        what they decoded by name)."""
        return sorted((n for n in os.listdir(os.path.join(self.root, "runs"))
                       if not n.startswith(".")), reverse=True)

    def read_run(self, name: str) -> Run | None:
        """The run record of file ``name`` (from :meth:`run_names`); None when gone.
        StoreError store.corrupt_record when unreadable."""
        raw = read_file(os.path.join(self.root, "runs", os.path.basename(name)))
        return Run.decode(raw, what=name) if raw is not None else None

    def summaries(self, names: Sequence[str]) -> dict[str, RunSummary | None]:
        """The summaries of the run records named ``names`` (from :meth:`run_names`), by
        name; None for a record that is unreadable or gone. Read from the index, which
        ``put_run`` fills as it records a run; a record the index lacks (written by
        another host, before the index kept summaries, or by a writer that crashed
        between record and index) or holds in another version is decoded once and its
        summary indexed."""
        out: dict[str, RunSummary | None] = {}
        missing: dict[str, bytes] = {}
        for name, raw in zip(names, self.index.run_summaries(names)):
            if raw is not None:
                known, summary = decode_summary(raw)
                if known:
                    out[name] = summary
                    continue
            try:
                record = self.read_run(name)
            except StoreError:
                record = None  # unreadable: remembered as such (records never change)
            else:
                if record is None:  # gone (a record is never rewritten): nothing to index
                    out[name] = None
                    continue
            out[name] = summarise(record) if record is not None else None
            missing[name] = encode_summary(out[name])
        if missing:
            try:
                self.index.put_run_summaries(missing)
            except StoreError:
                pass  # an index that cannot be written costs the next reader a decode
        return out

    def run_summaries(self, pipeline: str | None = None,
                      limit: int | None = None) -> list[RunSummary]:
        """Summaries of the newest ``limit`` readable runs (of ``pipeline``), newest
        first, without decoding the records the index has summaries of."""
        names = self.run_names()
        out: list[RunSummary] = []
        start, step = 0, len(names) if limit is None else max(limit, 8)
        while start < len(names):  # newest first, in growing chunks until limit match
            chunk = names[start:start + step]
            found = self.summaries(chunk)
            for name in chunk:
                s = found.get(name)
                if s is not None and (pipeline is None or s.pipeline == pipeline):
                    out.append(s)
                    if limit is not None and len(out) >= limit:
                        return out
            start, step = start + step, step * 2
        return out

    def iter_runs(self) -> Iterator[Run]:
        """Every readable run record, newest first (an unreadable one is passed over)."""
        runs_dir = os.path.join(self.root, "runs")
        for name in sorted(os.listdir(runs_dir), reverse=True):
            raw = read_file(os.path.join(runs_dir, name))
            if raw is None:
                continue
            try:
                yield Run.decode(raw, what=name)
            except StoreError:
                continue

    def list_runs(self, pipeline: str | None = None, limit: int = 20) -> list[Run]:
        out = []
        for run in self.iter_runs():
            if pipeline is None or run.pipeline == pipeline:
                out.append(run)
                if len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------ pins

    def pin(self, key: str) -> None:
        _, name = key_file_name(key)
        write_immutable(self.tmp, os.path.join(self.root, "pins", name), key.encode())

    def unpin(self, key: str) -> None:
        _, name = key_file_name(key)
        try:
            os.unlink(os.path.join(self.root, "pins", name))
        except FileNotFoundError:
            pass

    def pinned(self) -> set[str]:
        out = set()
        for name in os.listdir(os.path.join(self.root, "pins")):
            raw = read_file(os.path.join(self.root, "pins", name))
            if raw:
                out.add(raw.decode(errors="replace"))
        return out

    # ------------------------------------------------------------ counters, gc, verify, stats

    def count(self, hit: bool) -> None:
        """Count a cache hit or miss; buffered until ``flush``/``close`` (one index write
        per run, not one per step: a 1,000-step cached run spent half its realiser time
        in per-hit write transactions)."""
        name = "hits" if hit else "misses"
        self._counts[name] = self._counts.get(name, 0) + 1

    def gc(self, **kwargs: Any):
        from .gc import collect
        self.flush()
        return collect(self, **kwargs)

    def verify(self, **kwargs: Any):
        from .verify import verify
        self.flush()
        return verify(self, **kwargs)

    def stats(self) -> dict[str, Any]:
        objects = 0
        size = 0
        for _, st in self.objects.iter_objects():
            objects += 1
            size += st.st_size
        realisations = sum(1 for _ in self.iter_realisations())
        self.flush()
        counters = self.index.counters()
        try:
            unpacked = len([n for n in os.listdir(self.unpacked_dir) if not n.startswith(".")])
        except FileNotFoundError:
            unpacked = 0
        return {
            "root": self.root, "state_dir": self.state_dir,
            "network_fs": is_network_fs(self.root),
            "objects": objects, "size": size, "realisations": realisations,
            "runs": len(os.listdir(os.path.join(self.root, "runs"))),
            "hits": counters.get("hits", 0), "misses": counters.get("misses", 0),
            "unpacked": unpacked,
        }
