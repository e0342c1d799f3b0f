"""Kata's results in a REAPI ActionCache: a key becomes an ``Action``, a realisation an
``ActionResult``.

The Action of a Kata key (a derivation hash ``kata-drv/4`` or a resolved hash
``kata-drv-resolved/4``, see ``kata.keys``) is a pure function of the key (golden in
``tests/golden/remote.json``)::

    Command  { arguments: ["kata-step", <key>],
               output_directories: ["kata/trees"], output_files: ["kata/record"] }
    Action   { command_digest, input_root_digest: <the empty Directory>,
               platform: {OSFamily=linux, ISA=x86-64, kata-key-format=kata-drv/4},
               salt: "kata-remote/1" }

The key already covers everything the step's result depends on (image digest, commands,
env, inputs, dependencies), so the Action needs nothing else; changing the salt abandons
every entry at once (REAPI's rule). The ActionResult of a realisation::

    output_files:       kata/record -> msgpack {"format": "kata-remote-record/1",
                        "realisation": <the kata-realisation/2 record (store.Realisation)>,
                        "trees": {<kata tree digest>: [<Tree hash>, <Tree size>], ...}} for
                        every tree of the record: its output tree and the stack it hands on
    output_directories: kata/trees/<hex> -> the step's own output tree, as a REAPI Tree +
                        root Directory (the stack's trees are other steps' outputs: they are
                        named in the record only, so a server that checks an entry's
                        outputs on every read does not walk the whole stack each time)
                        kata/report -> the step's test report blob (``reports:``; only
                        when it has one), so a host that hits shows the same totals
    stdout_digest:      the step's (masked) log blob
    exit_code:          0 (only passed steps are recorded)
    execution_metadata: worker = the host that ran it

Errors: RemoteError (kata.remote.cas) for any failure of the remote; an entry that is not
one Kata wrote in this shape is a miss, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import msgpack

from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote.cas import (
    Digest, Remote, RemoteError, busy, digest_of, message_digest, retrying, to_kata, wrap,
)
from store import Realisation, StoreError
from store.objects import check_digest
from store.realisations import FORMAT as REALISATION_FORMAT

SALT = b"kata-remote/1"
RECORD_PATH = "kata/record"
REPORT_PATH = "kata/report"
RECORD_FORMAT = "kata-remote-record/1"
TREES_DIR = "kata/trees"
KEY_FORMAT = "kata-drv/4"
PLATFORM = (("ISA", "x86-64"), ("OSFamily", "linux"), ("kata-key-format", KEY_FORMAT))
EMPTY_DIRECTORY = re_pb2.Directory()


@dataclass(frozen=True, slots=True)
class KeyAction:
    """The REAPI Action standing for one Kata key, with its Command (both go to the CAS)."""

    action: re_pb2.Action
    action_digest: Digest
    action_bytes: bytes
    command_digest: Digest
    command_bytes: bytes
    output_files: tuple[str, ...] = (RECORD_PATH,)  # what a lookup asks to have inlined


def action_for(key: str, *, verb: str = "kata-step", key_format: str = KEY_FORMAT,
               output_files: tuple[str, ...] = (RECORD_PATH,),
               output_directories: tuple[str, ...] = (TREES_DIR,)) -> KeyAction:
    """The Action of a Kata key (64 lowercase hex). Pure. The keyword arguments name
    another kind of entry (a bundle, ``kata.remote.bundle``); their defaults are a step's."""
    assert len(key) == 64, key
    command = re_pb2.Command(arguments=[verb, key], output_directories=list(output_directories),
                             output_files=list(output_files))
    command_digest, command_bytes = message_digest(command)
    empty_digest, _ = message_digest(EMPTY_DIRECTORY)
    props = PLATFORM if key_format == KEY_FORMAT else \
        tuple(sorted((*PLATFORM[:2], ("kata-key-format", key_format))))
    platform = re_pb2.Platform(properties=[re_pb2.Platform.Property(name=n, value=v)
                                           for n, v in props])
    action = re_pb2.Action(command_digest=command_digest, input_root_digest=empty_digest,
                           platform=platform, salt=SALT)
    action_digest, action_bytes = message_digest(action)
    return KeyAction(action=action, action_digest=action_digest, action_bytes=action_bytes,
                     command_digest=command_digest, command_bytes=command_bytes,
                     output_files=output_files)


@dataclass(frozen=True, slots=True)
class RemoteRecord:
    """A realisation the remote holds: the record, and per Kata tree the REAPI Tree digest
    to fetch it by; ``log`` is the REAPI digest of its log."""

    realisation: Realisation
    named: dict[str, tuple[str, int]]  # kata tree digest -> (Tree hash, size), as recorded
    log: Digest | None
    result: re_pb2.ActionResult | None  # None: read from a bundle (see ``action_result``)
    root: tuple[str, int] | None = None  # the output tree's root Directory (hash, size)
    report: Digest | None = None  # the REAPI digest of its test report blob, if any

    def action_result(self) -> re_pb2.ActionResult:
        """The ActionResult this record stands for (as read, or rebuilt the way
        ``result_for`` builds it: the same record file, so the same blobs)."""
        if self.result is not None:
            return self.result
        real = self.realisation
        trees = {t: (Digest(hash=h, size_bytes=n), Digest()) for t, (h, n) in self.named.items()
                 if t in (real.outputs, *real.stack)}
        if real.outputs in trees and self.root is not None:
            trees[real.outputs] = (trees[real.outputs][0],
                                   Digest(hash=self.root[0], size_bytes=self.root[1]))
        raw = encode_record(real, trees)
        return result_for(real, record=digest_of(raw), record_bytes=raw, trees=trees,
                          log=self.log, report=self.report)

    def tree_digest(self, tree: str) -> Digest:
        hexd, size = self.named[tree]
        return Digest(hash=hexd, size_bytes=size)

    def trees(self) -> list[tuple[str, Digest]]:
        """(kata tree digest, REAPI Tree digest) of every tree of the realisation."""
        real = self.realisation
        return [(t, self.tree_digest(t)) for t in dict.fromkeys((real.outputs, *real.stack)) if t]


def encode_record(real: Realisation, trees: dict[str, tuple[Digest, Digest]]) -> bytes:
    """The ``kata/record`` file of ``real`` (see the module docstring)."""
    return msgpack.packb({"format": RECORD_FORMAT, "realisation": real.encode(),
                          "trees": {t: [d.hash, d.size_bytes] for t, (d, _) in sorted(trees.items())}},
                         use_bin_type=True)


def decode_realisation(fields: object, checked: set[str] | None = None) -> Realisation:
    """A Realisation from the map ``Realisation.encode`` writes (already unpacked), every
    field validated as ``Realisation.decode`` does. ``checked``: digests of ``stack``
    validated before (filled as it goes), so the stacks of many records that share their
    trees (a deep graph: ~90 trees each, ~1,000 distinct) are each checked once.
    StoreError store.corrupt_record / store.bad_digest for anything else."""
    if not isinstance(fields, dict) or fields.get("format") != REALISATION_FORMAT:
        raise StoreError("store.corrupt_record", "remote realisation is unreadable")
    data = {k: v for k, v in fields.items() if k != "format"}
    stack = data.pop("stack", ())
    if not isinstance(stack, (list, tuple)):
        raise StoreError("store.corrupt_record", "remote realisation: stack is not a list")
    try:
        real = Realisation(**data)  # validates every field but the stack (empty here)
    except TypeError as err:
        raise StoreError("store.corrupt_record", f"remote realisation: {err}") from None
    checked = checked if checked is not None else set()
    for digest in stack:
        if digest not in checked:
            check_digest(digest)
            checked.add(digest)
    object.__setattr__(real, "stack", tuple(stack))  # each digest checked just above
    return real


def _decode_record(data: bytes, checked: set[str] | None = None,
                   ) -> tuple[Realisation, dict[str, tuple[str, int]]] | None:
    try:
        doc = msgpack.unpackb(data, raw=False)
        if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
            return None
        inner = doc["realisation"]
        real = decode_realisation(msgpack.unpackb(inner, raw=False) if isinstance(inner, bytes)
                                  else inner, checked)
        trees = doc["trees"]
        if not isinstance(trees, dict):
            return None
    except (ValueError, TypeError, KeyError, StoreError, msgpack.UnpackException):
        return None
    return real, trees


def result_for(real: Realisation, *, record: Digest, record_bytes: bytes,
               trees: dict[str, tuple[Digest, Digest]], log: Digest | None,
               report: Digest | None = None) -> re_pb2.ActionResult:
    """The ActionResult of ``real`` whose record file (``encode_record``) is
    ``record_bytes``; ``trees``: Kata tree -> (Tree digest, root Directory digest), one per
    tree of ``real.objects()``; ``report``: the digest of its test report blob."""
    result = re_pb2.ActionResult(exit_code=real.exit_status)
    result.output_files.append(re_pb2.OutputFile(path=RECORD_PATH, digest=record,
                                                 contents=record_bytes))
    if report is not None:
        result.output_files.append(re_pb2.OutputFile(path=REPORT_PATH, digest=report))
    if real.outputs in trees:
        tree_digest, root_digest = trees[real.outputs]
        result.output_directories.append(re_pb2.OutputDirectory(
            path=f"{TREES_DIR}/{real.outputs.partition(':')[2]}", tree_digest=tree_digest,
            root_directory_digest=root_digest))
    if log is not None:
        result.stdout_digest.CopyFrom(log)
    result.execution_metadata.worker = real.host
    return result


def record_of(result: re_pb2.ActionResult, record_bytes: bytes,
              checked: set[str] | None = None) -> RemoteRecord | None:
    """A RemoteRecord from an ActionResult Kata wrote (None for anything else: a result
    some other client stored under this action, a record that does not decode, a tree
    or the log missing from the result)."""
    decoded = _decode_record(record_bytes, checked)
    if decoded is None:
        return None
    real, named = decoded
    for tree in (real.outputs, *real.stack):
        entry = named.get(tree) if tree else ("", 0)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[0], str) and isinstance(entry[1], int)):
            return None
    log = result.stdout_digest if result.HasField("stdout_digest") else None
    if (real.log or None) != (to_kata(log) if log is not None else None):
        return None
    report = next((f.digest for f in result.output_files if f.path == REPORT_PATH), None)
    if report is not None and to_kata(report) != real.report:
        report = None  # not the report the record names: shown as none, never as another
    return RemoteRecord(realisation=real, named=named, log=log, result=result, report=report)


def record_digest(result: re_pb2.ActionResult) -> tuple[Digest, bytes] | None:
    """Where the record file of a result is (and its inline bytes, b"" when not inlined)."""
    for f in result.output_files:
        if f.path == RECORD_PATH:
            return f.digest, f.contents
    return None


class ActionCache:
    """GetActionResult / UpdateActionResult for Kata keys on one remote."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._instance = remote.config.instance

    def get_future(self, key: str, *, timeout: float | None = None,
                   action: KeyAction | None = None):  # noqa: ANN201 - a grpc future
        """Start GetActionResult for ``key`` (``action``: another kind of entry's Action;
        its output files asked inline); ``timeout``: seconds (default: the remote's)."""
        ka = action or action_for(key)
        req = re_pb2.GetActionResultRequest(instance_name=self._instance,
                                            action_digest=ka.action_digest,
                                            inline_output_files=list(ka.output_files))
        return self.remote.ac.GetActionResult.future(
            req, timeout=self.remote.cas.timeout if timeout is None else max(timeout, 0.001),
            metadata=self.remote.metadata)

    def answer(self, future, key: str, *, action: KeyAction | None = None,
               ) -> re_pb2.ActionResult | None:  # noqa: ANN001
        """The result of ``get_future(key)`` (None: not in the cache); asked again while the
        server is busy. RemoteError otherwise."""
        try:
            return future.result()
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if not busy(err):
                raise wrap(err, "GetActionResult") from None
        try:
            return retrying(lambda: self.get_future(key, action=action).result(),
                            "GetActionResult")
        except RemoteError as err:
            if "NOT_FOUND" in err.message:
                return None
            raise

    def get(self, key: str) -> RemoteRecord | None:
        """The record the remote holds for ``key`` (None: a miss)."""
        result = self.answer(self.get_future(key), key)
        return self.decode(result) if result is not None else None

    def decode(self, result: re_pb2.ActionResult, records: dict[str, bytes] | None = None,
               checked: set[str] | None = None) -> RemoteRecord | None:
        """The RemoteRecord of a result; its record file from the answer (inlined), from
        ``records`` (hash -> bytes, read beforehand for many results at once), or read now."""
        where = record_digest(result)
        if where is None:
            return None
        digest, data = where
        if not data and digest.size_bytes:
            data = (records or {}).get(digest.hash) or \
                self.remote.cas.read_many([digest])[digest.hash]
        return record_of(result, data, checked)

    def update(self, key: str, result: re_pb2.ActionResult, *,
               action: KeyAction | None = None) -> None:
        """Store ``result`` under ``key``'s Action (the Action and Command blobs must be in
        the CAS already: ``cas_blobs``)."""
        stored = re_pb2.ActionResult()
        stored.CopyFrom(result)
        for f in stored.output_files:
            f.contents = b""  # inline bytes are for answers, not for storing
        req = re_pb2.UpdateActionResultRequest(instance_name=self._instance,
                                               action_digest=(action or action_for(key)).action_digest,
                                               action_result=stored)
        retrying(lambda: self.remote.ac.UpdateActionResult(req, timeout=self.remote.cas.timeout,
                                                           metadata=self.remote.metadata),
                 "UpdateActionResult")


def cas_blobs(keys: tuple[str, ...], actions: tuple[KeyAction, ...] = (),
              ) -> dict[tuple[str, int], tuple[Digest, bytes]]:
    """The blobs that make the Actions of ``keys`` (and ``actions``) readable in the CAS
    (Action, Command, the empty input root), so any REAPI tool can see what an entry
    stands for."""
    out: dict[tuple[str, int], tuple[Digest, bytes]] = {}
    empty_digest, empty = message_digest(EMPTY_DIRECTORY)
    out[(empty_digest.hash, empty_digest.size_bytes)] = (empty_digest, empty)
    for ka in (*(action_for(key) for key in keys), *actions):
        for d, data in ((ka.action_digest, ka.action_bytes), (ka.command_digest, ka.command_bytes)):
            out[(d.hash, d.size_bytes)] = (d, data)
    return out


__all__ = ["ActionCache", "KeyAction", "RemoteRecord", "RemoteError", "action_for",
           "cas_blobs", "decode_realisation", "encode_record", "record_of", "result_for"]
