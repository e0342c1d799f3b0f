"""SIGKILL a writer at random points, many times: the store stays clean.

Each writer process opens the store, writes one realisation, says READY and goes
on writing blobs, trees and realisations as fast as it can, printing ACK after each
put_realisation returns. It is killed 5-50 ms later. Afterwards verify finds no corrupt object, no visible
partial object, and every acknowledged realisation reads back byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from store import Store

from .conftest import REPO

KILLS = 55

WRITER = r"""
import hashlib, os, sys, time
from store import Store, Realisation
root, state, seed, scratch = sys.argv[1:5]
s = Store.open(root, state_dir=state)
i = 0
while True:
    key = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
    body = hashlib.sha256(key.encode()).digest() * (1 + i % 97)
    if i % 4 == 3:
        d = os.path.join(scratch, f"t{seed}-{i}")
        os.makedirs(os.path.join(d, "sub"), exist_ok=True)
        for n in range(3):
            with open(os.path.join(d, "sub", f"f{n}"), "wb") as fh:
                fh.write(body[n:])
        out = s.put_tree(d)
        kind = "tree"
    else:
        out = s.put_blob(body)
        kind = "blob"
    log = s.put_blob(b"log of " + key.encode())
    s.put_realisation(key, Realisation(outputs=out, log=log, created=time.time(), host=seed))
    print("ACK", kind, key, i, flush=True)
    if i == 0:
        print("READY", flush=True)  # in full swing: the kill lands mid-write
    i += 1
"""


def _expected(key: str, i: int) -> bytes:
    return hashlib.sha256(key.encode()).digest() * (1 + i % 97)


def test_sigkill_writers_leave_a_clean_store(tmp_path: Path) -> None:
    root, state, scratch = tmp_path / "store", tmp_path / "state", tmp_path / "scratch"
    scratch.mkdir()
    rng = random.Random(1234)
    acks: list[tuple[str, str, int]] = []
    for n in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(state), f"w{n}", str(scratch)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert second == b"READY\n", proc.stderr.read() if proc.stderr else second
        time.sleep(rng.uniform(0.005, 0.050))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        out = first + out
        assert proc.returncode == -signal.SIGKILL
        for line in out.split(b"\n"):
            parts = line.split()
            if len(parts) == 4 and parts[0] == b"ACK":  # a torn last line is no acknowledgement
                acks.append((parts[1].decode(), parts[2].decode(), int(parts[3])))
    assert len(acks) >= KILLS  # the writers did get work done between kills

    with Store.open(root, state_dir=tmp_path / "fresh-state") as s:
        report = s.verify()
        assert report.corrupt == () and report.missing == () and report.bad_records == ()
        for name in os.listdir(root / "objects" / "sha256"):
            for obj in os.listdir(root / "objects" / "sha256" / name):
                assert len(obj) == 64  # nothing half-written under a final name
        for kind, key, i in acks:
            real = s.get_realisation(key)
            assert real is not None, key
            assert s.read_blob(real.log) == b"log of " + key.encode()
            body = _expected(key, i)
            if kind == "blob":
                assert s.read_blob(real.outputs) == body
            else:
                out = tmp_path / "check" / key
                s.extract_tree(real.outputs, out)
                for n in range(3):
                    assert (out / "sub" / f"f{n}").read_bytes() == body[n:]
        # The writers' own index (killed mid-transaction too) still answers.
    with Store.open(root, state_dir=state) as s:
        assert all(s.get_realisation(key) is not None for _, key, _ in acks)
        # Leftovers of killed writers are only ever under tmp/, and gc clears them.
        s.gc(grace=0, keep_runs=0, max_size=1 << 40)
        assert os.listdir(root / "tmp") == []


def test_partial_ingest_files_of_a_dead_writer_are_removed_on_open(tmp_path) -> None:
    """A SIGKILLed kata leaves ``tmp/obj.<random>.<owner>``: the next open removes it; a
    live writer's file and another boot's (or host's) stay (gc's grace period decides)."""
    import subprocess as sp

    import procs
    from store import Store

    root = tmp_path / "store"
    Store.open(root).close()
    dead = sp.Popen(["sleep", "0.3"])
    dead_owner = procs.owner_id(dead.pid)  # while it runs: its start time is readable
    dead.wait()
    names = {"dead": f"obj.abc.{dead_owner}", "live": f"obj.abc.{procs.owner_id()}",
             "foreign": f"obj.abc.{dead.pid}.123@another-boot"}
    for name in names.values():
        (root / "tmp" / name).write_bytes(b"partial")
    with Store.open(root):
        pass
    assert sorted(os.listdir(root / "tmp")) == sorted([names["live"], names["foreign"]])
