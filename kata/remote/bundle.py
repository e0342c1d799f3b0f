"""One ActionCache entry that answers a whole graph's lookups: a bundle.

REAPI has no batch GetActionResult, and a server spends real work on each one (BuildGrid
reads the result and checks that every blob it names is still there: ~1.5-2 ms of its CPU
per hit on this machine, whatever the client's concurrency). A 1,000-step graph is then
~2 s of server time before the first decision, where a warm local store takes ~0.3 s. So
a trusted run that uploaded results also files, at its end, ONE entry for its graph:

    key      sha256 of b"kata-bundle/1\\n" + the sorted derivation hashes the run asked
             about, one per line (``bundle_key``; golden in tests/golden/remote.json)
    Action   ``action_for(key, verb="kata-bundle", key_format="kata-bundle/1",
             output_files=("kata/bundle",), output_directories=())``
    ActionResult.output_files: kata/bundle -> msgpack {
        "format": "kata-remote-bundle/1",
        "trees": [[<kata tree digest>, <Tree hash>, <Tree size>], ...],
        "steps": {<derivation hash>: {<the kata-realisation/2 map, with "outputs" and every
                  "stack" item an index into "trees">, "log_size": <int>,
                  "root": [<root Directory hash>, <size>] | absent}}}

A later run of the same graph (another host, same commit) asks for the bundle first:
one GetActionResult and one blob read answer every step it covers; the keys it does not
cover (steps with secrets, results this run did not know the remote held) are asked one
by one as before. A bundle names only results already in the remote under their own keys
(uploaded by this run, or hits it read there), so it grants nothing a per-step lookup
would not; it is written only by a run that uploaded something (never by an untrusted
run, which uploads nothing). A tree the server has since evicted fails the lazy fetch
like a stale per-step entry does: the step is rebuilt locally.

Errors: a bundle that does not decode is a miss (None), never an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import msgpack

from kata.remote.actioncache import KeyAction, RemoteRecord, action_for, decode_realisation
from kata.remote.cas import Digest
from store import Realisation, StoreError
from store.objects import check_digest

BUNDLE_PATH = "kata/bundle"
BUNDLE_FORMAT = "kata-remote-bundle/1"
KEY_FORMAT = "kata-bundle/1"


def bundle_key(keys: Iterable[str]) -> str:
    """The bundle key of a set of derivation hashes (order and repeats do not matter)."""
    h = hashlib.sha256(b"kata-bundle/1\n")
    for key in sorted(set(keys)):
        h.update(key.encode() + b"\n")
    return h.hexdigest()


def bundle_action(key: str) -> KeyAction:
    """The REAPI Action a bundle is filed under. Pure."""
    return action_for(key, verb="kata-bundle", key_format=KEY_FORMAT,
                      output_files=(BUNDLE_PATH,), output_directories=())


def encode_bundle(records: Mapping[str, RemoteRecord]) -> bytes:
    """The ``kata/bundle`` file of ``records`` (derivation hash -> the record the remote
    holds for it)."""
    index: dict[str, int] = {}
    table: list[list[object]] = []

    def at(tree: str, named: Mapping[str, tuple[str, int]]) -> int:
        if tree not in index:
            hexd, size = named[tree]
            index[tree] = len(table)
            table.append([tree, hexd, size])
        return index[tree]

    steps = {}
    for key in sorted(records):
        rec = records[key]
        real = rec.realisation
        fields = msgpack.unpackb(real.encode(), raw=False)
        fields["outputs"] = at(real.outputs, rec.named)
        fields["stack"] = [at(t, rec.named) for t in real.stack]
        fields["log_size"] = rec.log.size_bytes if rec.log is not None else 0
        if rec.report is not None:
            fields["report_size"] = rec.report.size_bytes
        if rec.root is not None:
            fields["root"] = list(rec.root)
        steps[key] = fields
    return msgpack.packb({"format": BUNDLE_FORMAT, "trees": table, "steps": steps},
                         use_bin_type=True)


def decode_bundle(data: bytes) -> dict[str, RemoteRecord] | None:
    """The records of a ``kata/bundle`` file (derivation hash -> RemoteRecord, each with
    ``result=None``), every digest validated; None when it is not one Kata wrote."""
    try:
        doc = msgpack.unpackb(data, raw=False)
        if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
            return None
        table = doc["trees"]
        trees: list[str] = []
        named_all: dict[str, tuple[str, int]] = {}
        for tree, hexd, size in table:
            check_digest(tree)
            if not (isinstance(hexd, str) and len(hexd) == 64 and isinstance(size, int)
                    and size >= 0):
                return None
            int(hexd, 16)
            trees.append(tree)
            named_all[tree] = (hexd, size)
        checked = set(trees)
        out: dict[str, RemoteRecord] = {}
        for key, fields in doc["steps"].items():
            if not isinstance(key, str) or not isinstance(fields, dict):
                return None
            fields = dict(fields)
            log_size = fields.pop("log_size", 0)
            report_size = fields.pop("report_size", None)
            root = fields.pop("root", None)
            fields["outputs"] = trees[fields["outputs"]]
            fields["stack"] = [trees[i] for i in fields["stack"]]
            real: Realisation = decode_realisation(fields, checked)
            if not isinstance(log_size, int) or not isinstance(report_size, (int, type(None))) \
                    or (root is not None and not (
                    isinstance(root, list) and len(root) == 2)):
                return None
            log = Digest(hash=real.log.partition(":")[2], size_bytes=log_size) \
                if real.log else None
            report = Digest(hash=real.report.partition(":")[2], size_bytes=report_size) \
                if real.report and report_size is not None else None
            named = {t: named_all[t] for t in (real.outputs, *real.stack)}
            out[key] = RemoteRecord(realisation=real, named=named, log=log, result=None,
                                    report=report,
                                    root=tuple(root) if root is not None else None)
    except (ValueError, TypeError, KeyError, IndexError, StoreError, msgpack.UnpackException):
        return None
    return out
