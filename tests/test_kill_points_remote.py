"""Seeded kill points of the remote paths tests/test_kill_points*.py did not reach:

- `kata run --remote-cache` SIGKILLed while its background upload threads send a step's
  results (real cache-only BuildGrid behind a slowed TCP proxy): the next run passes and
  sends what was queued, another host then hits it with correct artifacts, the store
  verifies, and no temporary file of the pending queue, the back-off memo or the Tree
  memos stays behind;
- `kata worker` SIGKILLed while it starts its own containerd again (after that daemon
  was killed under a step): the run passes on the other worker; the victim started again
  on its state directory finds one containerd, named by its pid file, holding nothing
  of the killed one's steps, and no lease input root.

KATA_KILL_SEED=<n> picks another seed (test_kill_points.SEED)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.buildgrid import buildgrid, memory_cas, BuildGridConfig
from support.cli import KataProcess
from support.fixtures import assert_clean
from support.proxy import FaultProxy
from test_kill_points import SEED, _check_outputs, _no_traceback_of_kata, _own_mounts, \
    _own_processes
from test_kill_points_remote_exec import _pipeline
from test_remote_exec import grid, worker_pool  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"


def _temp_leftovers(state: Path) -> list[str]:
    """Temporary files of writers of the remote paths (the pending queue, the back-off
    memo, the Tree memos, kata.atomicfile's) under the store's state directory."""
    found = []
    for p in state.rglob(".*"):
        if p.is_file() and (".tmp" in p.name):
            found.append(str(p.relative_to(state)))
    return sorted(found)


def test_a_run_killed_while_its_uploads_run_loses_nothing_and_leaves_nothing(
        tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(_pipeline(IMAGE), sort_keys=False))
    store = tmp_path / "store"
    kata = KataProcess(repo, store=store, address=containerd_daemon.address)
    rng = random.Random(SEED + 6)
    with buildgrid(tmp_path / "bgd", BuildGridConfig(storages=memory_cas())) as server, \
            FaultProxy(("127.0.0.1", server.port)) as proxy:
        proxy.delay = 0.02  # a slow link: a step's upload takes seconds, not milliseconds
        remote = ("--remote-cache", f"grpc://127.0.0.1:{proxy.port}")
        for n in range(4):
            seed = f"upload round {n} of {SEED}\n"
            (repo / "src" / "seed.txt").write_text(seed)
            delay = rng.uniform(0.0, 2.0)
            proc = subprocess.Popen([*kata.base, "run", *remote], cwd=repo, env=kata.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:  # make passed: its upload starts on its thread
                    if line.startswith("[PASS] make"):
                        break
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                out, err = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            what = f"round {n}: SIGKILL {delay:.2f}s after make passed, exit {proc.returncode}"
            print(what, flush=True)
            _no_traceback_of_kata(err, what)
            again = kata("run", *remote)  # sends what the killed run queued, then its own
            assert again.returncode == 0, f"{what}\n{again.stdout}\n{again.stderr}"
            assert "warning" not in again.stderr, f"{what}\n{again.stderr}"
            verify = kata("store", "verify")
            assert verify.returncode == 0, f"{what}\n{verify.stdout}\n{verify.stderr}"
            pushed = kata("remote", "push", *remote)
            assert pushed.returncode == 0, f"{what}\n{pushed.stdout}\n{pushed.stderr}"
            assert "still pending" not in pushed.stdout, f"{what}\n{pushed.stdout}"
            left = _temp_leftovers(store / "local")
            assert left == [], f"{what}: {left}"
            ingest = sorted(p.name for p in (store / "tmp").iterdir()) \
                if (store / "tmp").is_dir() else []
            assert ingest == [], f"{what}: the killed run's ingest files {ingest}"
            # another host hits both steps from the remote, with the right artifacts
            other = KataProcess(repo, store=tmp_path / f"store-b{n}",
                                address=containerd_daemon.address)
            hit = other("run", *remote)
            assert hit.returncode == 0 and "[RUN]" not in hit.stdout, \
                f"{what}\n{hit.stdout}\n{hit.stderr}"
            _check_outputs(other, tmp_path / f"export-{n}", seed, *remote)
    assert _own_processes(tmp_path) == []
    assert _own_mounts(tmp_path) == []
    assert_clean(runtime)


def _containerds(state: Path) -> list[int]:
    """Pids of the containerd processes serving the worker state directory ``state``."""
    config = str(state)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd") and any(config.encode() in a for a in argv):
            found.append(int(pid))
    return found


def test_a_worker_killed_while_it_restarts_its_containerd_leaves_one_sound_daemon(
        grid, tmp_path, containerd_daemon, runtime):  # noqa: F811 - fixtures
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.daemon import daemon_paths
    from test_remote_exec import Worker

    bg, image = grid
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    pipeline = {"pipeline": "ctrd-kill", "settings": {"max_parallel": 2}, "steps": [
        {"name": f"slow{i}", "image": image, "inputs": ["src/**"], "artifacts": [f"out{i}/"],
         # a service: its pod needs the worker's containerd (a plain step, run by the
         # direct step runner, may not touch it once the image is unpacked)
         "services": [{"name": "db", "image": image,
                       "commands": ["trap 'exit 0' TERM; sleep 600 & wait"]}],
         "commands": ["sleep 1", f"mkdir -p out{i}", f"cp src/seed.txt out{i}/"]}
        for i in (1, 2)]}  # one step for each worker
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address,
                       timeout=300)
    config = tmp_path / "kata-config.yaml"
    config.write_text(f"remote:\n  logstream: {bg.logstream}\n")
    kata.env["KATA_CONFIG"] = str(config)
    rng = random.Random(SEED + 8)
    with worker_pool(grid, names=("c1", "c2")) as pool:
        for n in range(3):
            seed = f"containerd round {n} of {SEED}\n"
            (repo / "src" / "seed.txt").write_text(seed)
            victim = pool[n % 2]
            mark = len(victim.text())
            paths = daemon_paths(victim.state)
            # its containerd dies while it is idle: its next lease finds it gone and it
            # starts the daemon again (the lease handed back), which is when it is killed
            os.kill(int(paths.pidfile.read_text().split()[0]), signal.SIGKILL)
            run = subprocess.Popen([*kata.base, "run", "--remote-executor", bg.url],
                                   cwd=repo, env=kata.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 120
                while "starting it again" not in victim.text()[mark:]:
                    assert victim.proc.poll() is None, victim.text()
                    assert run.poll() is None and time.monotonic() < deadline, \
                        victim.text() + "".join(run.communicate())
                    time.sleep(0.01)
                delay = rng.uniform(0.0, 0.6)
                time.sleep(delay)
                victim.proc.kill()
                victim.proc.wait(30)
                what = f"round {n}: {victim.name} SIGKILLed {delay:.2f}s into its restart"
                print(what, flush=True)
                out, err = run.communicate(timeout=240)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            assert run.returncode == 0, f"{what}\n{out}\n{err}"
            assert "[PASS] slow1" in out and "[PASS] slow2" in out, out
            again = Worker(victim.name, bg.url, bg.logstream, state=victim.state)
            again.wait_ready()
            daemons = _containerds(victim.state)
            assert len(daemons) == 1, f"{what}: containerd processes {daemons}"
            pid = int(paths.pidfile.read_text().split()[0])
            assert daemons == [pid], f"{what}: the pid file names {pid}, running {daemons}"
            assert list((victim.state / "worker").glob("lease-*")) == [], what
            with ContainerdRuntime.connect(address=paths.address,
                                           state_dir=str(victim.state)) as rt:
                left = rt.leftovers()
            assert left == {k: [] for k in left}, (what, left)
            pool[pool.index(victim)] = again
        states = [w.state for w in pool]
    for state in states:  # the pool stopped every worker and its containerd
        assert _containerds(state) == [], state
    assert_clean(runtime)
