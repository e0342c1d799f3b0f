"""The LMDB index: grows on demand, reclaims dead readers, rebuilds from the files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from store import Realisation, Run, Store
from store.index import LmdbIndex

from .conftest import REPO


def test_map_grows_instead_of_failing(tmp_path: Path) -> None:
    index = LmdbIndex(str(tmp_path / "idx"), map_size=64 * 1024)
    try:
        before = index.env.info()["map_size"]
        for i in range(200):
            index.put_realisation(f"{i:064d}", os.urandom(2000))
        assert index.env.info()["map_size"] > before
        assert len(index.realisation_keys()) == 200
    finally:
        index.close()


def test_dead_reader_slot_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    LmdbIndex(str(path)).close()
    code = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8)
txn = env.begin()
print("READING", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"READING\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    index = LmdbIndex(str(path))
    try:
        assert index.reader_check() == 0  # already reclaimed when the index was opened
        assert "(no active readers)" in index.env.readers() or str(proc.pid) not in index.env.readers()
    finally:
        index.close()


def test_stat_cache_protocol(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        cache = s.stat_cache
        assert cache.get_many(["/a", "/b"]) == {}
        a = (1, 2, 0o100644, 4, 5, 6, "sha256:" + "a" * 64)
        u = (7, 8, 0o100755, 10, 11, 12, "sha256:" + "b" * 64)
        cache.put_many({"/a": a, "/ü": u})
        assert cache.get_many(["/a", "/b", "/ü"]) == {"/a": a, "/ü": u}
    with Store.open(tmp_path / "store") as s:  # persistent
        assert s.stat_cache.get_many(["/a"]) == {"/a": a}


def test_stat_cache_ignores_entries_of_another_format(tmp_path: Path) -> None:
    """A version-1 entry ([size, mtime_ns, inode, digest], what an older kata wrote) must
    read as absent, not as a key whose fields mean something else."""
    import msgpack

    from store.index import STAT_FORMAT

    with Store.open(tmp_path / "store") as s:
        db = s.index.db["stat"]
        old = {b"/v1": msgpack.packb([2, 5, 7, "sha256:" + "c" * 64]),
               b"/short": msgpack.packb([STAT_FORMAT, 1, 2]),
               b"/junk": b"\xc1not msgpack",
               b"/v3": msgpack.packb([STAT_FORMAT + 1, 1, 2, 3, 4, 5, 6, "sha256:" + "d" * 64])}
        s.index.write(lambda t: [t.put(k, v, db=db) for k, v in old.items()])
        assert s.stat_cache.get_many(["/v1", "/short", "/junk", "/v3"]) == {}
        # and the current form round-trips through the same db
        s.stat_cache.put_many({"/v1": (1, 2, 3, 4, 5, 6, "sha256:" + "e" * 64)})
        assert s.stat_cache.get_many(["/v1"]) == {"/v1": (1, 2, 3, 4, 5, 6, "sha256:" + "e" * 64)}


def test_index_deleted_loses_nothing_and_reindex_rebuilds(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store", state_dir=tmp_path / "state") as s:
        d = s.put_blob(b"out")
        s.put_realisation("a" * 64, Realisation(outputs=d, exit_status=3))
        s.put_run(Run(id="r1", pipeline="p"))
        s.count(True)
    shutil.rmtree(tmp_path / "state")
    with Store.open(tmp_path / "store", state_dir=tmp_path / "state") as s:
        assert s.index.realisation_keys() == []
        report = s.verify(reindex=True)
        assert report.ok and report.reindexed
        assert s.index.realisation_keys() == ["a" * 64]
        assert s.index.get_run("r1") is not None
        assert s.get_realisation("a" * 64).exit_status == 3
        assert list(s.index.object_info()) == [d]


def test_hit_miss_counters(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        for hit in (True, True, True, False):
            s.count(hit)
        st = s.stats()
        assert (st["hits"], st["misses"]) == (3, 1)


def test_gc_racing_writers_never_leaves_a_dangling_realisation(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store.open(root).close()
    writer = """
import sys, time
from store import Store, Realisation, StoreError
s = Store.open(sys.argv[1], state_dir=sys.argv[2], grace=0.2)
ok = 0
for i in range(300):
    data = b"shared-%d" % (i % 7)   # re-used objects: the interesting race
    while True:
        d = s.put_blob(data)
        try:
            s.put_realisation("%064d" % i, Realisation(outputs=d))
            ok += 1
            break
        except StoreError as err:
            assert err.reason == "store.missing_object", err.reason
print(ok)
"""
    collector = """
import sys, time
from store import Store
s = Store.open(sys.argv[1], state_dir=sys.argv[2])
end = time.time() + float(sys.argv[3])
n = 0
while time.time() < end:
    s.gc(grace=0.2, keep_runs=0)
    n += 1
print(n)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    w = subprocess.Popen([sys.executable, "-c", writer, str(root), str(tmp_path / "sw")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    g = subprocess.Popen([sys.executable, "-c", collector, str(root), str(tmp_path / "sg"), "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wout, werr = w.communicate(timeout=120)
    gout, gerr = g.communicate(timeout=120)
    assert w.returncode == 0, werr
    assert g.returncode == 0, gerr
    assert int(wout) == 300 and int(gout) >= 1
    with Store.open(root, state_dir=tmp_path / "check") as s:
        report = s.verify()
        assert report.missing == () and report.corrupt == ()


def test_map_grown_by_another_process_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    index = LmdbIndex(str(path), map_size=64 * 1024)
    try:
        index.put_realisation("a" * 64, b"first")
        grow = """
import os, sys
from store.index import LmdbIndex
i = LmdbIndex(sys.argv[1], map_size=64 * 1024)
for n in range(300):
    i.put_realisation("%064d" % n, os.urandom(2000))
print(i.env.info()["map_size"])
"""
        res = subprocess.run([sys.executable, "-c", grow, str(path)], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert res.returncode == 0, res.stderr
        assert int(res.stdout) > 64 * 1024
        assert index.get_realisation("%064d" % 299) is not None
        index.put_realisation("b" * 64, os.urandom(5000))
        assert len(index.realisation_keys()) == 302
    finally:
        index.close()


def test_gc_older_than_protects_recent_use(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store") as s:
        now = __import__("time").time()
        ages = {"day": 86400 * 2, "hour": 7200}
        digests = {}
        for name, age in ages.items():
            digests[name] = s.put_blob(name.encode())
            os.utime(s.objects.path(digests[name]), (now - age, now - age))
        s.index.clear("objs")
        report = s.gc(older_than=86400)
        assert report.deleted_objects == (digests["day"],)
        assert s.has_blob(digests["hour"])
