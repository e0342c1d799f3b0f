"""`kata run --remote-executor` killed at seeded random moments while real workers run its
steps (issue 13's standard for remote execution): the next run passes with correct
artifacts, the workers keep serving, and they hold no lease's input root once idle.
The same grid as tests/test_remote_exec.py (BuildGrid on PostgreSQL, two workers)."""

from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest
import yaml

from support.fixtures import assert_clean
from test_kill_points import SEED, _check_outputs
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
        proc = subprocess.Popen([*kata.base, "run", *remote], cwd=kata.repo, env=kata.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        what = f"round {n}: {sig.name} after {delay:.2f}s, exit {proc.returncode}"
        print(what, flush=True)
        assert "Traceback" not in err, f"{what}\n{err}"
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
