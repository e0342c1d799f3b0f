"""The pure halves of remote execution: a step spec as an REAPI Action and back, and
directories as REAPI trees (a dict-backed CAS stands in for BuildGrid's here; the real one
is in test_remote_exec.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.executor import action as act
from kata.executor import files
from kata.executor.client import runs_remotely
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.resources import Resources
from kata.runtimes.base import LOCAL_ONLY_LABEL, Mount, Readiness, ServiceSpec, StepSpec

IMAGE = "127.0.0.1:5000/kata/busybox@sha256:" + "a" * 64


def spec(**kw) -> StepSpec:
    base = dict(image=IMAGE, argv=("/bin/sh", "-c", "echo hi"), env={"B": "2", "A": "1"},
                workdir="/src", user="1000:1000", network="default", timeout=30.0,
                mounts=(Mount(kind="bind", target="/src", source="/tmp/ws"),),
                resources=Resources(memory=512 << 20, cpus=1.5, pids=100),
                services=(ServiceSpec(name="db", image=IMAGE, argv=("sh", "-c", "serve"),
                                      env={"X": "y"}, user="999",
                                      ready=Readiness(kind="tcp", target="5432", timeout=20.0),
                                      resources=Resources(memory=256 << 20)),))
    base.update(kw)
    return StepSpec(**base)


def test_a_spec_survives_the_trip_through_an_action() -> None:
    original = spec()
    remote = act.build_action(original, re_pb2.Digest(hash="0" * 64, size_bytes=1))
    action = re_pb2.Action()
    action.ParseFromString(remote.blobs[files.key(remote.digest)])
    command = re_pb2.Command()
    command.ParseFromString(remote.blobs[files.key(action.command_digest)])
    back = act.read_spec(command, act.spec_document(original), "/w/ws", {"kata.worker": "w1"})
    assert back.argv == original.argv and dict(back.env) == dict(original.env)
    assert (back.image, back.workdir, back.user, back.network, back.timeout) == \
        (original.image, original.workdir, original.user, original.network, original.timeout)
    assert back.resources == original.resources and back.services == original.services
    assert back.mounts == (Mount(kind="bind", target="/src", source="/w/ws"),)


def test_restored_cache_paths_reach_the_worker_and_only_they_need_spec_version_2() -> None:
    """The worker gives the step's user its restored `cache.paths` (as the realiser does
    locally); a step without any keeps version 1, which a worker that predates 2 runs."""
    command = re_pb2.Command(arguments=["true"])
    plain = act.spec_document(spec())
    assert b'"version":1' in plain and b"cache_paths" not in plain
    assert act.read_spec(command, plain, "/w/ws", {}).cache_paths == ()
    cached = act.spec_document(spec(cache_paths=("node_modules/", ".m2")))
    assert b'"version":2' in cached
    assert act.read_spec(command, cached, "/w/ws", {}).cache_paths == ("node_modules/", ".m2")
    for bad in (["/etc"], ["../up"], ["a/../../b"], [""], [3]):
        doc = cached.replace(b'["node_modules/",".m2"]', str(bad).replace("'", '"').encode())
        with pytest.raises(KataError) as err:
            act.read_spec(command, doc, "/w/ws", {})
        assert err.value.reason == "remote.bad_action", bad


def test_the_action_is_canonical_and_never_cached_by_the_executor() -> None:
    root = re_pb2.Digest(hash="0" * 64, size_bytes=1)
    one, two = act.build_action(spec(), root), act.build_action(spec(env={"A": "1", "B": "2"}), root)
    assert one.digest == two.digest  # env order does not matter: sorted by name
    action = re_pb2.Action()
    action.ParseFromString(one.blobs[files.key(one.digest)])
    assert action.do_not_cache and action.timeout.seconds == 31
    command = re_pb2.Command()
    command.ParseFromString(one.blobs[files.key(action.command_digest)])
    assert [e.name for e in command.environment_variables] == ["A", "B"]
    assert list(command.output_paths) == ["ws", "kata-services", "kata-special", "kata-error"]
    assert command.working_directory == "ws"
    props = [(p.name, p.value) for p in command.platform.properties]
    assert props == sorted(props)
    assert dict(props) == {"OSFamily": "linux", "ISA": "x86-64", "network": "default",
                           "container-image": f"docker://{IMAGE}", "memory": str(512 << 20),
                           "cpus": "1.5", "pids": "100"}
    assert set(dict(props)) - {"OSFamily", "ISA"} <= set(act.WILDCARD_KEYS)


def test_an_image_only_this_host_has_cannot_run_remotely() -> None:
    with pytest.raises(KataError) as err:
        act.platform(spec(image="sha256:" + "b" * 64))
    assert err.value.reason == "remote.image_unnamed"


def test_a_spec_kata_did_not_make_is_refused() -> None:
    with pytest.raises(KataError) as err:
        act.read_spec(re_pb2.Command(), b'{"version": 99}', "/w", {})
    assert err.value.reason == "remote.bad_action"


def test_steps_with_secrets_stay_local() -> None:
    assert runs_remotely(spec())
    secret = Mount(kind="bind", target="/run/kata/secrets", source="/tmp/s", readonly=True)
    assert not runs_remotely(spec(mounts=spec().mounts + (secret,)))
    svc = ServiceSpec(name="db", image=IMAGE, mounts=(secret,))
    assert not runs_remotely(spec(services=(svc,)))
    # a step that sees a secret step's artifacts: the realiser labels it local-only
    assert not runs_remotely(spec(labels={LOCAL_ONLY_LABEL: "1"}))


class DictCas:
    """A CAS in a dict (key -> bytes): what ``files.sync_dir`` and ``materialise`` read."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put_packed(self, packed: files.Packed) -> None:
        self.blobs.update(packed.directories)
        for h, path in packed.files.items():
            self.blobs[h] = Path(path).read_bytes()

    batch_limit = 1 << 20
    reads = 0  # blobs read one by one (ByteStream in the real one)

    def read_many(self, digests) -> dict[str, bytes]:  # noqa: ANN001
        return {d.hash: self.blobs[d.hash] for d in digests}

    def read(self, digest):  # noqa: ANN001, ANN201
        self.reads += 1
        yield self.blobs[digest.hash]


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = (p.read_bytes(), bool(p.stat().st_mode & 0o111))
    return out


def test_a_workspace_is_synced_to_the_output_tree(tmp_path: Path) -> None:
    before = tmp_path / "before"
    (before / "src" / "deep").mkdir(parents=True)
    (before / "src" / "keep.txt").write_text("same")
    (before / "src" / "deep" / "gone.txt").write_text("deleted remotely")
    (before / "becomes-dir").write_text("a file first")
    (before / "link").symlink_to("src/keep.txt")
    after = tmp_path / "after"
    (after / "src").mkdir(parents=True)
    (after / "src" / "keep.txt").write_text("same")
    (after / "becomes-dir").mkdir()
    (after / "becomes-dir" / "x").write_text("now a dir")
    (after / "bin").mkdir()
    (after / "bin" / "app").write_text("#!/bin/sh\n")
    os.chmod(after / "bin" / "app", 0o755)
    (after / "link").symlink_to("bin/app")
    (after / "big").write_bytes(os.urandom(DictCas.batch_limit + 10))
    packed_before = files.pack_dir(before)
    packed_after = files.pack_dir(after)
    cas = DictCas()
    cas.put_packed(packed_after)
    root, children = files.tree_index(files.tree_message(packed_after))
    written = files.sync_dir(cas, packed_before, root, children, before)  # type: ignore[arg-type]
    assert snapshot(before) == snapshot(after)
    assert cas.reads == 1  # the big blob was streamed
    assert written == 3  # becomes-dir/x, bin/app, big: keep.txt was not rewritten
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    files.materialise(cas, root, children, fresh)  # type: ignore[arg-type]
    assert snapshot(fresh) == snapshot(after)


def test_a_fifo_cannot_be_sent(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(KataError) as err:
        files.pack_dir(tmp_path)
    assert err.value.reason == "remote.unsupported_file"


def test_a_name_or_link_target_that_is_not_utf8_cannot_be_sent(tmp_path: Path) -> None:
    """REAPI names and symlink targets are UTF-8 strings; a file name Linux allows but UTF-8
    cannot encode was a UnicodeEncodeError out of protobuf (a traceback on the client, a
    crash retried by the scheduler on the worker). Refused by name instead."""
    raw = os.fsencode(tmp_path) + b"/dir/x\xffy"
    os.makedirs(os.path.dirname(raw))
    open(raw, "wb").close()
    with pytest.raises(KataError) as err:
        files.pack_dir(tmp_path)
    assert err.value.reason == "remote.unsupported_name" and "dir/x" in err.value.message
    os.unlink(raw)
    os.symlink(b"to\xfe", os.fsencode(tmp_path) + b"/dir/link")
    with pytest.raises(KataError) as err:
        files.pack_dir(tmp_path)
    assert err.value.reason == "remote.unsupported_name" and "dir/link" in err.value.message


def test_a_bad_executor_url_is_a_usage_error() -> None:
    from kata.executor.connection import connect

    with pytest.raises(KataError) as err:
        connect("postgres://x", where="--remote-executor")
    assert err.value.reason == "remote.bad_url" and err.value.exit_code == 2


def test_kata_worker_refuses_a_bad_executor_url(tmp_path: Path) -> None:
    from support.cli import KataProcess

    kata = KataProcess(tmp_path, store=tmp_path / "store")
    done = kata("worker", "--executor", "foo://x")
    assert done.returncode == 2 and "grpc://HOST:PORT" in done.stderr


class CountingCas(DictCas):
    """``DictCas`` that records what it was asked (it has no GetTree: a call fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def read_many(self, digests) -> dict[str, bytes]:  # noqa: ANN001
        digests = list(digests)
        self.asked.extend(d.hash for d in digests)
        return super().read_many(digests)


def test_the_blob_cache_keeps_the_recent_blobs_within_its_limits() -> None:
    cache = files.BlobCache(limit=10, largest=6)
    blobs = {c: c.encode() * 4 for c in "abc"}  # 4 bytes each
    for h, data in blobs.items():
        cache.put(h, data)
    assert cache.get("a") is None  # 12 bytes > 10: the oldest left
    assert cache.get("b") == b"bbbb"
    cache.put("d", b"dddd")  # "c" is now the least recently used
    assert cache.get("c") is None and cache.get("b") and cache.get("d")
    cache.put("big", b"x" * 7)  # over ``largest``: never kept
    assert cache.get("big") is None
    cas = CountingCas()
    cas.blobs = {"b": b"bbbb", "e": b"eeee"}
    got = cache.read_many(cas, [re_pb2.Digest(hash=h, size_bytes=4) for h in ("b", "e")])
    assert got == {"b": b"bbbb", "e": b"eeee"} and cas.asked == ["e"]  # "b" was kept
    assert cache.get("e") == b"eeee"  # and what the CAS answered is kept now


def test_a_worker_finds_the_next_input_root_in_its_cache(tmp_path: Path) -> None:
    """A chain: the worker sent step 1's workspace back; step 2's input root is that
    workspace plus a spec file. Its directories and files come from the cache: no GetTree
    (the fake CAS has none), reads only of the new root and the one file never seen."""
    ws = tmp_path / "ws"
    (ws / "out").mkdir(parents=True)
    (ws / "out" / "0").write_text("hello\n")
    (ws / "src.txt").write_text("src\n")
    sent = files.pack_dir(ws)  # what step 1's worker uploaded and keeps
    cache = files.BlobCache()
    for h, data in sent.directories.items():
        cache.put(h, data)
    for h, path in sent.files.items():
        cache.put(h, Path(path).read_bytes())
    cas = CountingCas()
    cas.put_packed(sent)
    top = files.Packed(root=re_pb2.Digest())
    root = files.join_root(top, {"ws": sent.root}, {"kata-spec.json": b"{}"})
    cas.blobs.update(top.directories)
    known = cache.read_many(cas, [root])  # type: ignore[arg-type] - as the worker reads it
    assert cas.asked == [root.hash]
    directories = files.directories(cas, root, known, cache=cache)  # type: ignore[arg-type]
    assert cas.asked == [root.hash]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    files.materialise(cas, directories[root.hash], directories, fresh,  # type: ignore[arg-type]
                      cache=cache)
    assert cas.asked == [root.hash, files.digest_of(b"{}").hash]  # and the spec file
    assert snapshot(fresh / "ws") == snapshot(ws)
    assert (fresh / "kata-spec.json").read_bytes() == b"{}"


def test_what_a_worker_runtime_raised_comes_back_as_the_same_error() -> None:
    """A service that never became ready on a worker fails the step with the reason and
    message a local run records, not as a failed execution."""
    err = KataError("service.not_ready", "service db was not ready after 2s", obj="db",
                    exit_code=1)
    back = act.read_error(act.error_document(err))
    assert (back.reason, back.message, back.obj, back.exit_code) == \
        ("service.not_ready", "service db was not ready after 2s", "db", 1)
    for bad in (b"{", b'{"reason": "Not A Reason", "message": "x"}', b'{"reason": "a.b"}',
                b'{"reason": "a.b", "message": "x", "exit_code": 7}'):
        with pytest.raises(KataError) as raised:
            act.read_error(bad)
        assert raised.value.reason == "remote.bad_answer", bad


def test_only_the_steps_own_runtime_errors_become_its_result() -> None:
    """A worker's own fault (its containerd failing, a pull it stopped) fails the lease;
    the step's own (its service, its user, an image that cannot be found or pulled) is its
    result, as locally: a failed lease read as lost inputs and was sent once more."""
    from kata.executor.worker import steps_own

    assert steps_own("service.not_ready") and steps_own("service.exited")
    assert steps_own("runtime.bad_user")
    assert steps_own("image.not_found") and steps_own("image.registry_unreachable")
    assert not steps_own("image.pull_stopped") and not steps_own("runtime.unreachable")


def test_the_limits_a_worker_applied_travel_in_auxiliary_metadata() -> None:
    meta = re_pb2.ExecutedActionMetadata()
    assert act.applied_memory(meta) is None  # an older worker says nothing: this host's
    act.add_applied_limits(meta, StepSpec(image="x", argv=("true",),
                                          resources=Resources(memory=96 << 20)))
    back = re_pb2.ExecutedActionMetadata.FromString(meta.SerializeToString())
    assert act.applied_memory(back) == 96 << 20
