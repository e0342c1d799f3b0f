"""`kata run --remote-executor` killed at seeded random moments while real workers run its
steps (issue 13's standard for remote execution): the next run passes with correct
artifacts, the workers keep serving, and they hold no lease's input root once idle.
The same grid as tests/test_remote_exec.py (BuildGrid on PostgreSQL, two workers)."""

from __future__ import annotations

import contextlib
import random
import signal
import time

import pytest
import yaml

from support.cgroups import OwnCgroups
from support.fixtures import assert_clean
from test_kill_points import SEED, _check_outputs, _no_traceback_of_kata, killed_run
from test_remote_exec import grid, kata, workers  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _pipeline(image: str) -> dict:
    return {"pipeline": "remote-chaos", "settings": {"fail_fast": False}, "steps": [
        {"name": "make", "image": image, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": [
             "mkdir -p out",
             "i=0; while [ $i -lt 150 ]; do cat src/seed.txt > out/f$i; i=$((i+1)); done",
             "head -c 2000000 /dev/zero | tr '\\0' x > out/big", "cat src/seed.txt >> out/big",
             "sleep 0.5", "cd out && sha256sum f* big > ../SUMS && mv ../SUMS SUMS"]},
        {"name": "use", "image": image, "depends_on": ["make"], "inputs": ["src/**"],
         "commands": ["cd out && sha256sum -c SUMS >/dev/null"]}]}


def test_a_remote_run_killed_at_random_moments_leaves_workers_and_results_sound(
        grid, workers, kata, runtime):  # noqa: F811 - fixtures
    bg, image = grid
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(_pipeline(image), sort_keys=False))
    remote = ("--remote-executor", bg.url)
    rng = random.Random(SEED + 2)
    (kata.repo / "src" / "seed.txt").write_text("remote -1\n")
    started = time.monotonic()
    first = kata("run", *remote)
    span = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    for n in range(4):
        seed = f"remote exec round {n} of {SEED}\n"
        (kata.repo / "src" / "seed.txt").write_text(seed)
        sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
        delay = rng.uniform(0.0, span)
        code, _, err = killed_run(kata, ("run", *remote), delay, lambda p: p.send_signal(sig))
        what = f"round {n}: {sig.name} after {delay:.2f}s, exit {code}"
        print(what, flush=True)
        _no_traceback_of_kata(err, what)
        again = kata("run", *remote)
        assert again.returncode == 0, f"{what}\n{again.stdout}\n{again.stderr}"
        _check_outputs(kata, kata.repo.parent / f"export-{n}", seed)
        verify = kata("store", "verify")
        assert verify.returncode == 0, f"{what}\n{verify.stdout}\n{verify.stderr}"
        for w in workers:
            assert w.proc.poll() is None, f"{what}\n{w.text()}"
    deadline = time.monotonic() + 60
    while (left := [p for w in workers for p in (w.state / "worker").glob("lease-*")]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left
    assert_clean(runtime)  # the client's own containerd: nothing of the killed runs


def test_a_worker_killed_at_random_moments_costs_no_run_and_leaves_nothing(
        grid, kata, runtime):  # noqa: F811 - fixtures
    """A `kata worker` SIGKILLed or SIGTERMed at seeded random moments of a remote run
    (taking a lease, fetching inputs, running, uploading the result;
    tests/test_remote_exec.py kills one mid-step only): the run passes (the other worker
    takes the step), its artifacts check, and the victim started again on its state
    directory sweeps what it left: no lease input root, nothing in its containerd."""
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.daemon import daemon_paths
    from test_remote_exec import Worker, worker_pool

    bg, image = grid
    (kata.repo / ".kata-ci.yaml").write_text(yaml.safe_dump(_pipeline(image), sort_keys=False))
    remote = ("--remote-executor", bg.url)
    rng = random.Random(SEED + 4)
    with worker_pool(grid, names=("k1", "k2")) as pool, contextlib.ExitStack() as stack:
        # the step cgroups of each worker's containerd (support/cgroups.py)
        own = [stack.enter_context(OwnCgroups(daemon_paths(w.state))) for w in pool]
        (kata.repo / "src" / "seed.txt").write_text("worker -1\n")
        started = time.monotonic()
        assert kata("run", *remote).returncode == 0
        span = time.monotonic() - started
        for n in range(3):
            seed = f"worker round {n} of {SEED}\n"
            (kata.repo / "src" / "seed.txt").write_text(seed)
            victim = pool[n % 2]
            sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
            delay = rng.uniform(0.0, span)
            def kill(_, victim=victim, sig=sig) -> None:  # noqa: ANN001
                victim.proc.send_signal(sig)
                victim.proc.wait(60)

            code, out, err = killed_run(kata, ("run", *remote), delay, kill)
            what = f"round {n}: {victim.name} {sig.name} after {delay:.2f}s"
            print(what, flush=True)
            assert code == 0, f"{what}\n{out}\n{err}\n{victim.text()}"
            _check_outputs(kata, kata.repo.parent / f"export-w{n}", seed)
            again = Worker(victim.name, bg.url, bg.logstream, state=victim.state)
            again.wait_ready()
            assert list((victim.state / "worker").glob("lease-*")) == [], what
            paths = daemon_paths(victim.state)
            with ContainerdRuntime.connect(address=paths.address,
                                           state_dir=str(victim.state)) as rt:
                left = rt.leftovers()
            assert left == {k: [] for k in left}, (what, left)
            for watch in own:
                assert watch.left() == {}, f"{what}: cgroups left (id: pids in it)"
            pool[n % 2] = again
    assert_clean(runtime)
