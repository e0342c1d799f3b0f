"""Every key Kata computes, in one place, each with its canonical encoding.

A key names a result by what produced it (REAPI's action cache, Nix's input-addressed
paths): two computations with the same key must be interchangeable, and any change to
what a step sees must change its key. Each function below states the exact bytes it
hashes; ``tests/golden/keys.json`` pins the hex for fixed inputs, so a change of
encoding is a visible diff (and needs a new format tag).

Keys (format tag, what it covers):

- derivation hash (``kata-drv/4``): everything a step computes from, with its
  dependencies' derivation hashes (input-addressed; known before anything runs);
- resolved hash (``kata-drv-resolved/4``): the same with the dependencies' artifact-stack
  digests in place of their derivation hashes (early cutoff);
- artifact-stack digest (``kata-stack/1``): the ordered artifact trees a step passes on;
- input-snapshot key (``kata-input-snapshot/2``): the stored tree of a step's input
  files, by the digest of the input set;
- cache-directory key (``kata-cache-dir/4``): a step's ``cache.paths`` contents, by
  pipeline, step, image digest, paths, the compiler's ``key_files`` digest and the
  secret names the step, its services and every step below it declare;
- scoped record key (``kata-scoped/1``): a key placed in a scope (a ref's cache
  directories, an untrusted run's quarantine), so scopes never share an entry.

Pure functions of values: no I/O, no store, no runtime.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

if TYPE_CHECKING:
    from kata.derivation import Derivation

STACK_FORMAT = "kata-stack/1"
# /1 (``kata-inputs/1``) records were written before a snapshot's bytes were checked
# against the digests the compiler hashed: one edited in between could name other bytes
SNAPSHOT_FORMAT = "kata-input-snapshot/2"
# /2 replaced kata-cache-paths/1 (image, paths, key files read as literal paths) and
# missed the secret names, so a step without secrets (an untrusted branch's) restored
# what a secret-holding one cached; /3 covers them, but only the step's own: a step
# below which one ran (its artifacts in the workspace) shared its key with a branch's
# step of that name that depends on nothing; /4 covers the secrets below it too
CACHE_DIR_FORMAT = "kata-cache-dir/4"
SCOPED_FORMAT = "kata-scoped/1"


# ---------------------------------------------------------------- scopes

def trusted_scope(label: str) -> bool:
    """Whether a run recorded under scope ``label`` (a :meth:`Scope.label`, as ``Run.scope``
    holds it; "" for a run recorded before scopes) was trusted: only an untrusted run
    writes its quarantine."""
    return not label.startswith("quarantine:")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Where a run reads and writes scoped entries (cache directories, an untrusted run's
    realisations); GitHub Actions' cache scoping by ref is the model.

    ``ref``: the run's full ref (``refs/heads/main``, ``refs/tags/v1``; "" outside git).
    ``default_ref``: the repository's default branch ref ("" when unknown).
    ``protected``: the ref is protected (the default branch, a release tag): it never
    restores an entry another ref wrote. ``trusted``: False for a run of code nobody
    vouched for (a fork's pull request, ``kata run --untrusted``): it writes only into
    its quarantine, which trusted runs never read.
    """

    ref: str = ""
    default_ref: str = ""
    protected: bool = True
    trusted: bool = True

    @property
    def is_default(self) -> bool:
        return bool(self.ref) and self.ref == self.default_ref

    def label(self) -> str:
        """The scope entries written by this run carry: ``ref:<ref>`` or
        ``quarantine:<ref>`` (shown by ``kata cache list``)."""
        return ("ref:" if self.trusted else "quarantine:") + self.ref

    def cache_read_labels(self) -> tuple[str, ...]:
        """The scopes a run restores cache directories from, first match wins.

        Own ref first; then the default branch's, only for a ref that is neither the
        default branch nor protected. An untrusted run reads its quarantine first, then
        what trusted runs wrote (own ref, then the default branch's).
        """
        out = [] if self.trusted else [self.label()]
        out.append("ref:" + self.ref)
        if self.default_ref and not self.is_default and not (self.protected and self.trusted):
            out.append("ref:" + self.default_ref)
        return tuple(dict.fromkeys(out))

    def realisation_keys(self, key: str) -> tuple[str, ...]:
        """The record keys a step result is looked up under: a trusted run reads the
        shared (unscoped) key only; an untrusted one its quarantine first, then that."""
        if self.trusted:
            return (key,)
        return (scoped_key(self.label(), key), key)

    def realisation_key(self, key: str) -> str:
        """The record key a step result is written under (quarantined when untrusted)."""
        return key if self.trusted else scoped_key(self.label(), key)


# ---------------------------------------------------------------- step keys

def derivation_hash(derivation: "Derivation") -> str:
    """The input-addressed key: sha256 hex of ``msgpack(["kata-drv/4", fields])``, fields
    as :meth:`kata.derivation.Derivation.to_obj` (sorted map keys, env as sorted pairs,
    sorted secrets, artifacts, cache paths, dependency hashes; services by name).
    Raises ``derivation.unresolved`` for a derivation with unknown parts."""
    return derivation.hash


def resolved_hash(derivation: "Derivation", dep_stacks: Sequence[str]) -> str:
    """The early-cutoff key: sha256 hex of ``msgpack(["kata-drv-resolved/4", fields])``
    with ``deps`` replaced by the sorted artifact-stack digests (:func:`stack_digest`) of
    the dependencies, one per dependency."""
    return derivation.resolved_hash(dep_stacks)


def stack_digest(stack: Sequence[str]) -> str:
    """What a dependent sees of a dependency: every artifact tree it passes on, bottom
    first. ``"sha256:" + sha256("kata-stack/1" NUL tree1 NUL tree2 ...)``, trees as
    ``sha256:<hex>`` strings, in stack order (order decides which file wins)."""
    body = "\0".join((STACK_FORMAT, *stack)).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def input_snapshot_key(inputs_digest: str) -> str:
    """The record naming the stored tree of an input set: sha256 hex of
    ``"kata-input-snapshot/2" NUL <input set digest>``. The input set digest covers every
    file's path, mode and content digest, so equal keys mean equal trees; a record is
    written only after the stored bytes were checked against those digests."""
    return hashlib.sha256(f"{SNAPSHOT_FORMAT}\0{inputs_digest}".encode()).hexdigest()


def cache_dir_key(*, pipeline: str, step: str, image: str, paths: Sequence[str],
                  key_files: str | None, secrets: Sequence[str] = ()) -> str:
    """The key of a step's ``cache.paths`` contents (before scoping): sha256 hex of
    ``msgpack(["kata-cache-dir/4", {"image", "key_files", "paths", "pipeline", "secrets",
    "step"}])`` with sorted map keys, sorted paths and sorted, de-duplicated secrets.

    ``image`` is the manifest digest the compiler hashed; ``key_files`` the compiler's
    InputSet digest of ``cache.key_files`` (globs expanded, None: no key files);
    ``secrets``: the names the step and its services declare, and those of every step it
    depends on, directly or not (``Records.secrets_below``). A step that held a secret may
    have left it in its cache directory (a ``docker login``, an ``.npmrc``), and so may one
    that got such a step's artifacts: only a step with the same secrets in and below it,
    which an untrusted run never runs (``kata.trust.withheld``, dependents skipped), shares
    its key. Nothing is read here: a key-file edit
    reaches the key only through the compiler's digest.
    """
    body = msgpack.packb([CACHE_DIR_FORMAT, {
        "image": image, "key_files": key_files, "paths": sorted(paths),
        "pipeline": pipeline, "secrets": sorted(set(secrets)), "step": step}],
        use_bin_type=True)
    return hashlib.sha256(body).hexdigest()


def scoped_key(label: str, key: str) -> str:
    """A key placed in a scope: sha256 hex of ``"kata-scoped/1" NUL <label> NUL <key>``.
    ``label`` is a :meth:`Scope.label` (``ref:<ref>`` / ``quarantine:<ref>``)."""
    return hashlib.sha256(f"{SCOPED_FORMAT}\0{label}\0{key}".encode()).hexdigest()


def cache_dir_keys(scope: Scope, key: str) -> tuple[tuple[str, str], ...]:
    """(scope label, record key) pairs a run restores ``key``'s cache directory from, in
    order (:meth:`Scope.cache_read_labels`)."""
    return tuple((label, scoped_key(label, key)) for label in scope.cache_read_labels())

