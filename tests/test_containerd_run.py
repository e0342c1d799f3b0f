"""Running steps on a real containerd: exit codes, output, kills, mounts, concurrency.

Every test ends with kata's namespace holding nothing but images (clean_runtime).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.runtimes.base import CANCEL_EXIT, TIMEOUT_EXIT, Mount, StepSpec
from support.fixtures import assert_clean
from support.steps import running_steps
from support.procs import kill_once_started

pytestmark = pytest.mark.integration


class Lines:
    """A thread-safe sink that keeps (stream, line) pairs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.seen = threading.Event()

    def __call__(self, stream: str, line: bytes) -> None:
        with self.lock:
            self.items.append((stream, line))
        self.seen.set()

    def of(self, stream: str) -> list[bytes]:
        return [line for s, line in self.items if s == stream]


def run(rt, digest: str, *argv: str, cancel: threading.Event | None = None, **kw) -> tuple[int, Lines]:
    sink = Lines()
    status = rt.run(StepSpec(image=digest, argv=argv, **kw), sink, cancel or threading.Event())
    return status, sink


@pytest.mark.parametrize("code", [0, 3])
def test_exit_status_is_returned(each_step_runner, busybox_digest, code):
    status, out = run(each_step_runner, busybox_digest, "sh", "-c", f"echo out; echo err >&2; exit {code}")
    assert status == code
    assert out.of("stdout") == [b"out"] and out.of("stderr") == [b"err"]


def test_a_task_killed_by_a_signal_reports_137(each_step_runner, busybox_digest):
    rt = each_step_runner
    label = secrets.token_hex(6)
    c = rt.client

    def killer() -> None:
        from kata.runtimes.containerd.client import tasks_pb2
        from kata.runtimes.containerd.direct import procs

        while True:
            found = running_steps(rt, ("kata.test", label))
            if found and rt.direct_unusable:  # a containerd task
                try:
                    task = c.call(c.tasks.Get, tasks_pb2.GetRequest(container_id=found[0][0]),
                                  "get").process
                except KataError:
                    task = None  # no task yet
                if task is not None and task.status == 2:  # RUNNING: started, not exited
                    c.call(c.tasks.Kill, tasks_pb2.KillRequest(
                        container_id=found[0][0], signal=signal.SIGKILL, all=True), "kill")
                    return
            elif found:  # a direct step: its processes are in its cgroup
                for pid in procs(found[0][0]):
                    try:
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        if argv[:2] == [b"sleep", b"1000"]:
                            os.kill(pid, signal.SIGKILL)
                            return
                    except (OSError, ProcessLookupError):
                        pass
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    status, _ = run(rt, busybox_digest, "sleep", "1000", labels={"kata.test": label})
    t.join()
    assert status == 137


def test_final_partial_line_is_delivered(clean_runtime, busybox_digest):
    status, out = run(clean_runtime, busybox_digest, "printf", "a\\nb\\n\\nlast")
    assert status == 0
    assert out.of("stdout") == [b"a", b"b", b"", b"last"]


def test_a_line_without_end_comes_in_bounded_pieces(clean_runtime, busybox_digest):
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      "head -c 3000000 /dev/zero | tr '\\0' a")
    assert status == 0
    pieces = out.of("stdout")
    assert b"".join(pieces) == b"a" * 3000000
    assert len(pieces) >= 2 and max(map(len, pieces)) <= (1 << 20) + (1 << 16)


def test_100k_lines_none_lost_in_order(clean_runtime, busybox_digest):
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      "seq 1 100000; seq 1 1000 >&2")
    assert status == 0
    assert out.of("stdout") == [str(i).encode() for i in range(1, 100001)]
    assert out.of("stderr") == [str(i).encode() for i in range(1, 1001)]


def test_lines_arrive_while_the_step_runs(clean_runtime, busybox_digest):
    gate = threading.Event()
    sink = Lines()
    first_seen_while_running: list[bool] = []

    def watch() -> None:
        sink.seen.wait(30)
        first_seen_while_running.append(not gate.is_set())

    t = threading.Thread(target=watch)
    t.start()
    status = clean_runtime.run(StepSpec(image=busybox_digest, argv=("sh", "-c", "echo early; sleep 2; echo late")),
                               sink, threading.Event())
    gate.set()
    t.join()
    assert status == 0 and first_seen_while_running == [True]
    assert sink.of("stdout") == [b"early", b"late"]


@pytest.mark.parametrize("runner", ["direct", "task"])
def test_timeout_kills_a_step_that_ignores_sigterm(containerd_daemon, busybox_digest, runtime,
                                                   runner):
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.config import RuntimeConfig

    with ContainerdRuntime.connect(address=containerd_daemon.address, stop_grace=0.5,
                                   config=RuntimeConfig(step_runner=runner), sweep=False) as rt:
        assert (rt.direct_unusable == "") == (runner == "direct")
        status, out = run(rt, busybox_digest, "sh", "-c",
                          "trap '' TERM; echo ready; while true; do sleep 1; done", timeout=1.0)
    assert status == TIMEOUT_EXIT
    assert out.of("stdout") == [b"ready"]
    assert_clean(runtime)


def test_cancel_stops_the_step(each_step_runner, busybox_digest):
    cancel = threading.Event()
    sink = Lines()

    def cancel_when_ready() -> None:
        sink.seen.wait(30)
        cancel.set()

    t = threading.Thread(target=cancel_when_ready)
    t.start()
    script = "trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait"
    status = each_step_runner.run(StepSpec(image=busybox_digest, argv=("sh", "-c", script)),
                               sink, cancel)
    t.join()
    assert status == CANCEL_EXIT
    assert sink.of("stdout") == [b"ready", b"got-term"]  # SIGTERM first: a chance to stop


def test_cancelled_before_it_began(clean_runtime, busybox_digest):
    cancel = threading.Event()
    cancel.set()
    status, out = run(clean_runtime, busybox_digest, "echo", "never", cancel=cancel)
    assert status == CANCEL_EXIT and out.items == []


def test_a_sink_error_is_raised_and_everything_released(clean_runtime, busybox_digest):
    def bad_sink(stream: str, line: bytes) -> None:
        raise ValueError("sink broke")

    with pytest.raises(ValueError):
        clean_runtime.run(StepSpec(image=busybox_digest, argv=("seq", "1", "1000")), bad_sink,
                          threading.Event())


def test_writing_into_a_bind_mount(clean_runtime, busybox_digest, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    (ro_dir / "in.txt").write_text("input\n")
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      "cat /in/in.txt > /out/copy.txt; echo made >> /out/copy.txt; "
                      "touch /in/nope 2>/dev/null || echo ro-refused",
                      mounts=(Mount(kind="bind", source=str(out_dir), target="/out"),
                              Mount(kind="bind", source=str(ro_dir), target="/in", readonly=True)))
    assert status == 0
    assert (out_dir / "copy.txt").read_text() == "input\nmade\n"
    assert out.of("stdout") == [b"ro-refused"]
    assert not (ro_dir / "nope").exists()


def test_overlay_workspace_leaves_lower_layers_untouched(clean_runtime, busybox_digest, tmp_path):
    lower1, lower2, upper, work = (tmp_path / n for n in ("l1", "l2", "upper", "work"))
    for d in (lower1, lower2, upper, work):
        d.mkdir()
    (lower1 / "top.txt").write_text("top\n")
    (lower2 / "base.txt").write_text("base\n")
    (lower2 / "gone.txt").write_text("delete me\n")
    before = {p: p.read_text() for p in (lower1 / "top.txt", lower2 / "base.txt", lower2 / "gone.txt")}
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      "cat /ws/top.txt /ws/base.txt; echo changed > /ws/base.txt; "
                      "rm /ws/gone.txt; echo new > /ws/new.txt; ls /ws",
                      workdir="/ws",
                      mounts=(Mount(kind="overlay", target="/ws", lower=(str(lower1), str(lower2)),
                                    upper=str(upper), work=str(work)),))
    assert status == 0
    assert out.of("stdout") == [b"top", b"base", b"base.txt", b"new.txt", b"top.txt"]
    assert {p: p.read_text() for p in before} == before
    assert (upper / "base.txt").read_text() == "changed\n"
    assert (upper / "new.txt").read_text() == "new\n"
    assert os.stat(upper / "gone.txt").st_rdev == 0  # a whiteout: char device 0/0


def test_tmpfs_mount_env_workdir_user(clean_runtime, busybox_digest):
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      'echo "$GREETING"; pwd; id -u; id -g; grep " /scratch " /proc/mounts | cut -d" " -f3',
                      env={"GREETING": "hello world"}, workdir="/work/sub", user="65534:65534",
                      mounts=(Mount(kind="tmpfs", target="/scratch"),))
    assert status == 0
    assert out.of("stdout") == [b"hello world", b"/work/sub", b"65534", b"65534", b"tmpfs"]


def test_network_none_has_loopback_up_only(clean_runtime, busybox_digest):
    status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                      "ls /sys/class/net; ip link show lo | grep -c LOWER_UP", network="none")
    assert status == 0
    assert out.of("stdout") == [b"lo", b"1"]


def test_network_host_sees_the_host_interfaces(clean_runtime, busybox_digest):
    """A host interface pair made for this test shows in the step (other processes may add and
    remove veths meanwhile, so the lists are not compared whole)."""
    name = f"kt{secrets.token_hex(4)}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                   check=True)  # this kernel has no dummy links; CNI's veths it has
    try:
        status, out = run(clean_runtime, busybox_digest, "ls", "/sys/class/net",
                          network="host")
    finally:
        subprocess.run(["ip", "link", "del", name], check=True)
    assert status == 0
    assert {name.encode(), b"lo"} <= set(out.of("stdout"))


def test_twenty_steps_at_once(each_step_runner, busybox_digest):
    def one(i: int) -> tuple[int, list[bytes]]:
        status, out = run(each_step_runner, busybox_digest, "sh", "-c", f"echo step-{i}; sleep 0.3; exit {i % 3}")
        return status, out.of("stdout")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [(i % 3, [f"step-{i}".encode()]) for i in range(20)]


def test_bad_inputs_are_kata_errors_and_leave_nothing(each_step_runner, busybox_digest, tmp_path):
    with pytest.raises(KataError) as err:
        run(each_step_runner, busybox_digest, "true", user="nobody")
    assert err.value.reason == "runtime.bad_user"
    with pytest.raises(KataError) as err:
        run(each_step_runner, busybox_digest, "true",
            mounts=(Mount(kind="bind", source=str(tmp_path / "missing"), target="/x"),))
    assert err.value.reason == "runtime.bad_mount"
    with pytest.raises(KataError) as err:
        run(each_step_runner, "sha256:" + "0" * 64, "true")
    assert err.value.reason == "image.not_found"
    # a command that does not exist: runc fails at create; still nothing left
    with pytest.raises(KataError) as err:
        run(each_step_runner, busybox_digest, "/no/such/binary")
    assert err.value.reason == "runtime.start_failed"


@pytest.mark.parametrize("message, detail", [
    ('failed to create shim task: OCI runtime create failed: runc create failed: unable to '
     'start container process: exec: "/x": stat /x: no such file or directory: unknown',
     'exec: "/x": stat /x: no such file or directory'),
    ("failed to create shim task: OCI runtime create failed: executable file `x` not found "
     "in $PATH: No such file or directory: unknown (unknown)",
     "executable file `x` not found in $PATH: No such file or directory"),
    ("failed to create shim task: OCI runtime create failed: open executable: Permission "
     "denied: unknown", "open executable: Permission denied"),
    # anything else that fails a create is not the step's command
    ("failed to create shim task: OCI runtime create failed: mount `proc` to `proc`: "
     "Operation not permitted: unknown", None),
    ("failed to create shim task: OCI runtime create failed: runc create failed: unable to "
     "apply cgroup configuration: ...: unknown", None),
])
def test_a_command_that_cannot_start_on_runc_and_crun(message, detail):
    from kata.runtimes.containerd.task import start_failure

    assert start_failure(message) == detail


def test_sigkilled_kata_is_swept_by_the_next_connect(containerd_daemon, busybox_digest, runtime, tmp_path):
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.base import StepSpec
        from kata.runtimes.containerd.config import RuntimeConfig
        rt = ContainerdRuntime.connect(address={containerd_daemon.address!r},
                                       state_dir={str(containerd_daemon.root.parent)!r},
                                       config=RuntimeConfig(step_runner="task"))
        def sink(stream, line):
            open({str(marker)!r}, "w").write("x")
        rt.run(StepSpec(image={busybox_digest!r}, argv=("sh", "-c", "echo up; sleep 1000"),
                        network="default"),
               sink, threading.Event())
    """)
    kill_once_started(script, marker)
    left = runtime.leftovers()
    assert left["containers"] and left["tasks"] and left["snapshots"]
    assert left["leases"] == []  # a step takes none (its container references its snapshot)
    assert left["netns"] and left["fifos"] and left["mounts"]
    from kata.runtimes.containerd import ContainerdRuntime

    with ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent)) as rt:
        assert rt.leftovers() == {k: [] for k in left}


def test_network_default_is_a_bridge_that_reaches_the_host(each_step_runner, busybox_digest):
    import socket

    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(4)
    port = server.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        server.settimeout(60)
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(100))

    t = threading.Thread(target=serve)
    t.start()
    try:
        status, out = run(each_step_runner, busybox_digest, "sh", "-c",
                          "ip -4 -o addr show eth0 | grep -c 'inet 10.89.'; "
                          "gw=$(ip route | awk '/default/ {print $3}'); "
                          f"echo hello-host | nc $gw {port} && echo sent", network="default")
    finally:
        t.join(60)
        server.close()
    assert status == 0, out.items
    assert out.of("stdout") == [b"1", b"sent"]
    assert got == [b"hello-host\n"]


def test_parallel_default_network_steps_get_distinct_addresses(clean_runtime, busybox_digest):
    def one(_: int) -> bytes:
        status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                          "ip -4 -o addr show eth0 | awk '{print $4}'", network="default")
        assert status == 0
        return out.of("stdout")[0]

    with ThreadPoolExecutor(4) as pool:
        addrs = list(pool.map(one, range(4)))
    assert len(set(addrs)) == 4


def test_a_debian_userland_runs(clean_runtime, debian_digest):
    status, out = run(clean_runtime, debian_digest, "bash", "-c",
                      "source /etc/os-release; echo $ID; dpkg-query -W -f='${Package}\\n' bash")
    assert status == 0
    assert out.of("stdout") == [b"debian", b"bash"]


def test_release_after_the_exit_is_deferred_but_complete(each_step_runner, busybox_digest):
    # the status and every line come back before the task, container, snapshot and lease
    # are deleted; a background child holding stdout does not make the output incomplete
    status, out = run(each_step_runner, busybox_digest, "sh", "-c",
                      "sleep 30 & for i in 1 2 3; do echo line $i; done; echo bye >&2; exit 4")
    assert status == 4
    assert out.of("stdout") == [b"line 1", b"line 2", b"line 3"] and out.of("stderr") == [b"bye"]
    each_step_runner.drain()
    assert_clean(each_step_runner)


def test_orphaned_shims_of_a_killed_kata_are_reaped_by_the_next_connect(
        containerd_daemon, busybox_digest, runtime, tmp_path):
    """A kata killed inside Tasks.Create leaves a shim containerd has no container for
    (the sweep deleted the record; nothing in the API reaches it). Made deterministic
    here: three tasks are started, their container records deleted (which containerd
    allows, orphaning the task), then the process is SIGKILLed. The next connect ends
    the shims and the containers' processes, unmounts their rootfs and frees the rest."""
    from kata.runtimes.containerd import orphans

    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys, threading
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.containerd.cleanup import Cleanup
        from kata.runtimes.containerd.client import containers_pb2
        from kata.runtimes.containerd.task import StepRun, TaskOptions
        from kata.runtimes.base import StepSpec
        rt = ContainerdRuntime.connect(address={containerd_daemon.address!r},
                                       state_dir={str(containerd_daemon.root.parent)!r})
        image = rt.images.run_image({busybox_digest!r})
        for i in range(3):
            spec = StepSpec(image={busybox_digest!r}, argv=("sleep", "1000"),
                            network="none")
            run = StepRun(rt.client, TaskOptions(fifo_root=rt.fifo_root), spec, image,
                          lambda s, d: None,
                          threading.Event())
            run.launch(Cleanup())
            c = rt.client
            c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=run.id), "x")
        import time
        time.sleep(0.5)
        open({str(marker)!r}, "w").write("x")
        time.sleep(1000)
    """)
    kill_once_started(script, marker)
    address = containerd_daemon.address
    left = orphans.shims(address, "kata")
    assert len(left) == 3
    shim_pids = [s.pid for s in left]
    inits = [int((Path(s.bundle) / "init.pid").read_text()) for s in left]
    assert all(b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in inits)
    assert len(runtime.leftovers()["shims"]) == 3 and len(runtime.leftovers()["mounts"]) == 3
    from kata.runtimes.containerd import ContainerdRuntime

    with ContainerdRuntime.connect(address=address,
                                   state_dir=str(containerd_daemon.root.parent)) as rt:
        assert rt.leftovers() == {k: [] for k in rt.leftovers()}
    assert orphans.shims(address, "kata") == []
    for pid in shim_pids:
        assert not Path(f"/proc/{pid}/cmdline").exists() or \
            Path(f"/proc/{pid}/cmdline").read_bytes() == b""  # gone, or a zombie
    for pid in inits:  # the containers' processes ended with their shims
        assert not Path(f"/proc/{pid}/cmdline").exists() or \
            b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()

def test_a_steps_snapshot_survives_containerd_gc_without_a_lease(clean_runtime, busybox_digest):
    """Steps take no lease (two calls fewer): the container is created first and names its
    snapshot, which containerd's gc then counts as referenced. A synchronous gc run
    (deleting a lease with sync) while steps start and run leaves their root filesystems."""
    from kata.runtimes.containerd.client import leases_pb2

    c = clean_runtime.client
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            with c.lease("gc-trigger", sync_delete=True):
                pass

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        def one(i: int) -> tuple[int, list[bytes]]:
            status, out = run(clean_runtime, busybox_digest, "sh", "-c",
                              f"sleep 0.2; test -x /bin/sh && echo rootfs-{i}")
            return status, out.of("stdout")

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(8)))
    finally:
        stop.set()
        collector.join()
    assert results == [(0, [f"rootfs-{i}".encode()]) for i in range(8)]
    assert c.call(c.leases.List, leases_pb2.ListRequest(), "list leases").leases == []


def _cgroup_dirs(cid: str) -> list[str]:
    """Where ``cid``'s cgroup (kata's parent, spec.cgroup_path) still exists, any hierarchy."""
    from kata.runtimes.containerd.spec import cgroup_path

    root = Path("/sys/fs/cgroup")
    return [str(h / cgroup_path(cid).lstrip("/")) for h in root.iterdir()
            if (h / cgroup_path(cid).lstrip("/")).is_dir()]


def test_a_kata_killed_inside_the_oci_runtime_s_create_leaves_no_cgroup(
        containerd_daemon, busybox_digest, runtime, tmp_path):
    """kata SIGKILLed while the shim's ``crun create`` is under way (made deterministic
    by a createRuntime hook that sleeps: crun has made the container's cgroups in every
    hierarchy and not yet written its ``status``). The next connect's sweep ends the
    shim, which SIGKILLs that crun (the shim runs it with a parent-death signal): its
    state directory holds no ``status``, so ``crun delete --force`` cannot know the
    cgroup, and the cgroup used to stay behind, empty, in every controller."""
    marker = tmp_path / "started"
    hook_arg = f"59.{secrets.randbelow(10**6)}"  # this test's hook, to end it afterwards
    kill_once_started(_held_create(containerd_daemon, busybox_digest, hook_arg, marker),
                      marker)
    cid = marker.read_text()
    try:
        assert _cgroup_dirs(cid), "crun create never made the cgroup"
        from kata.runtimes.containerd import ContainerdRuntime

        with ContainerdRuntime.connect(address=containerd_daemon.address,
                                       state_dir=str(containerd_daemon.root.parent)) as rt:
            assert rt.leftovers() == {k: [] for k in rt.leftovers()}
        assert _cgroup_dirs(cid) == []
    finally:
        _end_hook(hook_arg)


def _held_create(paths, digest: str, hook_arg: str, marker: Path,  # noqa: ANN001
                 then: str = "") -> str:
    """A script that starts a step on the containerd of ``paths`` with ``crun create``
    held by a createRuntime hook (``sleep HOOK_ARG``), runs ``then`` once the step's
    cgroup exists, writes the step's id to ``marker`` and waits to be killed."""
    return textwrap.dedent(f"""
        import os, threading, time
        import kata.runtimes.containerd.task as task
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.containerd.cleanup import Cleanup
        from kata.runtimes.containerd.task import StepRun, TaskOptions
        from kata.runtimes.base import StepSpec
        compiled = task.compiled_seccomp
        def hooked(spec, options):
            compiled(spec, options)
            spec["hooks"] = {{"createRuntime": [
                {{"path": "/usr/bin/sleep", "args": ["sleep", {hook_arg!r}]}}]}}
        task.compiled_seccomp = hooked
        rt = ContainerdRuntime.connect(address={paths.address!r},
                                       state_dir={str(paths.root.parent)!r})
        image = rt.images.run_image({digest!r})
        spec = StepSpec(image={digest!r}, argv=("true",), network="none")
        run = StepRun(rt.client, TaskOptions(fifo_root=rt.fifo_root), spec, image,
                      lambda s, d: None, threading.Event())
        threading.Thread(target=run.launch, args=(Cleanup(),), daemon=True).start()
        while not os.path.isdir("/sys/fs/cgroup/pids/kata/" + run.id):
            time.sleep(0.02)
    """) + textwrap.dedent(then).lstrip("\n") + textwrap.dedent(f"""
        with open({str(marker)!r} + ".tmp", "w") as f:
            f.write(run.id)
        os.rename({str(marker)!r} + ".tmp", {str(marker)!r})
        time.sleep(1000)
    """)


def _end_hook(hook_arg: str) -> None:
    """SIGKILL this test's createRuntime hook (``sleep HOOK_ARG``), whatever is left of it."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{hook_arg}\0".encode():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def test_containerd_killed_inside_the_oci_runtime_s_create_leaves_no_cgroup(tmp_path):
    """containerd SIGKILLed while the shim's ``crun create`` is under way (held by a
    createRuntime hook): the shim's ttrpc connection closes, which cancels the request
    and so SIGKILLs that crun (go-runc runs it under the request's context) with the
    cgroups made and no ``status`` written. kata's Tasks.Create fails, the container
    record stays (its task could not be deleted), and once containerd is back the next
    connect's sweep must leave no cgroup of it."""
    from kata.runtimes.containerd import ContainerdRuntime
    from kata.runtimes.containerd.daemon import ensure_daemon, read_pid
    from support.daemon import embedded_containerd
    from support.images import busybox_image, write_oci_archive

    marker = tmp_path / "started"
    hook_arg = f"58.{secrets.randbelow(10**6)}"
    with embedded_containerd("kc") as paths:  # the test's own: it is killed
        with ContainerdRuntime.connect(address=paths.address,
                                       state_dir=str(paths.root.parent)) as rt:
            rt.import_image(write_oci_archive(busybox_image(), tmp_path / "busybox.tar"))
            digest = rt.resolve_image(busybox_image().ref)
        script = _held_create(paths, digest, hook_arg, marker, then=f"""
            os.kill({read_pid(paths)}, 9)  # containerd, mid-create
            time.sleep(1)
        """)
        kill_once_started(script, marker)
        cid = marker.read_text()
        try:
            ensure_daemon(paths)
            with ContainerdRuntime.connect(address=paths.address,
                                           state_dir=str(paths.root.parent)) as rt:
                assert rt.leftovers() == {k: [] for k in rt.leftovers()}
            assert _cgroup_dirs(cid) == []
        finally:
            _end_hook(hook_arg)
