"""kata.remote without a server (pure values: the Action of a key, pinned by a golden file;
the ActionResult of a realisation; the remote: config with file:line:column errors) and the
degrade rules against a port nobody listens on; the realiser re-building a remote hit whose
trees cannot be fetched any more (a real BuildGrid, killed between plan and run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.hostconfig import load_host_config
from kata.remote.actioncache import action_for, encode_record, record_of, result_for
from kata.remote.cas import Digest, RemoteError, digest_of
from kata.remote.config import from_host_config, parse_url
from store import Realisation

GOLDEN = Path(__file__).parent / "golden" / "remote.json"
T1 = "sha256:" + "1" * 64
T2 = "sha256:" + "2" * 64
LOG = b"built it\n"


def test_action_of_a_key_is_pinned():
    ka = action_for("a" * 64)
    got = {"action_for(aaaa...)": {
        "action": f"{ka.action_digest.hash}/{ka.action_digest.size_bytes}",
        "command": f"{ka.command_digest.hash}/{ka.command_digest.size_bytes}"}}
    golden = json.loads(GOLDEN.read_text())
    assert got == {k: golden[k] for k in got}
    assert action_for("b" * 64).action_digest != ka.action_digest
    props = {p.name: p.value for p in ka.action.platform.properties}
    assert props == {"OSFamily": "linux", "ISA": "x86-64", "kata-key-format": "kata-drv/4"}
    assert ka.action.salt == b"kata-remote/1"


def _real(**kw) -> Realisation:
    base = dict(outputs=T2, log="sha256:" + digest_of(LOG).hash, exit_status=0, duration=1.5,
                host="a", created=1.0, kind="step", run="r1", pipeline="p", step="s",
                stack=(T1, T2))
    base.update(kw)
    return Realisation(**base)


def test_result_round_trip():
    real = _real()
    trees = {T1: (Digest(hash="3" * 64, size_bytes=10), Digest(hash="4" * 64, size_bytes=5)),
             T2: (Digest(hash="5" * 64, size_bytes=11), Digest(hash="6" * 64, size_bytes=6))}
    raw = encode_record(real, trees)
    result = result_for(real, record=digest_of(raw), record_bytes=raw, trees=trees,
                        log=digest_of(LOG))
    # the step's own output tree is an output directory; the stack is named in the record
    assert [d.path for d in result.output_directories] == [f"kata/trees/{'2' * 64}"]
    assert [f.path for f in result.output_files] == ["kata/record"]
    assert result.execution_metadata.worker == "a"
    rec = record_of(result, raw)
    assert rec is not None and rec.realisation == real
    assert rec.tree_digest(T1).hash == "3" * 64
    # anything else stored under the action is a miss, not an error
    assert record_of(result, b"not a record") is None
    assert record_of(result, real.encode()) is None
    assert record_of(result, encode_record(real, {T2: trees[T2]})) is None  # a tree unnamed


def _config(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path, load_host_config(path)


def _files(tmp_path: Path) -> tuple[str, str]:
    """A PEM file and a token file that the config may name (their content is checked)."""
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n")
    (tmp_path / "tok").write_text("a-token\n")
    return str(tmp_path / "ca.pem"), str(tmp_path / "tok")


def test_remote_config(tmp_path):
    ca, tok = _files(tmp_path)
    _, cfg = _config(tmp_path, "remote:\n  cache: grpcs://cache.example:443\n  instance: main\n"
                     f"  tls: {{ca: {ca}}}\n  token_file: {tok}\n  timeout: 30s\n")
    rc = from_host_config(cfg)
    assert rc is not None
    assert (rc.target, rc.tls, rc.instance, str(rc.ca), str(rc.token_file), rc.timeout) == \
        ("cache.example:443", True, "main", ca, tok, 30.0)
    # the flags win over the file
    flag = from_host_config(cfg, url="grpc://10.0.0.1:9092", instance="")
    assert flag is not None and (flag.target, flag.tls, flag.instance) == ("10.0.0.1:9092", False, "")
    assert (rc.connect_timeout, rc.backoff) == (2.0, 60.0)  # the defaults
    _, tuned = _config(tmp_path, "remote:\n  cache: grpc://c:1\n  connect_timeout: 500ms\n"
                       "  backoff: 0s\n")
    rc = from_host_config(tuned)
    assert rc is not None and (rc.connect_timeout, rc.backoff) == (0.5, 0.0)
    _, empty = _config(tmp_path, "offline: false\n")
    assert from_host_config(empty) is None
    assert parse_url("grpc://[::1]:8980") == ("[::1]:8980", False)


def test_the_executor_comes_from_the_host_config_with_the_remotes_settings(tmp_path):
    """``remote.executor`` is the --remote-executor default and shares the section's
    instance, TLS files, token and timeout; a cache-only section names no executor."""
    ca, tok = _files(tmp_path)
    _, cfg = _config(tmp_path, "remote:\n  executor: grpcs://exec.example:443\n"
                     f"  instance: main\n  tls: {{ca: {ca}}}\n  token_file: {tok}\n")
    ex = from_host_config(cfg, key="executor")
    assert ex is not None
    assert (ex.url, ex.target, ex.tls, ex.instance, str(ex.ca), str(ex.token_file)) == \
        ("grpcs://exec.example:443", "exec.example:443", True, "main", ca, tok)
    assert from_host_config(cfg) is None  # no cache named
    flag = from_host_config(cfg, url="grpc://127.0.0.1:1", key="executor")
    assert flag is not None and (flag.target, flag.tls) == ("127.0.0.1:1", False)
    _, cache_only = _config(tmp_path, "remote:\n  cache: grpc://c:1\n")
    assert from_host_config(cache_only, key="executor") is None
    path, bad = _config(tmp_path, "remote:\n  executor: http://x:1\n")
    with pytest.raises(KataError) as err:
        from_host_config(bad, key="executor")
    assert err.value.reason == "remote.bad_url" and str(err.value.position).endswith(":2:3")
    assert "remote.executor" in err.value.message


def test_the_logstream_server_is_the_executors_setting(tmp_path):
    """``remote.logstream`` goes with the executor (None: read streams at the executor);
    a bad URL is an error at its key."""
    _, cfg = _config(tmp_path, "remote:\n  executor: grpc://e:1\n  cache: grpc://c:1\n"
                     "  logstream: grpc://logs:50052\n")
    ex = from_host_config(cfg, key="executor")
    assert ex is not None and ex.logstream == "grpc://logs:50052"
    cache = from_host_config(cfg)
    assert cache is not None and cache.logstream is None
    _, plain = _config(tmp_path, "remote:\n  executor: grpc://e:1\n")
    assert from_host_config(plain, key="executor").logstream is None  # type: ignore[union-attr]
    _, bad = _config(tmp_path, "remote:\n  executor: grpc://e:1\n  logstream: logs:1\n")
    with pytest.raises(KataError) as err:
        from_host_config(bad, key="executor")
    assert err.value.reason == "remote.bad_url" and str(err.value.position).endswith(":3:3")


@pytest.mark.parametrize("text, reason, where", [
    ("remote:\n  cache: http://x:1\n", "remote.bad_url", ":2:3"),
    ("remote:\n  cache: grpc://x:1\n  tokenfile: /t\n", "config.unknown_key", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  tls: {ca: /c}\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpcs://x:1\n  tls:\n    cert: /c\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpcs://x:1\n  timeout: soon\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  connect_timeout: 0s\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  connect_timeout: [2]\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  backoff: -1m\n", "config.bad_value", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  backoff: a while\n", "config.bad_value", ":3:3"),
    ("remote: [1]\n", "config.bad_value", ":1:1"),
    # a file that cannot serve: named at its key, before anything connects
    ("remote:\n  cache: grpc://x:1\n  token_file: /nonexistent/tok\n",
     "remote.token_unreadable", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  token_file: /\n", "remote.token_unreadable", ":3:3"),
    ("remote:\n  cache: grpc://x:1\n  token_file: /dev/null\n", "remote.token_unreadable",
     ":3:3"),
    ("remote:\n  cache: grpcs://x:1\n  tls:\n    ca: /nonexistent/ca.pem\n",
     "remote.tls_unreadable", ":4:5"),
    ("remote:\n  cache: grpcs://x:1\n  tls:\n    ca: /etc/hostname\n",
     "remote.tls_unreadable", ":4:5"),
    ("remote:\n  cache: grpcs://x:1\n  tls:\n    cert: /etc/hostname\n    key: /etc/hostname\n",
     "remote.tls_unreadable", ":4:5"),
])
def test_bad_remote_config_names_the_place(tmp_path, text, reason, where):
    path, cfg = _config(tmp_path, text)
    with pytest.raises(KataError) as err:
        from_host_config(cfg)
    assert err.value.reason == reason and err.value.exit_code == 2
    assert str(err.value.position).endswith(where), str(err.value.position)
    with pytest.raises(KataError) as err:
        parse_url("grpc://host")
    assert err.value.reason == "remote.bad_url"


def test_a_remote_nobody_answers_warns_once_and_misses(tmp_path):
    from kata.remote.cache import RemoteCache
    from kata.remote.config import RemoteConfig
    from store import Store
    from support.buildgrid import _free_port

    url = f"grpc://127.0.0.1:{_free_port()}"
    warned: list[str] = []
    remote = RemoteCache(RemoteConfig(url=url, target=parse_url(url)[0], timeout=2),
                         warn=warned.append)
    remote.prefetch(["a" * 64, "b" * 64])
    assert remote.lookup("a" * 64) is None and remote.lookup("c" * 64) is None
    with Store.open(tmp_path / "s") as store:
        log = store.put_blob(LOG)
        real = _real(log=log, outputs=store.put_tree(tmp_path, paths=()), stack=())
        remote.upload(store, ("d" * 64,), real)  # dropped, never raised
        trees = {real.outputs: (Digest(hash="5" * 64, size_bytes=1),
                                Digest(hash="6" * 64, size_bytes=1))}
        raw = encode_record(real, trees)
        rec = record_of(result_for(real, record=digest_of(raw), record_bytes=raw, trees=trees,
                                   log=digest_of(LOG)), raw)
        assert rec is not None
        with pytest.raises(RemoteError):
            remote.fetch(store, rec)
    assert len(warned) == 1 and warned[0].startswith(f"remote cache {url} unavailable (")
    remote.close()


def test_a_remote_that_never_answers_is_left_after_its_timeout():
    """A server that accepts connections and says nothing (a hung remote): the first call
    runs into its deadline, the remote is left with one warning, later lookups are free."""
    import socket
    import time

    from kata.remote.cache import RemoteCache
    from kata.remote.config import RemoteConfig

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepted by the kernel, never read
    url = f"grpc://127.0.0.1:{hole.getsockname()[1]}"
    warned: list[str] = []
    remote = RemoteCache(RemoteConfig(url=url, target=parse_url(url)[0], timeout=1),
                         warn=warned.append)
    try:
        started = time.monotonic()
        remote.prefetch(["a" * 64])
        assert remote.lookup("a" * 64) is None
        for _ in range(100):
            assert remote.lookup("b" * 64) is None
        assert time.monotonic() - started < 10
        assert len(warned) == 1 and "DEADLINE_EXCEEDED" in warned[0]
    finally:
        remote.close()
        hole.close()


def test_a_bundle_is_pinned_and_round_trips_every_record():
    """The bundle (kata.remote.bundle): its key ignores order and repeats, its Action is
    pinned by the golden file, and every record comes back as it went, with the very
    ActionResult a per-step entry holds (so an early cutoff can re-file it)."""
    from kata.remote.actioncache import RemoteRecord
    from kata.remote.bundle import bundle_action, bundle_key, decode_bundle, encode_bundle

    key = bundle_key(["b" * 64, "a" * 64, "b" * 64])
    assert key == bundle_key(["a" * 64, "b" * 64]) != bundle_key(["a" * 64])
    ka = bundle_action(key)
    golden = json.loads(GOLDEN.read_text())
    assert golden["bundle_action(bundle_key([aaaa..., bbbb...]))"] == {
        "key": key, "action": f"{ka.action_digest.hash}/{ka.action_digest.size_bytes}"}
    props = {p.name: p.value for p in ka.action.platform.properties}
    assert props["kata-key-format"] == "kata-bundle/1" and ka.output_files == ("kata/bundle",)

    trees = {T1: (Digest(hash="3" * 64, size_bytes=10), Digest(hash="4" * 64, size_bytes=5)),
             T2: (Digest(hash="5" * 64, size_bytes=11), Digest(hash="6" * 64, size_bytes=6))}
    records = {}
    for k, real in (("c" * 64, _real()), ("d" * 64, _real(stack=(T1,), outputs=T1, log=None))):
        raw = encode_record(real, {t: trees[t] for t in (real.outputs, *real.stack)})
        result = result_for(real, record=digest_of(raw), record_bytes=raw, trees=trees,
                            log=digest_of(LOG) if real.log else None)
        rec = record_of(result, raw)
        assert rec is not None
        out = trees[real.outputs][1]
        records[k] = RemoteRecord(realisation=rec.realisation, named=rec.named, log=rec.log,
                                  result=rec.result, root=(out.hash, out.size_bytes))
    back = decode_bundle(encode_bundle(records))
    assert back is not None and set(back) == set(records)
    for k, rec in records.items():
        got = back[k]
        assert got.realisation == rec.realisation
        assert got.named == {t: tuple(v) for t, v in rec.named.items()}
        assert got.log == rec.log and got.result is None
        stored = lambda r: r.SerializeToString(deterministic=True)  # noqa: E731
        assert stored(got.action_result()) == stored(rec.result)
    assert decode_bundle(b"junk") is None
    assert decode_bundle(encode_record(_real(), trees)) is None  # a record is not a bundle


def test_a_file_digest_is_remembered_only_once_it_cannot_be_racy(tmp_path):
    """kata.executor.files.DigestMemo: git's racily-clean rule, and a change is seen."""
    import os
    import time

    from kata.executor import files

    memo = files.DigestMemo()
    path = tmp_path / "f"
    path.write_bytes(b"one")
    st = os.lstat(path)
    assert memo.digest("f", str(path), st) == files.digest_of(b"one")
    assert memo._known == {}  # just written: its ctime could not tell a change apart
    old = time.time_ns() - 10**10
    os.utime(path, ns=(old, old))  # the mtime is old, but the utime itself set the ctime
    memo.RACY = -1.0  # as if the file were old enough (ctime cannot be set back)
    st = os.lstat(path)
    memo.digest("f", str(path), st)
    assert len(memo._known) == 1
    path.write_bytes(b"two")  # same size, new content: a new ctime and mtime
    assert memo.digest("f", str(path), os.lstat(path)) == files.digest_of(b"two")
    assert memo.digest("g", str(path), st) == files.digest_of(b"two")  # another path: read


def test_only_trees_of_many_small_files_travel_packed():
    from kata.remote.trees import PACK_FILES, PACK_MEAN_BYTES, packs

    assert packs(PACK_FILES, PACK_FILES * 4096)
    assert not packs(PACK_FILES - 1, 0)  # few files: a blob each costs little
    assert packs(PACK_FILES, PACK_FILES * PACK_MEAN_BYTES)
    assert not packs(PACK_FILES, PACK_FILES * PACK_MEAN_BYTES + 1)  # big files: not twice


def test_a_trees_archive_size_follows_from_its_entries(tmp_path):
    import os

    from kata.remote.trees import archive_digest
    from store import Store
    from store import tree as kata_tree

    (tmp_path / "src" / "d" / "empty").mkdir(parents=True)
    (tmp_path / "src" / "d" / "f").write_bytes(b"x" * 5000)
    (tmp_path / "src" / "d" / "zero").write_bytes(b"")
    os.chmod(tmp_path / "src" / "d" / "zero", 0o755)
    os.symlink("/usr/bin/env", tmp_path / "src" / "d" / "link")
    store = Store.open(tmp_path / "store")
    tree = store.put_tree(tmp_path / "src", paths=("d",))
    listing = []
    with store.open_blob(tree) as blob:
        for kind, parts, arg, rd in kata_tree.entries(blob):
            listing.append((kind, b"/".join(parts), arg))
            if kind in ("f", "x"):
                b"".join(rd.chunks(arg, parts))
    digest = archive_digest(tree, listing)
    assert (digest.hash, digest.size_bytes) == (tree.partition(":")[2], len(store.read_blob(tree)))
    store.close()


@pytest.mark.parametrize("content", [
    b"\xa7\x00\xff binary", "tökén".encode(), b"two\nlines", b"tab\there", b"ctl\x01char",
])
def test_a_token_that_cannot_be_a_header_is_an_error_at_its_key(tmp_path, content):
    """A bearer token travels as an HTTP/2 header value: bytes that are not UTF-8 raised a
    traceback, and non-ASCII or control characters made gRPC core log its own error on every
    call. Refused at ``token_file`` (exit 2) instead, as `kata doctor`, `run` and `worker` read it."""
    (tmp_path / "tok").write_bytes(content)
    path, cfg = _config(tmp_path, f"remote:\n  cache: grpc://x:1\n  token_file: {tmp_path / 'tok'}\n")
    with pytest.raises(KataError) as err:
        from_host_config(cfg)
    assert err.value.reason == "remote.bad_token" and err.value.exit_code == 2
    assert str(err.value.position).endswith(":3:3"), str(err.value.position)
    assert "printable ASCII" in err.value.message


def test_a_token_with_surrounding_blanks_is_taken_stripped(tmp_path):
    (tmp_path / "tok").write_bytes(b"  eyJ.abc-_~+/=  \n")
    _, cfg = _config(tmp_path, f"remote:\n  cache: grpc://x:1\n  token_file: {tmp_path / 'tok'}\n")
    from kata.remote.cas import read_token

    assert read_token(from_host_config(cfg)) == "eyJ.abc-_~+/="


def test_the_pending_queue_holds_whole_entries_only(tmp_path):
    """kata.remote.pending: an entry is a renamed-into-place file named by its bytes (the
    same entry twice is one file), oldest first; a file that does not parse is deleted, a
    dot-file (one being written) skipped; one drainer at a time."""
    import os

    from kata.remote.pending import FORMAT, Pending, PendingUploads

    queue = PendingUploads(tmp_path / "q")
    assert queue.names() == [] and queue.entries() == []  # no directory yet
    first = queue.add(("a" * 64, "b" * 64))
    assert queue.add(("a" * 64, "b" * 64)) == first
    os.utime(queue.directory / first, (1, 1))  # older
    alias = queue.add(("c" * 64,), alias_of="d" * 64)
    (queue.directory / ("e" * 64 + ".json")).write_text('{"format": "' + FORMAT + '", "ke')
    (queue.directory / ".tmp-x").write_text("{")
    entries = queue.entries()
    assert [e.name for e in entries] == [first, alias]
    assert entries[0].keys == ("a" * 64, "b" * 64) and entries[1].alias_of == "d" * 64
    assert sorted(queue.names()) == sorted([first, alias])  # the torn one is gone
    assert Pending.decode(b'{"format": "' + FORMAT.encode() + b'", "keys": ["../x"]}', "n") is None
    queue.done(first)
    queue.done(first)  # idempotent
    assert queue.names() == [alias]
    with queue.draining() as mine, queue.draining() as other:
        assert mine and not other


def test_the_backoff_memo_names_its_remote_and_expires(tmp_path):
    from kata.remote.backoff import Backoff

    path = tmp_path / "state" / "remote-backoff.json"
    memo = Backoff(path, remote="grpc://a:1 main")
    assert memo.active() is None
    assert memo.failed("GetCapabilities: DEADLINE_EXCEEDED\nmore", seconds=0) is None
    assert not path.exists()  # 0: no back-off
    down = memo.failed("GetCapabilities: DEADLINE_EXCEEDED\nmore", seconds=60)
    assert down is not None and down.reason == "GetCapabilities: DEADLINE_EXCEEDED"
    got = memo.active()
    assert got is not None and got.reason == down.reason
    assert "not asked again until" in got.describe() and "kata remote push" in got.describe()
    assert memo.active(now=down.until + 1) is None  # over
    assert Backoff(path, remote="grpc://b:1 main").active() is None  # another remote's
    path.write_text("{not json")
    assert memo.active() is None  # unreadable: as if absent
    memo.failed("x", seconds=60)
    memo.clear()
    memo.clear()
    assert memo.active() is None and not path.exists()


def test_the_backoff_memo_ends_when_the_clock_jumps_back(tmp_path):
    """A remote timed out while the clock was a day ahead; NTP then set it right: the memo
    said "not asked again until" tomorrow, and every run for a day left the remote alone
    (its `until` is unix time). Written by a clock that has since gone back, it is over."""
    import time

    from kata.remote.backoff import Backoff

    memo = Backoff(tmp_path / "remote-backoff.json", remote="grpc://a:1 main")
    down = memo.failed("GetCapabilities: DEADLINE_EXCEEDED", seconds=60)
    assert down is not None
    assert memo.active(now=time.time() + 30) is not None  # still within its 60 s
    assert memo.active(now=time.time() - 86400) is None  # the clock went back a day


_KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed before its rename
what = sys.argv[1]
if what == "pending":
    from kata.remote.pending import PendingUploads
    PendingUploads(Path(sys.argv[2])).add(("a" * 64,))
elif what == "backoff":
    from kata.remote.backoff import Backoff
    Backoff(Path(sys.argv[2]) / "remote-backoff.json", remote="grpc://a:1 ").failed("t", seconds=60)
else:
    from kata.atomicfile import write_atomic
    write_atomic(Path(sys.argv[2]) / "memo", b"tree")
"""


@pytest.mark.parametrize("what", ["pending", "backoff", "memo"])
def test_a_writer_killed_before_its_rename_leaves_no_temporary_file_for_ever(tmp_path, what):
    """The pending queue, the back-off memo and every whole-file replacement
    (kata.atomicfile: Tree memos, no-op records, loaded configs) write a temporary file
    and rename it. A writer SIGKILLed between the two left the temporary file (a
    ``tempfile.mkstemp`` name, in the pending queue and the state directory) for ever:
    the next process to write or drain there now removes it, and never a live writer's."""
    import os
    import signal
    import subprocess
    import sys

    from kata.atomicfile import tmp_path as atomic_tmp
    from kata.atomicfile import write_atomic
    from kata.remote.backoff import Backoff
    from kata.remote.pending import PendingUploads

    folder = tmp_path / "d"
    folder.mkdir()
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER.format(root=root), what,
                           str(folder)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p.name for p in folder.iterdir()]
    assert len(left) == 1 and left[0].startswith("."), left  # the killed writer's file
    live = atomic_tmp(folder / "other")  # a live writer's (this process): never removed
    Path(live).write_bytes(b"half")
    if what == "pending":
        queue = PendingUploads(folder)
        assert queue.entries() == []  # a drainer (`kata remote push`) sweeps too
        assert sorted(p.name for p in folder.iterdir()) == [os.path.basename(live)]
        queue.add(("b" * 64,))
    elif what == "backoff":
        Backoff(folder / "remote-backoff.json", remote="grpc://a:1 ").failed("t", seconds=60)
    else:
        write_atomic(folder / "memo", b"tree")
    names = sorted(p.name for p in folder.iterdir())
    assert left[0] not in names and os.path.basename(live) in names, names
