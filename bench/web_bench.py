"""kata web's runs page over a store of many recorded runs.

    python3 bench/web_bench.py [--runs 10000] [--steps 6] [--repeat 20]

Server time of ``GET /runs`` (the runs page, 50 newest of every run, filter choices from
all of them) and ``GET /runs?status=failed&pipeline=p3``, in process through Starlette's
test client (no network), against the anchor: reading and decoding every run record
directly (``Store.run_names`` + ``Store.read_run``), measured in the same run. Cold: the
first request of a fresh server over a store it never saw (it reads every record once,
and keeps their summaries in the state dir); restart: the first request of a second
server (it loads those summaries); warm: the median of ``--repeat`` requests after it
(records are immutable: only new ones are read). Target:
the runs page in <= 200 ms. The records are written through ``Store.put_run`` (setup,
not measured).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store import Store  # noqa: E402
from store.runs import Phases, Run, StepRecord  # noqa: E402

TARGET_MS = 200.0


def populate(s: Store, runs: int, steps: int) -> None:
    t0 = time.time() - runs * 60
    for i in range(runs):
        t = t0 + i * 60
        recs = tuple(StepRecord(
            name=f"step{j}", status="failed" if (i + j) % 17 == 0 else "passed",
            cache="HIT" if (i + j) % 3 else "MISS", exit_status=0, duration=1.5,
            drv_hash=f"{i:032x}{j:032x}", needs=(f"step{j - 1}",) if j else (),
            phases=Phases(ready=t + j, started=t + j, running=t + j + 0.5, ended=t + j + 1))
            for j in range(steps))
        s.put_run(Run(id=f"run{i:06d}", pipeline=f"p{i % 5}", commit=f"{i:040x}",
                      branch="main" if i % 2 else f"feature-{i % 7}", event="push",
                      started=t, wall=steps + 0.2,
                      status="failed" if any(r.status == "failed" for r in recs) else "passed",
                      steps=recs))


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from kata.web.app import create_app

    with tempfile.TemporaryDirectory(prefix="kata-web-bench-") as tmp:
        s = Store.open(os.path.join(tmp, "store"))
        t = time.perf_counter()
        populate(s, args.runs, args.steps)
        print(f"setup: {args.runs} runs of {args.steps} steps written in "
              f"{time.perf_counter() - t:.1f}s")

        def read_all() -> None:
            for name in s.run_names():
                s.read_run(name)

        anchor = statistics.median(timed(read_all) for _ in range(3))
        client = TestClient(create_app(s, warm=False))

        def get(path: str) -> None:
            r = client.get(path)
            assert r.status_code == 200, r.text[:500]

        cold = timed(lambda: get("/runs"))
        # a restarted server: the summaries the first one kept in the state dir
        restart = TestClient(create_app(s, warm=False))
        restarted = timed(lambda: restart.get("/runs"))
        warm = statistics.median(timed(lambda: get("/runs")) for _ in range(args.repeat))
        filtered = statistics.median(timed(lambda: get("/runs?status=failed&pipeline=p3"))
                                     for _ in range(args.repeat))
        api = statistics.median(timed(lambda: get("/api/runs")) for _ in range(args.repeat))
        newest = s.run_names()[0].split("-", 1)[1]
        run_page = statistics.median(timed(lambda: get(f"/runs/{newest}")) for _ in range(5))
        cache_page = statistics.median(timed(lambda: get("/cache")) for _ in range(3))
        print(f"anchor: read and decode {args.runs} run records directly: {anchor:.1f} ms")
        for what, ms in (("runs page, cold (first request of the first server)", cold),
                         ("runs page, first request after a restart", restarted),
                         ("runs page, warm", warm), ("runs page, filtered, warm", filtered),
                         ("/api/runs, warm", api), ("a run's page (newest)", run_page),
                         ("cache page", cache_page)):
            verdict = "meets" if ms <= TARGET_MS else "misses"
            print(f"{what}: {ms:.1f} ms = {ms / anchor:.2f}x the anchor; "
                  f"{ms / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target ({verdict})")
        s.close()


if __name__ == "__main__":
    main()
