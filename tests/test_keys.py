"""kata.keys: every key's exact bytes pinned by a golden file, and the scope rules."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from kata import derivation as drv
from kata import keys
from kata.keys import Scope

GOLDEN = Path(__file__).parent / "golden" / "keys.json"
D0 = "sha256:" + "0" * 64
D1 = "sha256:" + "1" * 64


def _derivation() -> drv.Derivation:
    return drv.make(pipeline="ci", image=D0, commands=["make"], workdir="/src", user=None,
                    env=[("B", "2"), ("A", "1")], secrets=["TOKEN"], inputs=D1,
                    key_files=D0, artifacts=["dist/"], cache_paths=["node_modules/"],
                    services=[], network="none", deps=["a" * 64])


def computed() -> dict[str, str]:
    d = _derivation()
    return {
        "derivation_hash": keys.derivation_hash(d),
        "resolved_hash": keys.resolved_hash(d, [D1]),
        # declared limits: encoded only when there are some (the key above is unchanged)
        "derivation_hash_resources": keys.derivation_hash(dataclasses.replace(
            d, resources=drv.limits(64 << 20, 1, None))),
        "stack_digest": keys.stack_digest([D0, D1]),
        "stack_digest_empty": keys.stack_digest([]),
        "input_snapshot_key": keys.input_snapshot_key(D1),
        "cache_dir_key": keys.cache_dir_key(pipeline="ci", step="install", image=D0,
                                            paths=["node_modules/", ".npm/"], key_files=D1),
        "cache_dir_key_no_key_files": keys.cache_dir_key(
            pipeline="ci", step="install", image=D0, paths=["node_modules/"], key_files=None),
        "cache_dir_key_secrets": keys.cache_dir_key(
            pipeline="ci", step="deploy", image=D0, paths=[".docker/"], key_files=None,
            secrets=["TOKEN", "REGISTRY", "TOKEN"]),
        "scoped_key_ref": keys.scoped_key("ref:refs/heads/main", "b" * 64),
        "scoped_key_quarantine": keys.scoped_key("quarantine:refs/pull/1/head", "b" * 64),
    }


def test_golden_keys() -> None:
    """Each key's hex for fixed inputs. A diff here is a change of encoding: give the key a
    new format tag. Regenerate with KATA_UPDATE_GOLDEN=1 after a deliberate change."""
    got = computed()
    if os.environ.get("KATA_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_cache_dir_key_covers_each_part_and_sorts_paths() -> None:
    base = dict(pipeline="ci", step="install", image=D0, paths=["a/", "b/"], key_files=D1)
    k = keys.cache_dir_key(**base)
    assert keys.cache_dir_key(**{**base, "paths": ["b/", "a/"]}) == k
    with_secrets = keys.cache_dir_key(**{**base, "secrets": ["B", "A"]})
    assert keys.cache_dir_key(**{**base, "secrets": ["A", "B", "A"]}) == with_secrets
    for field, other in (("pipeline", "other"), ("step", "build"), ("image", D1),
                         ("paths", ["a/"]), ("key_files", D0), ("key_files", None),
                         ("secrets", ["TOKEN"])):
        assert keys.cache_dir_key(**{**base, field: other}) != k, field


def test_stack_digest_is_ordered() -> None:
    assert keys.stack_digest([D0, D1]) != keys.stack_digest([D1, D0])


def test_resolved_hash_matches_the_compiler_node() -> None:
    d = _derivation()
    assert keys.resolved_hash(d, [D1]) == d.resolved_hash([D1])
    assert keys.derivation_hash(d) == d.hash


def test_scope_cache_reads_feature_branch_falls_back_to_default() -> None:
    feature = Scope(ref="refs/heads/f", default_ref="refs/heads/main", protected=False)
    assert feature.cache_read_labels() == ("ref:refs/heads/f", "ref:refs/heads/main")
    assert feature.label() == "ref:refs/heads/f"


def test_scope_default_and_protected_refs_read_only_their_own() -> None:
    main = Scope(ref="refs/heads/main", default_ref="refs/heads/main", protected=True)
    assert main.cache_read_labels() == ("ref:refs/heads/main",)
    main_unprotected = Scope(ref="refs/heads/main", default_ref="refs/heads/main",
                             protected=False)
    assert main_unprotected.cache_read_labels() == ("ref:refs/heads/main",)
    tag = Scope(ref="refs/tags/v1", default_ref="refs/heads/main", protected=True)
    assert tag.cache_read_labels() == ("ref:refs/tags/v1",)


def test_scope_untrusted_writes_quarantine_and_reads_it_first() -> None:
    pr = Scope(ref="refs/pull/1/head", default_ref="refs/heads/main", protected=False,
               trusted=False)
    assert pr.label() == "quarantine:refs/pull/1/head"
    assert pr.cache_read_labels() == ("quarantine:refs/pull/1/head", "ref:refs/pull/1/head",
                                      "ref:refs/heads/main")
    key = "c" * 64
    assert pr.realisation_key(key) == keys.scoped_key("quarantine:refs/pull/1/head", key)
    assert pr.realisation_keys(key) == (pr.realisation_key(key), key)
    trusted = Scope(ref="refs/pull/1/head", default_ref="refs/heads/main", protected=False)
    assert trusted.realisation_keys(key) == (key,)  # never the quarantine
    assert trusted.realisation_key(key) == key
