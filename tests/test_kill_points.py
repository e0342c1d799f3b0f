"""`kata run` killed at random moments of a real run (issue 13's standard: nothing
half-written in the store, nothing leaked), seeded and reproducible.

Each round changes the input every step reads, starts a real `kata run` on the test's
containerd, and after a random delay inside the time an unhurried run takes sends it
SIGKILL, SIGINT or SIGTERM: so the kill lands in mount setup, a step's start, a running
step beside its service, output capture into the store, artifact copies or the record's
writing, wherever the dice say. Then the next `kata run` must pass with correct results
(the exported artifacts check against the checksums the step wrote beside them: a
half-written output taken as a hit fails), `kata store verify` must find nothing wrong,
and containerd, the mounts, the cgroups and the processes must hold nothing of the runs.

KATA_KILL_SEED=<n> picks another seed; KATA_KILL_ROUNDS=<n> another number of rounds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from support.cli import KataProcess
from support.cgroups import OwnCgroups
from support.fixtures import assert_clean

pytestmark = pytest.mark.integration

IMAGE = "kata.local/busybox:latest"
SEED = int(os.environ.get("KATA_KILL_SEED", "20261201"))
ROUNDS = int(os.environ.get("KATA_KILL_ROUNDS", "12"))

PIPELINE = {
    "pipeline": "chaos", "settings": {"fail_fast": False},
    "steps": [
        {"name": "make", "image": IMAGE, "inputs": ["src/**"], "artifacts": ["out/"],
         "commands": [
             "mkdir -p out",
             "i=0; while [ $i -lt 150 ]; do cat src/seed.txt > out/f$i; i=$((i+1)); done",
             "head -c 2000000 /dev/zero | tr '\\0' x > out/big",
             "cat src/seed.txt >> out/big",
             "cd out && sha256sum f* big > ../SUMS && mv ../SUMS SUMS"]},
        {"name": "svc", "image": IMAGE, "inputs": ["src/**"],
         "services": [{"name": "db", "image": IMAGE,
                       "commands": ["trap 'exit 0' TERM; sleep 600 & wait"]}],
         "commands": ["cat src/seed.txt", "sleep 0.3"]},
        {"name": "use", "image": IMAGE, "depends_on": ["make"], "inputs": ["src/**"],
         "artifacts": ["checked"],
         "commands": ["cd out && sha256sum -c SUMS >/dev/null",
                      "grep -qx \"$(cat ../src/seed.txt)\" f7", "echo ok > ../checked"]},
    ]}


def _own_processes(root: Path) -> list[str]:
    """Processes whose cwd or argv lies under ``root`` (this test's own directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(root)) or str(root) in argv:
            found.append(f"{pid}: {argv.strip()} (cwd {cwd})")
    return found


def _own_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


def killed_run(kata: KataProcess, args: tuple[str, ...], delay: float,
               kill) -> tuple[int, str, str]:  # noqa: ANN001 - kill(proc): the blow
    """`kata ARGS` in ``kata.repo``, with ``kill(proc)`` (a signal to it, or to something it
    needs) ``delay`` seconds after its start: (exit status, stdout, stderr)."""
    proc = subprocess.Popen([*kata.base, *args], cwd=kata.repo, env=kata.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(delay)
        kill(proc)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _no_traceback_of_kata(err: str, what: str) -> None:
    """No traceback, but for the interpreter's own when the signal lands before any kata
    code runs (Python importing `site`: "init_import_site"; nothing kata can catch)."""
    from support.cli import ROOT

    if "Traceback" in err:
        assert "init_import_site" in err and str(ROOT) not in err, f"{what}\n{err}"


def _check_outputs(kata: KataProcess, out: Path, seed: str, *remote: str) -> None:
    res = kata("export", "--step", "make", "--out", str(out), *remote)
    assert res.returncode == 0, res.stdout + res.stderr
    sums = (out / "out" / "SUMS").read_text().splitlines()
    assert len(sums) == 151, sums
    check = subprocess.run(["sha256sum", "-c", "SUMS"], cwd=out / "out",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert (out / "out" / "f7").read_text() == seed


def test_kata_run_killed_at_random_moments_leaves_a_clean_store_and_host(
        tmp_path, containerd_daemon, runtime):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    rng = random.Random(SEED)

    # an unhurried run: how long the kills may wait
    (repo / "src" / "seed.txt").write_text("round -1\n")
    started = time.monotonic()
    first = kata("run")
    span = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    log = []
    with OwnCgroups(containerd_daemon) as own:
        for n in range(ROUNDS):
            seed = f"round {n} of {SEED}\n"
            (repo / "src" / "seed.txt").write_text(seed)
            sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
            delay = rng.uniform(0.0, span)
            code, out, err = killed_run(kata, ("run",), delay, lambda p: p.send_signal(sig))
            what = f"round {n}: {sig.name} after {delay:.2f}s, exit {code}"
            if os.environ.get("KATA_KILL_TRACE"):
                print("TRACE", what, out[-1500:], err[-500:], flush=True)
            log.append(what)
            print(what, flush=True)
            _no_traceback_of_kata(err, what)
            if sig != signal.SIGKILL:
                # cancelled and cleaned up (130), done before the signal (0), or ended by the
                # signal's own action: before kata sets its handlers (while it starts), or
                # raised again once the cleanup that held it back is over (runtime.close);
                # -SIGINT: seen once under load after "interrupted" (a shell shows 130 for it)
                assert code in (0, 130, -sig, -signal.SIGINT) or \
                    "init_import_site" in err, f"{what}\n{out}\n{err}"
            again = kata("run")
            assert again.returncode == 0, f"{what}\n{again.stdout}\n{again.stderr}"
            _check_outputs(kata, tmp_path / f"export-{n}", seed)
            verify = kata("store", "verify")
            assert verify.returncode == 0, f"{what}\n{verify.stdout}\n{verify.stderr}"
            assert_clean(runtime)
            assert _own_mounts(tmp_path) == [], what
            assert _own_processes(tmp_path) == [], what
            # no cgroup of this test's containers outlives the round (tests/support/cgroups.py:
            # step cgroups are host-wide, so only the ids this containerd had count)
            assert own.left() == {}, f"{what}: cgroups left (id: pids in it)"


@pytest.mark.parametrize("module", ["kata.cli", "kata.realise.noop", "click"])
def test_ctrl_c_while_kata_starts_is_one_line_and_exit_130(tmp_path, module):
    """Ctrl-C while `kata` is still importing (the first tenth of a second of every
    command) used to print Python's KeyboardInterrupt traceback and exit 1. The signal
    is raised by an import hook at the moment ``module`` is imported, so the test does
    not depend on timing."""
    import sys

    from support.cli import ROOT

    hook = (
        "import importlib.abc, runpy, signal, sys\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name == {module!r}:\n"
        "            sys.meta_path.remove(self)\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv[0] = 'kata'\n"
        "runpy.run_module('kata', run_name='__main__', alter_sys=True)\n")
    res = subprocess.run([sys.executable, "-c", hook, "--version"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "KATA_STORE": str(tmp_path / "store")},
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    assert (res.returncode, res.stderr) == (130, "interrupted\n"), res


def test_kata_run_with_a_remote_cache_killed_at_random_moments_uploads_nothing_half_made(
        tmp_path, containerd_daemon, runtime):
    """The same kills with a remote cache (BuildGrid, cache-only): the kill may land in an
    upload. After each, a new host (an empty store) runs the pipeline from the remote:
    it passes and the artifacts it gets check against their sums (an action result whose
    blobs never all arrived is no hit); host A's next run sends what it still owed."""
    from support.buildgrid import BuildGridConfig, buildgrid

    rng = random.Random(SEED + 1)
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    with buildgrid(tmp_path / "bgd", BuildGridConfig(instance="main")) as bg:
        remote = ("--remote-cache", bg.url, "--remote-instance", "main")
        kata = KataProcess(repo, store=tmp_path / "store-a", address=containerd_daemon.address)
        (repo / "src" / "seed.txt").write_text("round -1\n")
        started = time.monotonic()
        first = kata("run", *remote)
        span = time.monotonic() - started
        assert first.returncode == 0, first.stdout + first.stderr
        for n in range(max(1, ROUNDS // 2)):
            seed = f"remote round {n} of {SEED}\n"
            (repo / "src" / "seed.txt").write_text(seed)
            sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
            delay = rng.uniform(0.0, span)
            code, _, err = killed_run(kata, ("run", *remote), delay,
                                      lambda p: p.send_signal(sig))
            what = f"round {n}: {sig.name} after {delay:.2f}s, exit {code}"
            print(what, flush=True)
            _no_traceback_of_kata(err, what)
            host_b = KataProcess(repo, store=tmp_path / f"store-b{n}",
                                 address=containerd_daemon.address)
            b = host_b("run", *remote)
            assert b.returncode == 0, f"{what}\n{b.stdout}\n{b.stderr}"
            _check_outputs(host_b, tmp_path / f"export-b{n}", seed, *remote)
            again = kata("run", *remote)
            assert again.returncode == 0, f"{what}\n{again.stdout}\n{again.stderr}"
            _check_outputs(kata, tmp_path / f"export-a{n}", seed, *remote)
            for host in (kata, host_b):
                verify = host("store", "verify")
                assert verify.returncode == 0, f"{what}\n{verify.stdout}\n{verify.stderr}"
            assert_clean(runtime)
            assert _own_processes(tmp_path / "repo") == [], what


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_before_the_steps_start_cleans_up_as_ctrl_c_does(
        tmp_path, containerd_daemon, runtime, signo):
    """SIGTERM (a CI runner's timeout, `kill`) or SIGHUP after the run has connected to
    containerd, resolved its images and opened the store, but before the scheduler sets
    its handlers: the run used to die by the signal's default action (exit -15, no word,
    its runtime's views left for the next run's sweep); it now stops as after Ctrl-C:
    one line, exit 130, nothing left. The signal comes from an import hook at that
    moment (the live journal's import), so the test does not depend on timing."""
    import sys

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "seed.txt").write_text("early\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    hook = (
        "import importlib.abc, runpy, signal, sys\n"
        "class Hook(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'kata.report.journal':\n"
        "            sys.meta_path.remove(self)\n"
        f"            signal.raise_signal({int(signo)})\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv[0] = 'kata'\n"
        "runpy.run_module('kata', run_name='__main__', alter_sys=True)\n")
    res = subprocess.run([sys.executable, "-c", hook, *kata.base[3:], "run"], cwd=repo,
                         env=kata.env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 130, res
    # "aborted": the word the CLI has for a Ctrl-C outside the steps (click's Abort)
    assert res.stderr.splitlines()[-1] in ("interrupted", "aborted"), res.stderr
    assert _own_processes(tmp_path) == []
    assert_clean(runtime)  # its own cleanup: no next run has swept anything


def _reuse_pid(pid: int) -> subprocess.Popen | None:
    """A new process with ``pid`` (a dead process's), made by setting the pid namespace's
    last pid (/proc/sys/kernel/ns_last_pid, root) just below it; None when another
    process of the machine got it first (it is then reused all the same)."""
    from procs import pid_alive

    for _ in range(50):
        if pid_alive(pid):
            return None
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "300"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise AssertionError(f"pid {pid} could not be reused")


def test_a_killed_runs_workspace_is_swept_even_once_its_pid_is_reused(
        tmp_path, containerd_daemon, runtime):
    """A SIGKILLed run's workspaces (overlay mounts under the store's work root) are
    swept by the next run, which asked only whether the run's *pid* was alive: once a
    new process had that pid (a busy CI host wraps 32,768 pids in minutes: seen in the
    kill-point test), the mounts stayed for good. The run's directory now names its
    process by pid and start time, as the store's ingest files and containerd's owner
    labels do."""
    from procs import pid_alive

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "seed.txt").write_text("one\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "reuse", "steps": [
        {"name": "long", "image": IMAGE, "inputs": ["src/**"],
         "commands": ["echo started", "sleep 60"]}]}, sort_keys=False))
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    proc = subprocess.Popen([*kata.base, "run"], cwd=repo, env=kata.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line == "long | started\n":
            break
    assert _own_mounts(tmp_path), "the step's workspace is not mounted: nothing to sweep"
    proc.kill()
    proc.communicate()
    taker = _reuse_pid(proc.pid)
    try:
        assert pid_alive(proc.pid)
        (repo / "src" / "seed.txt").write_text("two\n")
        (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "reuse", "steps": [
            {"name": "long", "image": IMAGE, "inputs": ["src/**"], "commands": ["true"]}]}))
        again = kata("run")
        assert again.returncode == 0, again.stdout + again.stderr
        assert _own_mounts(tmp_path) == []
        assert [p.name for p in (tmp_path / "store" / "local" / "work").iterdir()
                if p.name.startswith("run-")] == []
    finally:
        if taker is not None:
            taker.kill()
            taker.wait()
    assert_clean(runtime)


def test_a_dead_embedded_containerds_pid_taken_by_another_containerd_is_not_it(
        tmp_path, containerd_daemon):
    """kata's embedded containerd SIGKILLed, and its pid taken by another containerd (on a
    host running several, e.g. one per CI job or test session): its pid file was believed
    (the check was only that the process is named containerd), so `kata daemon status`
    said it was running and `kata daemon stop` SIGTERMed the other one. The process must
    be containerd started with this daemon's own config."""
    from kata.runtimes.containerd.daemon import daemon_paths, daemon_status, read_pid, stop_daemon

    other = read_pid(containerd_daemon)  # the session's containerd: not the one below
    assert other is not None
    paths = daemon_paths(tmp_path / "dead")
    paths.pidfile.parent.mkdir(parents=True, exist_ok=True)
    paths.pidfile.write_text(f"{other}\n")
    assert read_pid(paths) is None
    assert daemon_status(paths)["running"] is False
    assert stop_daemon(paths) is False  # and nothing was signalled
    assert read_pid(containerd_daemon) == other


def test_a_read_only_store_says_what_to_do(tmp_path, containerd_daemon, runtime):
    """The store remounted read-only (a full disk's errors=remount-ro, a shared store
    mounted ro). A command that writes (run, gc, verify --repair) ends in one line naming
    the store and what to do, exit 2 (the user's to fix), no traceback. Commands that only
    read (runs, logs, why, export, store stats, store verify, run --dry-run) read it: they failed too,
    since the index was opened for writing (last session's leftover). Nothing is written
    in the store. Mounted read-write again, the next run passes and nothing was left."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "seed.txt").write_text("ro\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    store = tmp_path / "store"
    kata = KataProcess(repo, store=store, address=containerd_daemon.address)
    assert kata("run").returncode == 0
    runs_before = json.loads(kata("runs", "--json").stdout)["runs"]
    (repo / "src" / "seed.txt").write_text("ro again\n")
    private = tmp_path / "tmp"  # where a read-only store's private index goes ($TMPDIR)
    private.mkdir()
    kata.env["TMPDIR"] = str(private)
    subprocess.run(["mount", "--bind", str(store), str(store)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(store)], check=True)
        for args in (("run",), ("store", "gc"), ("store", "verify", "--repair")):
            res = kata(*args)
            assert res.returncode == 2, (args, res)
            (last,) = res.stderr.splitlines()[-1:]
            assert last.startswith(f"error: cannot open the store's index at {store}") and \
                "mount it read-write, or name a store on a writable filesystem with " \
                "--store DIR" in last, (args, res.stderr)
        listed = kata("runs", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["runs"] == runs_before
        for args in (("logs", "--step", "make"), ("store", "verify"), ("store", "stats"),
                     ("why", "//make"), ("cache", "list")):
            res = kata(*args)
            assert res.returncode == 0, (args, res)
        assert "Checked " in kata("store", "verify").stdout
        assert "input file src/seed.txt" in kata("why", "//make").stdout  # edited since
        plan = kata("run", "--dry-run")  # a plan writes nothing: it was refused as a run
        assert plan.returncode == 0 and "[PLAN] make: MISS" in plan.stdout, plan
        _check_outputs(kata, tmp_path / "export-ro", "ro\n")
    finally:
        subprocess.run(["umount", str(store)], check=True)
    assert os.listdir(private) == [], "a read-only store's private index was left"
    again = kata("run")
    assert again.returncode == 0, again.stdout + again.stderr
    _check_outputs(kata, tmp_path / "export", "ro again\n")
    assert_clean(runtime)
    assert _own_mounts(tmp_path) == []


def test_containerd_killed_at_random_moments_of_a_run(tmp_path):
    """kata's containerd (the test's own) SIGKILLed at seeded random moments of a real run
    (tests/test_faults.py kills it mid-step only): the run ends without a traceback,
    passing or exit 1/2, and once containerd is started again the next run passes with
    correct artifacts, the store verifies, and containerd holds nothing of the runs."""
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.daemon import ensure_daemon, read_pid
    from support.daemon import embedded_containerd
    from support.images import busybox_image, write_oci_archive

    rng = random.Random(SEED + 3)
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    with embedded_containerd("kk") as paths:  # the test's own: it is killed
        with ContainerdRuntime.connect(address=paths.address,
                                       state_dir=str(paths.root.parent)) as rt:
            rt.import_image(write_oci_archive(busybox_image(), tmp_path / "busybox.tar"))
        kata = KataProcess(repo, store=tmp_path / "store", address=paths.address)
        (repo / "src" / "seed.txt").write_text("round -1\n")
        started = time.monotonic()
        assert kata("run").returncode == 0
        span = time.monotonic() - started
        with OwnCgroups(paths) as own:
            for n in range(max(1, ROUNDS // 3)):
                seed = f"containerd round {n} of {SEED}\n"
                (repo / "src" / "seed.txt").write_text(seed)
                delay = rng.uniform(0.0, span)
                code, out, err = killed_run(kata, ("run",), delay,
                                            lambda _: os.kill(read_pid(paths), signal.SIGKILL))
                what = f"round {n}: containerd SIGKILLed after {delay:.2f}s, exit {code}"
                print(what, flush=True)
                _no_traceback_of_kata(err, what)
                assert code in (0, 1, 2), f"{what}\n{out}\n{err}"
                ensure_daemon(paths)
                again = kata("run")
                assert again.returncode == 0, f"{what}\n{again.stdout}\n{again.stderr}"
                _check_outputs(kata, tmp_path / f"export-{n}", seed)
                verify = kata("store", "verify")
                assert verify.returncode == 0, f"{what}\n{verify.stdout}\n{verify.stderr}"
                with ContainerdRuntime.connect(address=paths.address,
                                               state_dir=str(paths.root.parent)) as rt:
                    left = rt.leftovers()
                assert left == {k: [] for k in left}, (what, left)
                assert _own_mounts(tmp_path) == [], what
                assert _own_processes(tmp_path) == [], what
                assert own.left() == {}, f"{what}: cgroups left (id: pids in it)"


def _small(word: str) -> dict:
    """Two steps whose outputs all name ``word`` (two repositories share no object)."""
    return {"pipeline": "cached", "steps": [
        {"name": "one", "image": IMAGE, "inputs": ["src/**"],
         "commands": [f"echo {word} one", "cat src/seed.txt"]},
        {"name": "two", "image": IMAGE, "inputs": ["src/**"], "depends_on": ["one"],
         "commands": [f"echo {word} two"]}]}

# `kata ARGS`, SIGKILLed when the run closes its runtime: every step ran and its result is
# recorded, and the shim group's anchors (and their tasks, shims, mounts) still idle
KILL_AT_CLOSE = (
    "import os, runpy, signal, sys\n"
    "import kata.cli.run_cmds as rc\n"
    "def close(self, **kw):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "rc.LazyRuntime.close = close\n"
    "sys.argv[0] = 'kata'\n"
    "runpy.run_module('kata', run_name='__main__', alter_sys=True)\n")

# a kata process on the store at argv[2] and the containerd at argv[1] that runs one step
# through the CLI's runtime and is SIGKILLed as it returns: its task, container, view
# snapshot, shim and the shim group's anchor are left, and no object of the store is
# touched (a run's objects, the empty log among them, are named by the other
# repository's no-op record: a run through the store would make that one fall back)
KILLED_AFTER_A_STEP = (
    "import os, signal, sys, threading\n"
    "from kata.cli.run_cmds import LazyRuntime\n"
    "from kata.runtimes.base import StepSpec\n"
    "from store import Store\n"
    "with Store.open(sys.argv[2]) as store:\n"
    "    state = store.state_dir\n"
    "rt = LazyRuntime(sys.argv[1], state_dir=state)\n"
    f"image = rt.resolve_image({IMAGE!r})\n"
    "rt.run(StepSpec(image=image, argv=('true',)), lambda *a: None, threading.Event())\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n")


def _replayed(proc: subprocess.CompletedProcess) -> bool:
    """Whether a run (with PYTHONPROFILEIMPORTTIME=1) was the no-op replay: no CLI imported."""
    mods = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}
    assert mods, "run with PYTHONPROFILEIMPORTTIME=1"
    return "kata.cli" not in mods


def _said(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def _repo(path: Path, word: str) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "src" / "seed.txt").write_text(f"{word}\n")
    (path / ".kata-ci.yaml").write_text(yaml.safe_dump(_small(word), sort_keys=False))
    return path


def _killed(kata: KataProcess, code: str) -> subprocess.CompletedProcess:
    import sys

    res = subprocess.run([sys.executable, "-c", code, *kata.base[3:], "run"],
                         cwd=kata.repo, env=kata.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res
    return res


def test_a_fully_cached_run_clears_what_a_kata_killed_after_its_steps_left(
        tmp_path, containerd_daemon, runtime):
    """A `kata run` SIGKILLed once its steps ran leaves its shim group's idle anchors (and
    their tasks, shims, mounts); the next run is all cache hits and never needs containerd
    for a step, yet it clears them: the killed run's owner marker names the containerd."""
    repo = _repo(tmp_path / "repo", "killed")
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    assert "killed two" in _killed(kata, KILL_AT_CLOSE).stdout  # the steps ran first
    assert any(runtime.leftovers().values()), "the kill left nothing: the test tests nothing"
    again = kata("run", PYTHONPROFILEIMPORTTIME="1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not _replayed(again)  # no no-op record yet: the full path, all hits
    assert "2 cached, 0 ran" in again.stdout, again.stdout
    assert _said(again) == [], again.stderr
    assert_clean(runtime)
    assert _own_mounts(tmp_path) == []
    assert _own_processes(tmp_path) == []
    assert not any((tmp_path / "store").rglob("containerd-owners/*"))


def test_a_no_op_replay_clears_what_a_killed_kata_left_on_the_same_store(
        tmp_path, containerd_daemon, runtime):
    """The no-op replay (before the CLI is imported) sweeps what a kata SIGKILLed after
    its steps left, found by its owner marker in the store's state directory; with no
    marker it only lists that directory."""
    store = tmp_path / "store"
    cached = KataProcess(_repo(tmp_path / "cached", "cached"), store=store,
                         address=containerd_daemon.address)
    assert cached("run").returncode == 0
    for _ in range(2):  # as tests/test_noop_replay.py: a record needs settled files
        time.sleep(2.1)  # kata.realise.noop.RACY_NS: files this old may be recorded
        assert cached("run").returncode == 0  # all hits: writes the no-op record
        if any(store.rglob("noop/*")):
            break
    else:
        raise AssertionError("a settled no-op leaves a record")
    import sys

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_STEP, containerd_daemon.address,
                             str(store)], env=cached.env, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed
    assert any(runtime.leftovers().values()), "the kill left nothing: the test tests nothing"
    again = cached("run", PYTHONPROFILEIMPORTTIME="1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _replayed(again)
    assert _said(again) == [], again.stderr
    assert_clean(runtime)
    assert _own_mounts(tmp_path) == []
    assert _own_processes(tmp_path) == []
    assert not any(store.rglob("containerd-owners/*"))
    from kata.realise.noop import MARKERS
    from kata.runtimes.sweepmarks import DIR_NAME

    assert MARKERS == DIR_NAME  # the replay's own name for the directory
