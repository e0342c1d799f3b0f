"""Steps without services run by kata's own `crun run` (kata/runtimes/containerd/direct.py).

The session runtime runs them directly (the default ``containerd.step_runner``); the
sandbox, output, exit status, timeout and cancel tests of test_containerd_run.py,
test_sandbox.py and test_resources.py run on it (several on both step runners). Here:
what is new on the direct path: the limits are read from kata's own cgroup, a kata
SIGKILLed mid-step is swept by the next connect, a second Ctrl-C kills at once, steps
with services still go through containerd, and the host config key.
"""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.resources import Resources
from kata.runtimes.base import CANCEL_EXIT, OOM_EXIT, TIMEOUT_EXIT, ServiceSpec, StepSpec
from support.fixtures import assert_clean
from support.procs import kill_once_started
from support.steps import running_steps

MIB = 1 << 20


def _run(rt, spec: StepSpec, cancel: threading.Event | None = None,
         on_line=None) -> tuple[int, list[bytes]]:  # noqa: ANN001
    lines: list[bytes] = []

    def sink(_stream: str, line: bytes) -> None:
        lines.append(line)
        if on_line is not None:
            on_line(line)

    return rt.run(spec, sink, cancel or threading.Event()), lines


def _cgroups(cid: str) -> list[Path]:
    from kata.runtimes.containerd.direct import _cgroup_dirs

    return [d for d in _cgroup_dirs(cid) if d.exists()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.integration
def test_direct_is_the_default_here(runtime):
    assert runtime.direct_unusable == ""  # crun, cgroup v1 (.ci/install-kata)


@pytest.mark.integration
def test_out_of_memory_and_the_pids_limit_are_read_from_kata_s_cgroup(clean_runtime,
                                                                      busybox_digest):
    rt = clean_runtime
    seen: list[str] = []

    def look(_line: bytes) -> None:  # the step's processes are in kata's cgroup
        if not seen:
            (cid, _spec), = running_steps(rt)
            seen.append(cid)

    hog = StepSpec(image=busybox_digest, timeout=60, resources=Resources(memory=64 * MIB),
                   argv=("sh", "-c", "echo up; dd if=/dev/zero of=/dev/null bs=100M count=1"))
    status, _ = _run(rt, hog, on_line=look)
    assert status == OOM_EXIT
    rt.drain()  # the release is deferred
    assert seen and not _cgroups(seen[0])  # removed once read
    assert not (rt.direct.root / rt.client.owner).exists()  # nor an empty dir per process
    forks = StepSpec(image=busybox_digest, timeout=60, resources=Resources(pids=8),
                     argv=("sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; "
                           "exit 1"))
    status, lines = _run(rt, forks)
    assert status in (1, 2)  # 2: the shell could not fork
    assert lines[-1] == (b"kata: the step reached its process limit (8 processes and "
                         b"threads): forks failed")


@pytest.mark.integration
def test_a_sigkilled_kata_mid_step_is_swept_by_the_next_connect(
        containerd_daemon, busybox_digest, runtime, tmp_path):
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys, threading
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.base import StepSpec
        rt = ContainerdRuntime.connect(address={containerd_daemon.address!r},
                                       state_dir={str(containerd_daemon.root.parent)!r})
        assert rt.direct_unusable == "", rt.direct_unusable
        def sink(stream, line):
            open({str(marker)!r}, "w").write("x")
        rt.run(StepSpec(image={busybox_digest!r}, argv=("sh", "-c", "echo up; sleep 1000"),
                        network="default", labels={{"kata.test": "swept"}}),
               sink, threading.Event())
    """)
    kill_once_started(script, marker)
    (cid, _spec), = running_steps(runtime, ("kata.test", "swept"))
    from kata.runtimes.containerd.direct import procs

    pids = procs(cid)
    assert pids and _cgroups(cid)  # crun, the step's sh and its sleep, still running
    left = runtime.leftovers()
    assert left["steps"] and left["snapshots"] and left["netns"]  # dirs, the image view
    assert left["containers"] == left["tasks"] == []  # containerd ran no task for it
    from kata.runtimes.containerd import ContainerdRuntime

    with ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent)) as rt:
        assert rt.leftovers() == {k: [] for k in left}
    assert not _cgroups(cid)
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.integration
def test_a_second_ctrl_c_kills_at_once(containerd_daemon, busybox_digest, runtime):
    from kata.runtimes.containerd import ContainerdRuntime

    with ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent),
                                   stop_grace=3600, sweep=False) as rt:
        cancel = threading.Event()

        def first_then_second(line: bytes) -> None:
            cancel.set()  # SIGTERM, ignored: the step would have an hour
            threading.Timer(0.3, rt.hurry).start()

        spec = StepSpec(image=busybox_digest, argv=(
            "sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"))
        status, lines = _run(rt, spec, cancel, on_line=first_then_second)
        assert status == CANCEL_EXIT and lines == [b"ready"]
        assert_clean(rt)


@pytest.mark.integration
def test_a_step_with_services_still_runs_as_containerd_tasks(clean_runtime, busybox_digest):
    rt = clean_runtime
    seen: list[list[str]] = []

    def look(_line: bytes) -> None:
        if not seen:
            seen.append(sorted(str(spec["process"]["args"][-1]) for _cid, spec
                               in running_steps(rt)))
            seen.append([str(d) for d in rt.direct.step_dirs()])

    spec = StepSpec(image=busybox_digest, argv=("sh", "-c", "echo step; sleep 0.2"),
                    services=(ServiceSpec(name="svc", image=busybox_digest,
                                          argv=("sleep", "1000")),))
    status, lines = _run(rt, spec, on_line=look)
    assert status == 0 and lines == [b"step"]
    tasks, direct = seen
    assert tasks == ["1000", "echo step; sleep 0.2"] and direct == []


@pytest.mark.integration
def test_the_step_runner_is_a_checked_host_config_key(tmp_path, containerd_daemon):
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.config import load_runtime_config

    cfg = tmp_path / "config.yaml"
    cfg.write_text("containerd:\n  step_runner: shim\n")
    with pytest.raises(KataError) as err:
        load_runtime_config(cfg)
    assert err.value.reason == "config.bad_value" and "step_runner" in str(err.value)
    cfg.write_text("containerd:\n  step_runner: task\n")
    config = load_runtime_config(cfg)
    assert config.step_runner == "task"
    with ContainerdRuntime.connect(address=containerd_daemon.address, config=config,
                                   state_dir=str(containerd_daemon.root.parent),
                                   sweep=False) as rt:
        assert rt.direct_unusable == "step_runner: task"
    from kata.runtimes.containerd.config import RuntimeConfig

    assert RuntimeConfig().step_runner == "direct"


@pytest.mark.integration
def test_crun_s_own_errors_are_not_the_step_s(clean_runtime, busybox_digest):
    # a workdir that is a file: crun cannot chdir there, which is not an exec failure;
    # and a missing command is the step's start failure, as on a task
    with pytest.raises(KataError) as err:
        _run(clean_runtime, StepSpec(image=busybox_digest, argv=("true",), workdir="/bin/sh"))
    assert err.value.reason == "runtime.crun_failed" and "/bin/sh" in str(err.value)
    with pytest.raises(KataError) as err:
        _run(clean_runtime, StepSpec(image=busybox_digest, argv=("no-such-command",)))
    assert err.value.reason == "runtime.start_failed"
    assert "executable file `no-such-command` not found" in str(err.value)


@pytest.mark.integration
def test_sigterm_reaches_every_process_of_the_step(clean_runtime, busybox_digest, tmp_path):
    cancel = threading.Event()
    script = ("trap 'echo child-term; wait; exit 0' TERM; (trap 'echo grandchild-term; exit 0' TERM;"
              " echo ready; while true; do sleep 0.1; done) & wait; wait")
    status, lines = _run(clean_runtime, StepSpec(image=busybox_digest, argv=("sh", "-c", script)),
                         cancel, on_line=lambda line: cancel.set() if line == b"ready" else None)
    assert status == CANCEL_EXIT
    assert b"grandchild-term" in lines and b"child-term" in lines


@pytest.mark.parametrize("mount, expected", [
    ({"type": "bind", "source": "/s/1/fs", "options": ["ro", "rbind"]}, (("/s/1/fs",), ())),
    ({"type": "overlay", "source": "overlay",
      "options": ["index=off", "lowerdir=/s/2/fs:/s/1/fs", "ro"]},
     (("/s/2/fs", "/s/1/fs"), ("index=off",))),
])
def test_an_image_view_s_lower_dirs(mount, expected):
    from types import SimpleNamespace

    from kata.runtimes.containerd.direct import _lower_dirs

    assert _lower_dirs([SimpleNamespace(**mount)]) == expected
    with pytest.raises(KataError):
        _lower_dirs([SimpleNamespace(type="tmpfs", source="x", options=[])])


@pytest.mark.integration
def test_a_terminal_s_signals_do_not_reach_the_step_through_crun(clean_runtime, busybox_digest):
    # `crun run` forwards the signals it gets to the container's init; a terminal sends
    # Ctrl-C (SIGINT), Ctrl-\ and Ctrl-Z, and SIGHUP when it closes, to every process of
    # its foreground process group. So crun must not be in kata's process group (or
    # session): as a task's shim is not, the step then sees only kata's cancel (SIGTERM
    # after the run's cancel, SIGKILL on the second Ctrl-C).
    from kata.runtimes.containerd.direct import procs

    seen: list[tuple[int, int]] = []

    def look(line: bytes) -> None:
        if line == b"ready" and not seen:
            (cid, _spec), = running_steps(clean_runtime)
            crun, = (p for p in procs(cid)
                     if Path(f"/proc/{p}/comm").read_text().strip() == "crun")
            seen.append((os.getpgid(crun), os.getsid(crun)))

    status, lines = _run(clean_runtime, StepSpec(image=busybox_digest, timeout=60, argv=(
        "sh", "-c", "echo ready; sleep 0.3")), on_line=look)
    assert status == 0 and lines == [b"ready"]
    (pgid, sid), = seen
    assert pgid != os.getpgrp() and sid != os.getsid(0)


@pytest.mark.integration
def test_a_step_whose_crun_the_oom_killer_took_ends_with_it(clean_runtime, busybox_digest):
    # crun waits inside the step's memory cgroup; a step whose memory is tmpfs pages (no
    # process's RSS) leaves crun the biggest process there and the OOM killer takes it.
    # The step ran on unsupervised, past its timeout, until its output ended (30 s on)
    status, lines = _run(clean_runtime, StepSpec(
        image=busybox_digest, timeout=3, resources=Resources(memory=24 * MIB),
        argv=("sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60 2>/dev/null; "
              "rm -f /dev/shm/fill; for i in 1 2 3 4 5 6 7 8 9 10; do echo alive; sleep 1; "
              "done; echo end")))
    assert status in (OOM_EXIT, TIMEOUT_EXIT) and b"end" not in lines, (status, lines)
