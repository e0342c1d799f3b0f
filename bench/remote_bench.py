"""The remote cache (issue 13) against its anchors, measured in one run.

    python3 bench/remote_bench.py [N_STEPS] [N_FILES]      # defaults: 1000 50000
    python3 bench/remote_bench.py --only artifact          # part 2, in-memory CAS only

Starts its own cache-only BuildGrid (tests/support/buildgrid.py) and sshd (for the sshfs
store), all on 127.0.0.1, and prints each figure with its ratio to its target:

1. A remote hit of an N_STEPS graph (10 levels, each step depending on two of the level
   below, each publishing a small artifact) from an EMPTY local store (a new host), against
   the same run from a WARM local store (target <= 3x), and against the same store shared
   over sshfs from a new host (a fresh local state directory; target <= 1x). Every run is
   checked to be all hits, fetching nothing. The graph is populated once, with the
   host-shell FakeRuntime (the keys do not depend on the runtime), which also uploads it
   and files its bundle (kata.remote.bundle); the remote hit is measured with the bundle
   (one GetActionResult) and without (one per step, pipelined) for comparison.
2. An N_FILES-file artifact from host A's store through the remote CAS into host B's store
   (upload as REAPI Directory trees, then download and re-encode), against
   ``tar -c | zstd`` piped over a loopback TCP socket into ``zstd -d | tar -x`` (target
   <= 1.5x), twice: with BuildGrid's disk CAS and with its in-memory CAS (the one
   docs/remote.md recommends for a cache-only server). B's unpacking of the tree (what a
   dependent then does) is printed besides, and the split: CPU seconds of BuildGrid and
   of Kata's upload and download. B reads a tree of 1,000+ files as its archive blob
   (kata.remote.trees.PACK_FILES); the same download file by file is printed beside it.
   The server's floor, in the same run (bench/remote_floor.py): the very requests Kata's
   upload sends, serialised beforehand and sent by a client that does nothing else, one
   after another and pipelined, into fresh in-memory BuildGrids, then one read of the
   archive: what no client keeping the same guarantees can beat on this machine. And
   BuildGrid's own client (``bgd cas upload-dir``, then ``download-dir``) moving the same
   directory (no FindMissingBlobs, no archive) through a fresh in-memory BuildGrid, with
   the server's CPU seconds.
3. Per-step overhead of remote execution vs local execution (target <= 1.5x): a 10-step
   chain run with ``kata run --no-cache`` locally and with ``--remote-executor`` (BuildGrid
   with its SQL scheduler on a PostgreSQL it starts, one ``kata worker``); see
   ``execution_overhead`` and bench/remote_bench_exec.py.

Times are the best of ``REPEAT`` runs (bench/timing.py), except the CAS transfer, which is
cold by construction and measured once per side. Beside each wall time the bench prints
the CPU seconds of this process and of the BuildGrid server (from /proc): on a shared
machine those are steadier than the wall times, and they show which side bounds a figure.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from fakes import FakeRuntime, FakeStep, compile_steps  # noqa: E402
from kata.realise.realiser import Realiser, RealiseOptions  # noqa: E402
from kata.remote import trees as remote_trees  # noqa: E402
from kata.remote.cache import RemoteCache  # noqa: E402
from kata.remote import cas as cas_mod  # noqa: E402
from kata.remote.cas import connect  # noqa: E402
from kata.remote.config import RemoteConfig, parse_url  # noqa: E402
from store import Store  # noqa: E402
from support.buildgrid import BuildGridConfig, buildgrid, memory_cas  # noqa: E402
from remote_floor import server_floor  # noqa: E402
from timing import timed_call  # noqa: E402

REPEAT = 3


def graph_steps(n: int, levels: int = 10) -> list[FakeStep]:
    width = max(n // levels, 1)
    rng = random.Random(13)
    steps = []
    for lv in range(levels):
        for i in range(width):
            name = f"l{lv}_{i}"
            deps = tuple(f"l{lv - 1}_{d}" for d in sorted(rng.sample(range(width), 2))) \
                if lv and width >= 2 else ()
            steps.append(FakeStep(name, commands=("mkdir -p out", f"echo {name} > out/{name}"),
                                  depends_on=deps, artifacts=("out/",), inputs=("README",)))
    return steps


def _remote(url: str, bundles: bool = True) -> RemoteCache:
    return RemoteCache(RemoteConfig(url=url, target=parse_url(url)[0], timeout=30),
                       warn=lambda line: print("warning:", line, file=sys.stderr),
                       bundles=bundles)


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process and its children that were waited for used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measured(fn, server_pid: int) -> tuple[float, float, float]:
    """(wall, this process's CPU, the server's CPU) seconds of one call."""
    c0, s0 = time.process_time(), cpu_of(server_pid)
    wall, _ = timed_call(fn)
    return wall, time.process_time() - c0, cpu_of(server_pid) - s0


def realise(graph, repo: Path, store: Store, remote: RemoteCache | None = None):
    opts = RealiseOptions(repo_root=repo, work_root=Path(store.state_dir) / "work",
                          max_parallel=2)
    realiser = Realiser(graph, store=store, runtime=FakeRuntime(), emit=lambda e: None,
                        options=opts, remote=remote)
    result = realiser.run(realiser.plan())
    assert result.ok, [(s.name, s.message) for s in result.steps.values() if s.status != "passed"][:3]
    return result


def all_hits(result) -> None:
    misses = [s.name for s in result.steps.values() if s.cache != "HIT"]
    assert not misses, f"expected every step to hit; missed: {misses[:5]}"


def best(fn, n: int = REPEAT) -> float:
    return min(timed_call(fn)[0] for _ in range(n))


def best_measured(fn, server_pid: int, n: int = REPEAT) -> tuple[float, float, float]:
    """``measured`` of the fastest of ``n`` calls."""
    return min((measured(fn, server_pid) for _ in range(n)), key=lambda m: m[0])


def start_sshd(base: Path):  # noqa: ANN201 - support.sshfs.Sshd, and its generator
    """The tests' sshd (tests/support/sshfs.py), outside pytest."""
    from support import sshfs

    class Factory:
        def mktemp(self, name: str) -> Path:
            return Path(tempfile.mkdtemp(prefix=name, dir=base))

    fixture = sshfs.sshd
    fn = getattr(fixture, "__wrapped__", None) or fixture.__pytest_wrapped__.obj  # pytest 8.4 / older
    gen = fn(Factory())
    return next(gen), gen


def bench_graph(base: Path, url: str, n: int, server_pid: int) -> None:
    repo = base / "repo"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    graph = compile_steps(repo, graph_steps(n))
    steps = len(graph.order)
    a = Store.open(base / "store-a")
    remote = _remote(url)
    populate, _ = timed_call(lambda: realise(graph, repo, a, remote))
    print(f"populate: {steps} steps run and uploaded in {populate:.1f}s "
          f"({remote.stats['uploads']} uploads)")
    remote.close()

    warm, warm_cpu, _ = best_measured(lambda: all_hits(realise(graph, repo, a)), server_pid)
    a.close()

    counter = iter(range(1000))

    def from_remote(bundles: bool) -> None:
        b = Store.open(base / f"store-b{next(counter)}")
        r = _remote(url, bundles)
        try:
            result = realise(graph, repo, b, r)
            all_hits(result)
            assert r.stats["fetched_trees"] == 0  # a hit whose dependents all hit fetches nothing
            assert r.stats["asked"] == (1 if bundles else steps), r.stats
        finally:
            r.close()
            b.close()

    remote_hit, remote_cpu, remote_srv = best_measured(lambda: from_remote(True), server_pid)
    per_step, per_step_cpu, per_step_srv = best_measured(lambda: from_remote(False), server_pid)

    sshd, gen = start_sshd(base)
    mount = base / "sshfs-store"
    sshd.mount(base / "store-a", mount)
    try:
        def from_sshfs() -> None:
            state = Path(tempfile.mkdtemp(prefix="state-", dir=base))
            s = Store.open(mount, state_dir=state)
            try:
                all_hits(realise(graph, repo, s))
            finally:
                s.close()

        shared = best(from_sshfs)
    finally:
        from support.sshfs import umount

        umount(mount)
        next(gen, None)
    print(f"{steps}-step graph, all hits (wall; CPU of this process / of BuildGrid):")
    print(f"  warm local store      {warm:7.2f}s  (cpu {warm_cpu:.2f}s)")
    print(f"  remote, empty store   {remote_hit:7.2f}s  (cpu {remote_cpu:.2f}s / server "
          f"{remote_srv:.2f}s)   {remote_hit / warm:5.2f}x warm local (target <= 3x)")
    print(f"    without the bundle  {per_step:7.2f}s  (cpu {per_step_cpu:.2f}s / server "
          f"{per_step_srv:.2f}s)   {per_step / warm:5.2f}x warm local ({steps} "
          "GetActionResult calls)")
    print(f"  sshfs store, new host {shared:7.2f}s   remote is {remote_hit / shared:5.2f}x "
          f"sshfs (target <= 1x)")


def make_files(root: Path, n: int) -> int:
    """``n`` files of 200 B..8 KiB in 100-file directories; returns the bytes written."""
    rng = random.Random(7)
    total = 0
    for i in range(n):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        data = rng.randbytes(rng.randint(200, 8192))
        (d / f"f{i:06d}.bin").write_bytes(data)
        total += len(data)
    return total


def tar_over_loopback(src: Path, dest: Path) -> None:
    """tar -c | zstd -> a TCP socket on 127.0.0.1 -> zstd -d | tar -x."""
    dest.mkdir()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    receiver = subprocess.Popen(["sh", "-c", f"zstd -q -d | tar -xf - -C {dest}"],
                                stdin=subprocess.PIPE)

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                receiver.stdin.write(chunk)  # type: ignore[union-attr]
        receiver.stdin.close()  # type: ignore[union-attr]

    t = threading.Thread(target=receive)
    t.start()
    sender = subprocess.Popen(["sh", "-c", f"tar -cf - -C {src} . | zstd -q -3 -T0"],
                              stdout=subprocess.PIPE)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while chunk := sender.stdout.read(1 << 20):  # type: ignore[union-attr]
            conn.sendall(chunk)
    assert sender.wait() == 0
    t.join()
    assert receiver.wait() == 0
    server.close()


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bgd_floor(base: Path, src: Path) -> tuple:
    """The server's floor: BuildGrid's own client (``bgd cas upload-dir`` then
    ``download-dir``) moving the same directory through a fresh in-memory BuildGrid.
    Returns (wall, server CPU, bgd CPU) seconds of the upload, the same of the download,
    and the download's error line ("" when it worked)."""
    with buildgrid(base / "bgd-floor", BuildGridConfig(storages=memory_cas("2G"))) as server:
        assert server.proc is not None
        pid = server.proc.pid
        s0, c0, t0 = cpu_of(pid), children_cpu(), time.perf_counter()
        up = server.bgd("cas", "upload-dir", str(src), timeout=900)
        assert up.returncode == 0, up.stderr[-2000:]
        last = [ln for ln in up.stdout.splitlines() if f"path=[{src}]" in ln][-1]
        root = last.rpartition("digest=[")[2].rstrip("]")
        up_wall, up_srv, up_cli = time.perf_counter() - t0, cpu_of(pid) - s0, children_cpu() - c0
        s0, c0, t0 = cpu_of(pid), children_cpu(), time.perf_counter()
        down = server.bgd("cas", "download-dir", root, str(base / "bgd-floor-dest"), timeout=900)
        # bgd 0.4.4's download-dir asks for batches as big as the server's limit, whose
        # answers then exceed its own client's 4 MiB receive limit: say so, do not hide it
        failed = "" if down.returncode == 0 else \
            (down.stdout + down.stderr).strip().splitlines()[-1][:200]
        return (up_wall, up_srv, up_cli, time.perf_counter() - t0, cpu_of(pid) - s0,
                children_cpu() - c0, failed)


def floor_lines(base: Path, tree: str, tar_s: float, up_s: float, down_s: float) -> list[str]:
    """The server's floor (bench/remote_floor.py): the same requests as Kata's upload,
    serialised beforehand, sent one after another and pipelined as Kata sends them, each
    into a fresh in-memory BuildGrid; then one read of the archive."""
    a = Store.open(base / "art-a")
    try:
        runs = [server_floor(base / f"floor-{i}", a, tree, stream_chunk=cas_mod._STREAM_CHUNK,
                             max_batch_blobs=cas_mod.MAX_BATCH_BLOBS,
                             find_chunk=cas_mod.MAX_BATCH_BLOBS, overlapped=bool(i))
                for i in range(2)]
    finally:
        a.close()
    lines = ["  floor: Kata's requests serialised beforehand and sent by a client doing nothing "
             "else (bench/remote_floor.py), each into a fresh in-memory BuildGrid:"]
    for fl, how in zip(runs, ("one call after another", "pipelined as Kata sends them")):
        cpu = sum(c for _, c in fl.phases.values())
        lines.append(f"    {how}: upload {fl.upload_wall:.2f}s + archive read "
                     f"{fl.download_wall:.2f}s = {fl.upload_wall + fl.download_wall:.2f}s = "
                     f"{(fl.upload_wall + fl.download_wall) / tar_s:5.2f}x tar|zstd (server "
                     f"CPU {cpu:.2f}s)")
        lines.append("      " + "; ".join(f"{name} {w:.2f}s, server CPU {c:.2f}s"
                                          for name, (w, c) in fl.phases.items()))
    best = min(runs, key=lambda f: f.upload_wall + f.download_wall)
    calls = runs[0].calls
    lines.append(f"      ({calls['find']} FindMissingBlobs, {calls['batches']} BatchUpdateBlobs, "
                 f"{calls['stream']} ByteStream messages, {calls['messages']} Directory/Tree "
                 "blobs)")
    lines.append(f"    Kata's transfer is {(up_s + down_s) / (best.upload_wall + best.download_wall):5.2f}x "
                 f"the better floor (upload {up_s / best.upload_wall:5.2f}x, download "
                 f"{down_s / max(best.download_wall, 1e-9):5.2f}x: B also hashes and stores the "
                 "archive)")
    return lines


def bench_artifact(base: Path, url: str, n: int, server_pid: int, cas_kind: str, *,
                   floor: bool = False) -> None:
    src = base / "artifact"
    size = make_files(src / "out", n)
    a = Store.open(base / "art-a")
    tree = a.put_tree(src, paths=("out",))
    b = Store.open(base / "art-b")
    target, tls = parse_url(url)
    with connect(RemoteConfig(url=url, target=target, tls=tls, timeout=60)) as r:
        r.cas.capabilities()
        ups: list = []
        up_s, up_cpu, up_srv = measured(lambda: ups.append(remote_trees.upload_tree(r.cas, a, tree)),
                                        server_pid)
        up = ups[0]
        down_s, down_cpu, down_srv = measured(
            lambda: remote_trees.download_tree(r.cas, b, tree, up.tree_digest), server_pid)
        # the same download file by file (what a tree without its archive blob costs)
        c = Store.open(base / "art-c")
        packed, remote_trees.PACK_FILES = remote_trees.PACK_FILES, n + 1
        try:
            per_s, per_cpu, per_srv = measured(
                lambda: remote_trees.download_tree(r.cas, c, tree, up.tree_digest), server_pid)
        finally:
            remote_trees.PACK_FILES = packed
            c.close()
    unpack_s, _ = timed_call(lambda: b.unpacked(tree))
    tar_c0, tar_p0 = children_cpu(), time.process_time()
    tar_s, _ = timed_call(lambda: tar_over_loopback(src, base / "tar-dest"))
    tar_cpu = children_cpu() - tar_c0 + time.process_time() - tar_p0
    a.close()
    b.close()
    cas = up_s + down_s
    print(f"{n}-file artifact ({size / 1e6:.0f} MB), BuildGrid with {cas_kind}:")
    print(f"  remote CAS  {cas:7.2f}s (upload {up_s:.2f}s, download {down_s:.2f}s; "
          f"then unpacking on B {unpack_s:.2f}s)")
    print(f"    split, CPU seconds: BuildGrid {up_srv:.2f}s upload + {down_srv:.2f}s download "
          f"({1e3 * (up_srv + down_srv) / n:.2f} ms per file); Kata upload {up_cpu:.2f}s, "
          f"Kata download {down_cpu:.2f}s")
    print(f"    download file by file instead of the archive blob: {per_s:.2f}s (CPU "
          f"BuildGrid {per_srv:.2f}s, Kata {per_cpu:.2f}s); the transfer would be "
          f"{up_s + per_s:.2f}s")
    print(f"  tar | zstd over loopback {tar_s:7.2f}s (cpu {tar_cpu:.2f}s: tar, zstd and the "
          "socket copy)")
    print(f"  remote CAS is {cas / tar_s:5.2f}x tar|zstd (target <= 1.5x); "
          f"with B's unpacking {(cas + unpack_s) / tar_s:5.2f}x; file by file "
          f"{(up_s + per_s) / tar_s:5.2f}x")
    cas_cpu = up_cpu + up_srv + down_cpu + down_srv
    print(f"    in CPU seconds (steadier on a loaded machine): {cas_cpu:.2f}s vs {tar_cpu:.2f}s "
          f"= {cas_cpu / tar_cpu:5.2f}x")
    if floor:
        floors = floor_lines(base, tree, tar_s, up_s, down_s)
        for line in floors:
            print(line)
        uw, us, uc, dw, ds, dc, failed = bgd_floor(base, src / "out")
        print(f"  anchor, BuildGrid's own client into a fresh in-memory BuildGrid: "
              f"bgd cas upload-dir {uw:.2f}s (server CPU {us:.2f}s = {1e3 * us / n:.3f} ms "
              f"per file, {us / tar_s:5.2f}x the tar wall; bgd CPU {uc:.2f}s)")
        if failed:
            print(f"    bgd cas download-dir failed after {dw:.2f}s: {failed}")
        else:
            print(f"    bgd cas download-dir {dw:.2f}s (server CPU {ds:.2f}s, bgd CPU "
                  f"{dc:.2f}s); upload + download {uw + dw:.2f}s = "
                  f"{(uw + dw) / tar_s:5.2f}x tar|zstd")
        print(f"    vs Kata's upload: server CPU {up_srv:.2f}s, {up_srv / max(us, 1e-9):.2f}x "
              "what bgd's own upload costs it")


def execution_overhead() -> None:
    """Per-step overhead of remote execution (``kata run --remote-executor``, one ``kata
    worker``, BuildGrid with PostgreSQL) vs local execution, target <= 1.5x: a chain of
    10 steps, ``--no-cache``, medians of 3 (bench/remote_bench_exec.py, also runnable
    alone)."""
    from remote_bench_exec import execution_overhead as measure

    for line in measure(10, 3):
        print(line)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="The remote cache (issue 13) against its anchors.")
    ap.add_argument("n_steps", nargs="?", type=int, default=1000)
    ap.add_argument("n_files", nargs="?", type=int, default=50_000)
    ap.add_argument("--only", choices=("graph", "artifact", "exec"),
                    help="run one part (artifact: with the in-memory CAS only)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="kata-remote-bench-"))
    try:
        if args.only in (None, "graph"):
            with buildgrid(base / "bgd") as server:
                (base / "graph").mkdir()
                assert server.proc is not None
                bench_graph(base / "graph", server.url, args.n_steps, server.proc.pid)
                if args.only is None:
                    (base / "art").mkdir()
                    bench_artifact(base / "art", server.url, args.n_files, server.proc.pid,
                                   "its disk CAS (!disk-storage)")
        if args.only in (None, "artifact"):
            # the CAS docs/remote.md recommends for a cache-only server (as volatile as the
            # in-memory action cache both configurations use)
            with buildgrid(base / "bgd-mem", BuildGridConfig(storages=memory_cas("2G"))) as server:
                assert server.proc is not None
                (base / "art-mem").mkdir()
                bench_artifact(base / "art-mem", server.url, args.n_files, server.proc.pid,
                               "its in-memory CAS (!lru-storage)", floor=True)
        if args.only in (None, "exec"):
            execution_overhead()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
