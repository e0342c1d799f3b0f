"""Scoped, self-healing reads of the store's records, for one run.

A record is a hit only when every object it points at (output tree, log, the artifact
stack it hands on) is present and matches its digest. A record that fails this is
dropped and its corrupt objects quarantined (``Store.damaged``, as ``kata store verify
--repair`` does), so the step is rebuilt in this run and the next run does not meet
the damage again (Bazel's remote cache and Nix's substituters behave the same way).
With ``heal=False`` (a dry run) damage is reported and nothing is changed.

A dry run predicts the run (both plan through ``plan.make_plan`` over this class): the
two objects every run writes itself before it looks anything up — the empty log and the
empty tree, shared by every quiet step and every step without artifacts — are put by a
healing lookup first (a deleted one is back before any record is judged), and counted
as intact by a dry one, which would otherwise call damaged what the run finds whole.

Scopes (:class:`kata.keys.Scope`): step results are read under the run's
``realisation_keys`` (a trusted run: the shared key only; an untrusted run: its
quarantine first), cache directories under ``cache_dir_keys``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kata import keys
from kata.keys import Scope
from store import Realisation, Store, StoreError
from store.tree import EMPTY_TREE

#: digests of the objects a run writes before any lookup: the empty log, the empty tree
ALWAYS_WRITTEN = tuple("sha256:" + hashlib.sha256(b).hexdigest() for b in (b"", EMPTY_TREE))

if TYPE_CHECKING:
    from kata.remote.actioncache import RemoteRecord
    from kata.remote.cache import RemoteCache


@dataclass(frozen=True, slots=True, kw_only=True)
class Looked:
    """What one lookup found: the record (None: a miss) and the key it was found under.
    ``damaged``: a record was there but an object behind it was missing or corrupt.
    ``remote``: the record came from the remote cache; its objects are not local yet.
    ``asked_remote``: the remote cache was asked too (a miss is a miss in both)."""

    key: str
    record: Realisation | None = None
    damaged: bool = False
    remote: "RemoteRecord | None" = None
    asked_remote: bool = False


class Lookup:
    """Record reads for one run over ``store`` in ``scope``. Thread-safe (a set of
    objects already checked this run, so each object is looked at once per run)."""

    def __init__(self, store: Store, scope: Scope, *, heal: bool = True,
                 remote: "RemoteCache | None" = None) -> None:
        self.store = store
        self.scope = scope
        self.heal = heal
        self.remote = remote
        self._intact: set[str] = set()
        if heal:  # a stat each when they are whole (a fully cached run pays ~µs)
            bad = set(store.damaged(ALWAYS_WRITTEN, repair=True))
            for digest, data in zip(ALWAYS_WRITTEN, (b"", EMPTY_TREE)):
                if digest in bad:
                    store.put_blob(data)
        self._intact.update(ALWAYS_WRITTEN)

    def _read(self, key: str) -> Looked:
        try:
            real = self.store.get_realisation(key)
        except StoreError as err:
            if err.reason != "store.corrupt_record":
                raise
            if self.heal:
                self.store.delete_realisation(key)
            return Looked(key=key, damaged=True)
        if real is None:
            return Looked(key=key)
        if self._whole(real):
            return Looked(key=key, record=real)
        # this host's index may hold a record another host healed and replaced since:
        # the files decide before anything is deleted (deleting theirs would lose a result)
        try:
            fresh = self.store.reread_realisation(key)
        except StoreError as err:
            if err.reason != "store.corrupt_record":
                raise
            fresh = None
        if fresh is not None and fresh != real and self._whole(fresh):
            return Looked(key=key, record=fresh)
        if self.heal:  # records are immutable: a rebuild can only land on a free key
            self.store.delete_realisation(key)
        return Looked(key=key, damaged=True)

    def _whole(self, real: Realisation) -> bool:
        need = [d for d in real.objects() if d not in self._intact]
        if not need:
            return True
        bad = self.store.damaged(need, repair=self.heal)
        self._intact.update(d for d in need if d not in bad)
        return not bad

    def _first(self, candidates: tuple[str, ...]) -> Looked:
        damaged = False
        for key in candidates:
            found = self._read(key)
            if found.record is not None:
                return found
            damaged = damaged or found.damaged
        return Looked(key=candidates[-1], damaged=damaged)

    def step(self, key: str, *, remote: bool = True) -> Looked:
        """A step result recorded under ``key`` (a derivation or resolved hash): the local
        store first, then the remote cache (the shared key only: what trusted runs wrote).
        ``remote=False``: the local store only, for a step whose results are never uploaded
        (a secret in it or below it, ``Records.shares``): an entry the remote holds for it
        was written by someone else, so it is never used (SECURITY.md)."""
        found = self._first(self.scope.realisation_keys(key))
        if found.record is None and remote and self.remote is not None:
            rec = self.remote.lookup(key)
            if rec is not None:
                return Looked(key=key, record=rec.realisation, damaged=found.damaged, remote=rec,
                              asked_remote=True)
            # a remote that failed just now (one warning) was not really asked
            return dataclasses.replace(found, asked_remote=self.remote.enabled)
        return found

    def local(self, key: str) -> bool:
        """Whether the local store holds a whole result under ``key`` (the remote is not
        asked)."""
        return self._first(self.scope.realisation_keys(key)).record is not None

    def cache_dir(self, key: str) -> Looked:
        """A cache directory (``keys.cache_dir_key``) from the scopes this run may read."""
        return self._first(tuple(k for _, k in keys.cache_dir_keys(self.scope, key)))

    def shared(self, key: str) -> Looked:
        """A record outside every scope (an input snapshot: content-addressed by kata
        itself before any step runs, so any run may share it)."""
        return self._read(key)

    def intact(self, digest: str) -> bool:
        """Whether one object is present and matches its digest, checked now (a read of
        it failed: what was true at planning time may not be any more)."""
        self._intact.discard(digest)
        if self.store.damaged([digest], repair=self.heal):
            return False
        self._intact.add(digest)
        return True
