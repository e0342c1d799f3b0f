"""What the pending queue and the back-off (kata.remote.pending, kata.remote.backoff) cost,
and what they save, measured in one run.

    python3 bench/remote_pending_bench.py [N_STEPS]        # default: 500

Starts its own cache-only BuildGrid (tests/support/buildgrid.py) and a hung listener on
127.0.0.1; steps run on the host-shell FakeRuntime (what is measured is Kata's side).
Each figure is printed with its ratio to its anchor, measured in the same run:

1. A fully cached run (every step a local hit) with a remote cache configured and an empty
   queue, against the same run without a state directory (no queue, no back-off memo: the
   code before the queue). Target <= 1.02x.
2. A run that builds N_STEPS steps and uploads them (write-ahead: each upload queued, then
   forgotten), against the same without the queue. Target <= 1.05x.
3. Sending N_STEPS queued results later (``push_pending``: the records re-read from the
   store), against uploading them during the run (figure 2's anchor). Target <= 1.5x.
4. A hung remote (accepts, never answers): the first run pays ``connect_timeout`` (2 s),
   against the per-call ``timeout`` it paid before (10 s; target <= 0.25x); a run during
   the back-off, against a run with no remote (target <= 1.05x).

Times are the best of ``REPEAT`` runs (bench/timing.py). On a shared machine, quote the
load average beside the figures (``uptime``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from fakes import FakeRuntime, FakeStep, compile_steps  # noqa: E402
from kata.realise.realiser import Realiser, RealiseOptions  # noqa: E402
from kata.remote.cache import RemoteCache  # noqa: E402
from kata.remote.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, RemoteConfig, \
    parse_url  # noqa: E402
from kata.remote.pending import DIR_NAME, PendingUploads  # noqa: E402
from remote_bench import graph_steps  # noqa: E402
from store import Store  # noqa: E402
from support.buildgrid import buildgrid, memory_cas, BuildGridConfig  # noqa: E402
from support.listeners import HungListener  # noqa: E402
from timing import timed_call  # noqa: E402

REPEAT = 3


def remote_for(url: str, store: Store | None, **config: float) -> RemoteCache:
    cfg = RemoteConfig(url=url, target=parse_url(url)[0], **config)
    return RemoteCache(cfg, warn=lambda line: None,
                       state_dir=store.state_dir if store is not None else None)


def realise(steps: list[FakeStep], repo: Path, store: Store,
            remote: RemoteCache | None) -> float:
    """Seconds of one run as `kata run` does it (plan, resume, realise, close)."""
    def run() -> None:
        graph = compile_steps(repo, steps)
        opts = RealiseOptions(repo_root=repo, work_root=Path(store.state_dir) / "work",
                              max_parallel=2)
        realiser = Realiser(graph, store=store, runtime=FakeRuntime(), emit=lambda e: None,
                            options=opts, remote=remote)
        plan = realiser.plan()
        if remote is not None:
            remote.resume(store)
        result = realiser.run(plan)
        if remote is not None:
            remote.close()
        assert result.ok
    return timed_call(run)[0]


def ratio(label: str, value: float, anchor: float, target: float, unit: str = "s") -> None:
    r = value / anchor if anchor else float("inf")
    verdict = "ok" if r <= target else "OVER"
    print(f"{label}: {value:.3f} {unit} vs {anchor:.3f} {unit} = {r:.2f}x "
          f"(target <= {target}x: {verdict})")


def fresh_repo(base: Path, tag: str) -> Path:
    repo = base / f"repo-{tag}"
    repo.mkdir(parents=True)
    (repo / "README").write_text(f"{tag}\n")
    return repo


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    steps = graph_steps(n)
    base = Path(tempfile.mkdtemp(prefix="kt-pending-bench-"))
    print(f"load average: {os.getloadavg()[0]:.2f}  steps: {len(steps)}")
    try:
        with buildgrid(base / "bgd", BuildGridConfig(storages=memory_cas())) as server:
            url = server.url
            # 1. a cached run: empty queue vs no state directory
            repo = fresh_repo(base, "cached")
            store = Store.open(base / "store-cached")
            realise(steps, repo, store, remote_for(url, store))  # builds and uploads
            queued, plain = [], []
            for i in range(4 * REPEAT):  # interleaved, alternating which goes first
                for with_state in ((True, False) if i % 2 else (False, True)):
                    (queued if with_state else plain).append(
                        realise(steps, repo, store, remote_for(url, store if with_state else None)))
            with_queue, without = statistics.median(queued), statistics.median(plain)
            ratio("1. cached run, remote configured, empty queue vs no queue (medians)",
                  with_queue, without, 1.02)
            # what the queue adds to such a run, alone (steadier than 1. under load):
            # resume's one directory read
            remote = remote_for(url, store)
            extra = min(timed_call(lambda: remote.resume(store))[0] for _ in range(200))
            remote.close()
            print(f"1b. added by the queue to a cached run: {extra * 1e6:.0f} us = "
                  f"{extra / min(plain) * 100:.3f}% of it (target <= 2%)")
            store.close()

            # 2. a building run with uploads: write-ahead queue vs none
            inline_q, inline_none = [], []
            for i in range(REPEAT):
                for queued, out in ((True, inline_q), (False, inline_none)):
                    repo = fresh_repo(base, f"build-{i}-{queued}")
                    store = Store.open(base / f"store-build-{i}-{queued}")
                    out.append(realise(steps, repo, store,
                                       remote_for(url, store if queued else None)))
                    if queued:
                        assert not PendingUploads(Path(store.state_dir) / DIR_NAME).names()
                    store.close()
            ratio("2. building run with uploads, write-ahead queue vs none", min(inline_q),
                  min(inline_none), 1.05)
            queue = PendingUploads(base / "q")
            keys = (f"{1:064x}", f"{2:064x}")

            def one() -> None:
                queue.done(queue.add(keys))
            per = min(timed_call(one)[0] for _ in range(500))
            print(f"2b. the queue's write-ahead per upload: {per * 1e6:.0f} us; for {len(steps)} "
                  f"steps {per * len(steps) / min(inline_none) * 100:.2f}% of the run "
                  "(target <= 5%)")

            # 3. the same results sent later by push_pending, vs inline (figure 2's anchor)
            later = []
            for i in range(REPEAT):
                repo = fresh_repo(base, f"later-{i}")
                store = Store.open(base / f"store-later-{i}")
                down = remote_for("grpc://127.0.0.1:1", store)  # refused: queued, not sent
                realise(steps, repo, store, down)
                queue = PendingUploads(Path(store.state_dir) / DIR_NAME)
                assert len(queue.names()) == len(steps)
                remote = remote_for(url, store)
                took, counts = timed_call(lambda: remote.push_pending(store))
                remote.close()
                assert counts.sent == len(steps) and not queue.names(), counts
                later.append(took)
                store.close()
            # the inline anchor is the whole building run: the upload is most of it (a
            # FakeRuntime step costs little), so this ratio understates the drain's speed
            ratio("3. queued results sent later (push_pending) vs built+uploaded inline",
                  min(later), min(inline_none), 1.5)

        # 4. a hung remote
        with HungListener() as hung:
            hung_url = f"grpc://127.0.0.1:{hung.port}"
            repo = fresh_repo(base, "hung")
            store = Store.open(base / "store-hung")
            first = realise(steps[:1], repo, store, remote_for(hung_url, store))
            print(f"4a. first run against a hung remote: {first:.2f} s (connect_timeout "
                  f"{DEFAULT_CONNECT_TIMEOUT:.0f} s; before: the {DEFAULT_TIMEOUT:.0f} s "
                  f"timeout): {first / DEFAULT_TIMEOUT:.2f}x of before (target <= 0.25x)")
            (repo / "README").write_text("edited\n")  # a step runs and would upload
            backed = []
            alone = []
            for i in range(REPEAT):
                (repo / "README").write_text(f"edited {i}\n")
                backed.append(realise(steps[:1], repo, store, remote_for(hung_url, store)))
                (repo / "README").write_text(f"edited again {i}\n")
                alone.append(realise(steps[:1], repo, store, None))
            assert hung.count == 1, hung.count
            ratio("4b. run during the back-off vs run with no remote", min(backed), min(alone),
                  1.05)
            store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
