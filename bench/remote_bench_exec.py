"""Per-step overhead of remote execution vs local execution (issue 13; target <= 1.5x).

    python3 bench/remote_bench_exec.py [N] [ROUNDS] [--logstream]
                                                      (also a section of remote_bench.py)

Starts what a team would run, all on this machine: PostgreSQL 15, BuildGrid with its SQL
scheduler (the docs/remote.md configuration), a registry holding the busybox test image,
one `kata worker` (one slot, its own containerd) and a containerd for the client. Times
`kata run --no-cache` of a chain of N (default 10) small steps (each reads its
dependency's artifact and writes its own), locally and with `--remote-executor`,
interleaved, ROUNDS (default 3) times each; prints the median seconds per step and the
ratio remote / local, and where a remote step's time went: BuildGrid's record of each job
(queued, assigned, completed; the worker's REAPI ``ExecutedActionMetadata`` timestamps:
input fetch, execution, output upload) read from its PostgreSQL database, and the rest of
the step's share of the run (the client: packing, uploading, ``Execute`` until queued,
completed until it hears so, fetching the result, recording it). Both paths run the same
containers through the same containerd adapter; the difference is the REAPI round trip
(upload, Execute, scheduling, lease, worker input root and upload, completion, download).
With ``--logstream`` the scheduler also creates each job's log streams on a ``kata
logstream`` server, the worker writes the step's output there and the client follows it
(docs/remote.md, "Live output").

The **floor** is measured in the same run, interleaved with the rest
(``remote_exec_floor.py``): a chain of N ``Execute`` calls on the same BuildGrid by a
client and a bot that do nothing else (actions uploaded before the clock, every lease
answered at once with a canned result), Kata's channel options and metadata. It is what
BuildGrid's round trip alone costs a step. A remote step does what a local one does (the
realiser's work, the container's run, on the worker) plus the round trip and Kata's
remote-only work (pack, upload, fetch, sync; the worker's input root and upload); were
nothing of a local step's work skipped, the best ratio any client could reach on this
BuildGrid would be ``(local + floor) / local``. The bench prints Kata's own share,
``remote - run - floor`` (``run``: the container's time on the worker), beside a local
step's (``local - run``); their difference, ``remote - local - floor``, is what going
remote costs Kata's own code (below 0 when the remote path skips more of a local step's
work, on the client's containerd, than it adds).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
# this checkout first: tests/store is the store's tests, not kata's ``store`` package
for p in (str(BENCH), str(ROOT / "tests"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from timing import kata_env, timed_call  # noqa: E402

TARGET = 1.5


def chain(image: str, n: int) -> str:
    import yaml

    steps = [{"name": "s0", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
              "commands": ["mkdir -p out", "cp src/a.txt out/0"]}]
    for i in range(1, n):
        steps.append({"name": f"s{i}", "image": image, "depends_on": [f"s{i - 1}"],
                      "artifacts": ["out/"],
                      "commands": [f"cat out/{i - 1} > out/{i}", "echo step"]})
    return yaml.safe_dump({"pipeline": "chain", "settings": {"max_parallel": 1},
                           "steps": steps}, sort_keys=False)


def execution_overhead(n: int = 10, rounds: int = 3, logstream: bool = False) -> list[str]:
    """Lines to print: seconds per step locally and remotely, and the ratio."""
    from contextlib import nullcontext

    from support.buildgrid_exec import buildgrid_execution, kata_logstream
    from support.daemon import embedded_containerd
    from support.images import busybox_image
    from support.postgres import postgres_cluster
    from support.registry import docker_registry, push_image

    from remote_exec_floor import ExecFloor

    from kata.runtimes.containerd.daemon import daemon_paths, stop_daemon

    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="kb-rexec-"))
    worker_state = Path(f"/tmp/kb-w-{secrets.token_hex(3)}")
    worker_state.mkdir(mode=0o711)
    worker = None
    try:
        with postgres_cluster() as db, \
                (kata_logstream() if logstream else nullcontext(None)) as logs, \
                buildgrid_execution(base / "bgd", db, keepalive=30, logstream=logs) as bg, \
                docker_registry(base / "registry") as registry, \
                embedded_containerd("kb") as client_cd, \
                ExecFloor(bg.url) as floor:
            push_image(registry, "kata/busybox", "1", busybox_image())
            image = f"{registry.removeprefix('http://')}/kata/busybox:1"
            log = open(base / "worker.log", "wb")
            # the bench's registry is on 127.0.0.1: a worker pulls only from public or
            # declared registries unless told (SECURITY.md)
            (base / "worker.yaml").write_text("worker:\n  allow_private_registries: true\n")
            worker_env = {**kata_env(base / "wstore"), "KATA_CONFIG": str(base / "worker.yaml")}
            worker = subprocess.Popen(
                [sys.executable, "-m", "kata", "worker", "--executor", bg.url, "--name", "bench",
                 "--state-dir", str(worker_state), *(["--logstream", logs] if logs else [])],
                stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=worker_env)
            log.close()
            repo = base / "repo"
            (repo / "src").mkdir(parents=True)
            (repo / "src" / "a.txt").write_text("hello\n")
            (repo / ".kata-ci.yaml").write_text(chain(image, n))
            env = kata_env(base / "store")
            if logs:  # the client reads the streams there
                (base / "kata.yaml").write_text(f"remote:\n  logstream: {logs}\n")
                env["KATA_CONFIG"] = str(base / "kata.yaml")
            cmd = [sys.executable, "-m", "kata", "--containerd", client_cd.address, "run",
                   "--no-cache"]

            windows: list[tuple[float, float]] = []  # the timed remote runs, epoch seconds

            def run(*extra: str) -> float:
                began = time.time()
                secs, done = timed_call(lambda: subprocess.run(
                    [*cmd, *extra], cwd=repo, env=env, capture_output=True, text=True,
                    timeout=600))
                if done.returncode != 0:
                    raise RuntimeError(f"kata run {' '.join(extra)} failed:\n{done.stdout}"
                                       f"{done.stderr}\n{(base / 'worker.log').read_text()}")
                if extra and timed:
                    windows.append((began, time.time()))
                return secs

            timed = False

            run()  # warm: images pulled on both sides, bytecode compiled
            run("--remote-executor", bg.url)
            floor.chain(n)
            floor.windows.clear()
            floor.calls.clear()
            local, remote, floors = [], [], []
            timed = True
            for _ in range(rounds):
                local.append(run())
                remote.append(run("--remote-executor", bg.url))
                floors.append(sum(floor.chain(n)))
            jobs = _jobs(db, windows)
            floor_jobs = _jobs(db, floor.windows)
            floor_calls = list(floor.calls)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        stop_daemon(daemon_paths(worker_state))
        subprocess.run(["umount", "-R", "-l", str(worker_state)], capture_output=True)
        shutil.rmtree(worker_state, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    lo, re_ = statistics.median(local) / n, statistics.median(remote) / n
    fl = statistics.median(floors) / n
    ratio = re_ / lo
    run = statistics.median(j["execution_completed_timestamp"]
                            - j["execution_start_timestamp"] for j in jobs) if jobs else 0.0
    budget = (TARGET - 1) * lo  # what a remote step may cost beyond a local one
    share = re_ - run - fl
    load = f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    return [f"remote execution, {n}-step chain, `kata run --no-cache` (median of {rounds}; "
            f"load average {load}):",
            f"  local:  {lo * 1000:7.0f} ms per step",
            f"  remote: {re_ * 1000:7.0f} ms per step (one kata worker, BuildGrid + PostgreSQL"
            f"{', live output through kata logstream' if logstream else ''})",
            f"  ratio remote/local: {ratio:.2f}x (target <= {TARGET}x: "
            f"{'met' if ratio <= TARGET else 'NOT met'})",
            f"  floor:  {fl * 1000:7.0f} ms per step = BuildGrid's round trip with a client and "
            "a bot that do nothing (bench/remote_exec_floor.py, same server, interleaved)",
            f"  {TARGET}x local leaves {budget * 1000:.0f} ms per step beyond a local step; the "
            f"floor alone is {fl / budget:.2f}x that (were it simply added to a local step: "
            f"(local + floor) / local = {(lo + fl) / lo:.2f}x)",
            f"  Kata's own share = remote - the step's run - floor = {share * 1000:.0f} ms per "
            f"step (a local step's: local - run = {(lo - run) * 1000:.0f} ms); remote - local "
            f"- floor = {(re_ - lo - fl) * 1000:.0f} ms per step (below 0: the remote path "
            "skips more of a local step's work than Kata adds)",
            *breakdown(jobs, re_ * 1000, lo * 1000, floor_jobs, fl * 1000),
            *_floor_hops(floor_jobs, floor_calls)]


def _floor_hops(jobs: list[dict[str, float]], calls: list[tuple[float, float]]) -> list[str]:
    """The floor's "rest", timed: its client's Execute sent -> BuildGrid queued the job,
    and BuildGrid completed it -> the client heard (medians, ms; each job with its call,
    both in order of sending)."""
    if len(jobs) != len(calls) or not jobs:
        return []
    sent = statistics.median((j["queued_timestamp"] - c[0]) * 1000 for j, c in zip(jobs, calls))
    heard = statistics.median((c[1] - j["worker_completed_timestamp"]) * 1000
                              for j, c in zip(jobs, calls))
    return [f"    the floor's rest: Execute sent -> queued {sent:.1f} ms, completed -> the "
            f"client hears {heard:.1f} ms"]


# BuildGrid's jobs table: its own timestamps (queued, assigned = worker_start, completed =
# worker_completed) and the worker's ExecutedActionMetadata ones, epoch seconds (UTC)
_STAMPS = ("queued_timestamp", "worker_start_timestamp", "input_fetch_start_timestamp",
           "input_fetch_completed_timestamp", "execution_start_timestamp",
           "execution_completed_timestamp", "output_upload_start_timestamp",
           "output_upload_completed_timestamp", "worker_completed_timestamp")


def _jobs(db_url: str, windows: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Each job queued during one of ``windows``: its timestamps (``_STAMPS``), read with
    ``psql`` from the scheduler's database."""
    cols = ", ".join(f"extract(epoch from {c})" for c in _STAMPS)
    done = subprocess.run(["psql", db_url.replace("+psycopg2", ""), "-At", "-F", " ", "-c",
                           f"SELECT {cols} FROM jobs WHERE stage = 4 ORDER BY queued_timestamp"],
                          capture_output=True, text=True, timeout=60)
    out = []
    for line in done.stdout.split("\n"):
        values = line.split(" ")
        if len(values) != len(_STAMPS) or "" in values:
            continue
        job = dict(zip(_STAMPS, map(float, values)))
        if any(a <= job["queued_timestamp"] <= b for a, b in windows):
            out.append(job)
    return out


def breakdown(jobs: list[dict[str, float]], remote_ms: float, local_ms: float,
              floor_jobs: list[dict[str, float]] | None = None,
              floor_ms: float | None = None) -> list[str]:
    """What a remote step costs beyond a local one (``remote_ms - local_ms`` per step),
    medians over ``jobs`` (milliseconds): the parts BuildGrid's records time, and the
    rest (the client's own work and the hops into and out of the scheduler); beside
    them, the same parts of the floor's jobs (``floor_jobs``, ``floor_ms`` per step)."""
    if not jobs:
        return ["  (no job timestamps read from BuildGrid's database)"]
    rows = _parts(jobs)
    extra = remote_ms - local_ms
    rows.append(("the rest: the client's pack, upload and fetch, Execute -> queued, "
                 "completed -> the client hears (less what a local run's fixed costs "
                 "exceed a remote one's by)", extra - sum(ms for _w, ms in rows)))
    run = statistics.median((j["execution_completed_timestamp"]
                             - j["execution_start_timestamp"]) * 1000 for j in jobs)
    floor = [None] * len(rows)
    if floor_jobs and floor_ms is not None:
        floor = [ms for _w, ms in _parts(floor_jobs)]
        floor.append(floor_ms - sum(floor))
    return [f"  a remote step's {extra:.0f} ms beyond a local one (medians of {len(jobs)} "
            f"jobs; the step itself ran {run:.0f} ms on the worker), and the floor's "
            f"{floor_ms or 0:.0f} ms (of {len(floor_jobs or ())} jobs):",
            "      kata  floor",
            *(f"    {ms:6.1f} {'     -' if f is None else format(f, '6.1f')}  {what}"
              for (what, ms), f in zip(rows, floor))]


def _parts(jobs: list[dict[str, float]]) -> list[tuple[str, float]]:
    """The phases BuildGrid's records time: (what, median milliseconds over ``jobs``)."""

    def part(start: str, end: str) -> float:
        return statistics.median((j[end] - j[start]) * 1000 for j in jobs)

    rows = [("queued -> assigned (BuildGrid's assigner)",
             part("queued_timestamp", "worker_start_timestamp")),
            ("assigned -> the worker has the lease (BuildGrid's Bots service)",
             part("worker_start_timestamp", "input_fetch_start_timestamp")),
            ("worker: fetch the action, write its input root",
             part("input_fetch_start_timestamp", "execution_start_timestamp")),
            ("worker: upload the workspace and log",
             part("execution_completed_timestamp", "output_upload_completed_timestamp")),
            ("worker's result -> BuildGrid has completed the job",
             part("output_upload_completed_timestamp", "worker_completed_timestamp"))]
    return rows


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--logstream"]
    n = int(args[0]) if args else 10
    rounds = int(args[1]) if len(args) > 1 else 3
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "")
    for line in execution_overhead(n, rounds, logstream="--logstream" in sys.argv):
        print(line)


if __name__ == "__main__":
    main()
