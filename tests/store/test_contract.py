"""The contract every store location passes: a local directory and an sshfs mount.

Two "hosts" are two processes with separate state dirs (index, unpacked trees)
over one shared store, reached through two separate sshfs mounts in the sshfs case.
"""

from __future__ import annotations

import io
import os
import time

import pytest

from store import Realisation, Run, Store, StoreError
from store.index import is_network_fs

from .conftest import Shared, run_py


def _open(shared: Shared, host: str = "a") -> Store:
    if host == "a":
        return Store.open(shared.path_a, state_dir=shared.state_a)
    return Store.open(shared.path_b, state_dir=shared.state_b)


def test_blob_round_trip_and_already_present(shared: Shared) -> None:
    with _open(shared) as s:
        data = os.urandom(3 << 20) + b"tail"
        d = s.put_blob(data)
        assert d.startswith("sha256:") and s.has_blob(d)
        assert s.put_blob(io.BytesIO(data)) == d
        with s.open_blob(d) as f:
            assert f.read() == data
        assert s.put_blob(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        assert os.listdir(os.path.join(s.root, "tmp")) == []


def test_missing_blob_is_an_error(shared: Shared) -> None:
    with _open(shared) as s:
        with pytest.raises(StoreError) as err:
            s.open_blob("sha256:" + "0" * 64)
        assert err.value.reason == "store.missing_object"
        with pytest.raises(StoreError) as err:
            s.open_blob("md5:abc")
        assert err.value.reason == "store.bad_digest"


def test_index_never_on_network_fs(shared: Shared, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    s = Store.open(shared.path_a)
    try:
        assert is_network_fs(str(shared.path_a)) == (shared.kind == "sshfs")
        assert not is_network_fs(s.state_dir)
        inside = os.path.commonpath([s.state_dir, str(shared.path_a)]) == str(shared.path_a)
        assert inside == (shared.kind == "local")
        if shared.kind == "sshfs":
            assert s.state_dir.startswith(str(tmp_path / "xdg-state" / "kata" / "stores"))
    finally:
        s.close()


def test_realisation_written_by_one_host_found_by_other(shared: Shared, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "dist").mkdir(parents=True)
    (src / "dist" / "app").write_bytes(b"binary")
    (src / "junk").write_text("not packed")
    code = f"""
import sys, time
from store import Store, Realisation
s = Store.open({str(shared.path_a)!r}, state_dir={str(shared.state_a)!r})
t = s.put_tree({str(src)!r}, paths=("dist/",))
log = s.put_blob(b"build log")
s.put_realisation("k" * 64, Realisation(outputs=t, log=log, exit_status=0, duration=1.5,
                  host="a", created=time.time(), step="build", scope="ref:refs/heads/main"))
print(t)
s.close()
"""
    res = run_py(code)
    assert res.returncode == 0, res.stderr
    tree_digest = res.stdout.strip()
    with _open(shared, "b") as s:
        real = s.get_realisation("k" * 64)
        assert real is not None and real.outputs == tree_digest and real.host == "a"
        assert (real.step, real.scope) == ("build", "ref:refs/heads/main")
        assert s.read_blob(real.log) == b"build log"
        out = s.unpacked(real.outputs)
        assert open(os.path.join(out, "dist", "app"), "rb").read() == b"binary"
        assert not os.path.exists(os.path.join(out, "junk"))
        assert s.unpacked(real.outputs) == out
        assert out.startswith(str(shared.state_b))
        assert s.get_realisation("z" * 64) is None


def test_two_hosts_writing_the_same_objects_at_once(shared: Shared) -> None:
    code = """
import sys
from store import Store
s = Store.open(sys.argv[1], state_dir=sys.argv[2])
digests = [s.put_blob((b"%d-" % i) * (1000 * (i + 1))) for i in range(40)]
print(" ".join(digests))
s.close()
"""
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(state)],
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for root, state in ((shared.path_a, shared.state_a), (shared.path_b, shared.state_b))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0]
    with _open(shared) as s:
        for i, d in enumerate(outs[0][0].split()):
            assert s.read_blob(d) == (b"%d-" % i) * (1000 * (i + 1))
        report = s.verify()
        assert report.ok and report.objects == 40
        assert os.listdir(os.path.join(s.root, "tmp")) == []


def test_corruption_detected_on_read_and_by_verify(shared: Shared) -> None:
    with _open(shared) as s:
        data = bytes(range(256)) * 4000
        d = s.put_blob(data)
        t_ok = s.put_blob(b"other")
        s.put_realisation("c" * 64, Realisation(outputs=d, log=t_ok, created=time.time()))
        path = s.objects.path(d)
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 2] ^= 0x01
        os.chmod(path, 0o644)
        with open(path, "wb") as f:
            f.write(raw)
        with pytest.raises(StoreError) as err:
            s.read_blob(d)
        assert err.value.reason == "store.corrupt_object" and err.value.obj == d
        report = s.verify()
        assert report.corrupt == (d,) and not report.ok
        repaired = s.verify(repair=True)
        assert repaired.quarantined == (d,) and repaired.dropped == ("c" * 64,)
        assert s.get_realisation("c" * 64) is None
        assert s.verify().ok
        assert s.read_blob(t_ok) == b"other"


def test_flipped_byte_in_a_tree_is_reported_as_corruption(shared: Shared, tmp_path) -> None:
    src = tmp_path / "t"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(2000))
    with _open(shared) as s:
        t = s.put_tree(src)
        path = s.objects.path(t)
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 3] ^= 0x40
        open(path, "wb").write(raw)
        with pytest.raises(StoreError) as err:
            s.extract_tree(t, tmp_path / "out")
        assert err.value.reason == "store.corrupt_object"
        with pytest.raises(StoreError) as err:
            s.unpacked(t)
        assert err.value.reason == "store.corrupt_object"
        assert not os.path.exists(os.path.join(s.unpacked_dir, t[7:]))


def test_gc_keeps_roots_and_young_and_deletes_records_first(shared: Shared) -> None:
    with _open(shared) as s:
        old, kept, pinned, young = (s.put_blob(n.encode() * 100) for n in ("old", "kept", "pin", "young"))
        orphan = s.put_blob(b"orphan" * 100)
        now = time.time()
        for key, d in (("o" * 64, old), ("r" * 64, kept), ("p" * 64, pinned)):
            s.put_realisation(key, Realisation(outputs=d, created=now))
        s.put_run(Run(id="run1", pipeline="ci", branch="main", realisations=("r" * 64,)))
        s.pin("p" * 64)
        past = now - 7200
        for d in (old, kept, pinned, orphan):
            os.utime(s.objects.path(d), (past, past))
        for name, _, _ in s.iter_realisations():
            os.utime(s._realisation_path(name), (past, past))
        s.index.clear("objs")  # last-use from files only, as another host would see it
        s.put_realisation("y" * 64, Realisation(outputs=young, created=now))

        dry = s.gc(dry_run=True)
        assert set(dry.deleted_realisations) == {"o" * 64}
        assert set(dry.deleted_objects) == {old, orphan}
        assert s.has_blob(old)
        report = s.gc()
        assert set(report.deleted_objects) == {old, orphan}
        assert not s.has_blob(old) and not s.has_blob(orphan)
        assert s.get_realisation("o" * 64) is None
        for d in (kept, pinned, young):
            assert s.has_blob(d)
        assert s.verify().ok


def test_gc_max_size_deletes_oldest_first(shared: Shared) -> None:
    with _open(shared) as s:
        now = time.time()
        digests = []
        for i in range(5):
            d = s.put_blob(os.urandom(20000))
            digests.append(d)
            s.put_realisation(f"{i}" * 64, Realisation(outputs=d, created=now))
            t = now - 10000 + i * 100
            os.utime(s.objects.path(d), (t, t))
            os.utime(s._realisation_path(f"{i}" * 64), (t, t))
        s.index.clear("objs")
        size = s.stats()["size"]
        report = s.gc(max_size=size - 30000)
        assert set(report.deleted_objects) == set(digests[:2])
        assert [s.has_blob(d) for d in digests] == [False, False, True, True, True]
        assert s.get_realisation("0" * 64) is None and s.get_realisation("2" * 64) is not None
        assert s.verify().ok


def test_realisation_needs_its_objects(shared: Shared) -> None:
    with _open(shared) as s:
        with pytest.raises(StoreError) as err:
            s.put_realisation("m" * 64, Realisation(outputs="sha256:" + "1" * 64))
        assert err.value.reason == "store.missing_object"
        assert s.get_realisation("m" * 64) is None


def test_runs_and_derivations(shared: Shared) -> None:
    with _open(shared) as s:
        s.put_run(Run(id="r1", pipeline="ci", started=100.0, steps=()))
        s.put_run(Run(id="r2", pipeline="other", started=200.0))
        s.put_run(Run(id="r3", pipeline="ci", started=300.0))
        assert [r.id for r in s.list_runs()] == ["r3", "r2", "r1"]
        assert [r.id for r in s.list_runs(pipeline="ci", limit=1)] == ["r3"]
        assert s.get_run("r2").pipeline == "other"
        s.put_derivation("d" * 64, b"\x81\xa1a\x01")
        assert s.get_derivation("d" * 64) == b"\x81\xa1a\x01"
        assert s.get_derivation("e" * 64) is None
    with _open(shared, "b") as other:
        assert other.get_run("r1").started == 100.0


def test_gc_ages_entries_by_the_stores_clock_not_a_clock_ahead_of_it(shared: Shared,
                                                                      monkeypatch) -> None:
    """Last session's leftover: gc's grace period compared the files' mtimes with this
    host's wall clock. A host whose clock runs hours ahead of the filesystem stamping the
    store (a network store's server; a clock that jumped forward) deleted what had just
    been written. Now is the store's clock; an mtime in the future is fresh."""
    import store.gc as gc_module

    class Ahead:  # this host's clock three hours ahead of the store's
        @staticmethod
        def time() -> float:
            return time.time() + 3 * 3600

    with _open(shared) as s:
        fresh = s.put_blob(b"fresh" * 100)
        s.put_realisation("f" * 64, Realisation(outputs=fresh, created=time.time()))
        future = s.put_blob(b"future" * 100)  # written under a clock since set back
        s.put_realisation("u" * 64, Realisation(outputs=future, created=time.time()))
        later = time.time() + 7200
        os.utime(s.objects.path(future), (later, later))
        os.utime(s._realisation_path("u" * 64), (later, later))
        s.index.clear("objs")  # ages from the files, as another host sees them
        monkeypatch.setattr(gc_module, "time", Ahead)
        report = s.gc(keep_runs=0)
        assert report.deleted_objects == () and report.deleted_realisations == ()
        assert s.has_blob(fresh) and s.get_realisation("f" * 64) is not None
        assert s.has_blob(future) and s.get_realisation("u" * 64) is not None
        assert os.listdir(s.tmp) == []  # the clock probe is gone


def test_gc_keeps_what_a_host_behind_the_stores_clock_just_used(shared: Shared,
                                                                 monkeypatch) -> None:
    """The index stamps an object's last use with this host's clock, gc's "now" is the
    store's. A host two hours behind the filesystem stamping the store (a network store's
    server; a clock set back) that used an old object a moment ago recorded a use "two
    hours ago" by the store's clock, and gc deleted it under the one-hour grace. The
    index's times are read on this host's clock, the files' on the store's."""
    import store.gc as gc_module

    class Behind:  # this host's clock two hours behind the store's
        @staticmethod
        def time() -> float:
            return time.time() - 2 * 3600

    with _open(shared) as s:
        old = s.put_blob(b"old" * 100)
        s.put_realisation("o" * 64, Realisation(outputs=old, created=time.time()))
        earlier = time.time() - 3 * 3600  # written long ago, by the store's clock
        os.utime(s.objects.path(old), (earlier, earlier))
        os.utime(s._realisation_path("o" * 64), (earlier, earlier))
        s.index.note_objects({old: -1}, when=Behind.time())  # used just now, on this host
        monkeypatch.setattr(gc_module, "time", Behind)
        report = s.gc(keep_runs=0)
        assert report.deleted_objects == () and report.deleted_realisations == ()
        assert s.has_blob(old) and s.get_realisation("o" * 64) is not None
