"""One containerd shim for all of a runtime's containers (kata/runtimes/containerd/shimgroup.py).

Parallel starts and deletes on the shared shim, the group ending and restarting under
steps that start at that moment (the race of an earlier attempt), a step that cannot
start, and a kata killed with containers in flight in a shared shim: nothing leaks.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.runtimes.base import StepSpec
from kata.runtimes.containerd import ContainerdRuntime, orphans
from support.fixtures import assert_clean
from support.procs import kill_once_started

pytestmark = pytest.mark.integration


@pytest.fixture
def clean_runtime(containerd_daemon, runtime):
    """A runtime with ``containerd.shared_shim: true`` (the default, whatever the host's
    config says) on the session's daemon (its images: ``runtime``), checked to hold
    nothing but images after the test."""
    from kata.runtimes.containerd.config import RuntimeConfig

    rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent),
                                   config=RuntimeConfig(shared_shim=True, step_runner="task"))
    try:
        yield rt
        assert_clean(rt)
    finally:
        rt.close()


def _step(rt, digest: str, i: int, network: str = "none") -> tuple[int, list[bytes]]:
    lines: list[bytes] = []
    status = rt.run(StepSpec(image=digest, argv=("sh", "-c", f"echo out {i}; exit {i % 3}"),
                             network=network),
                    lambda _s, line: lines.append(line), threading.Event())
    return status, lines


def _our_shims(rt) -> list[orphans.Shim]:
    """The shim daemons of the test's containerd: not the short-lived ``shim start`` and
    ``shim delete`` processes containerd runs per task, nor a daemon's own children in
    the moment between fork and exec (they still show its command line)."""
    found = []
    for shim in orphans.shims(rt.client.address, rt.client.namespace):
        try:
            argv = Path(f"/proc/{shim.pid}/cmdline").read_bytes().split(b"\0")
            ppid = Path(f"/proc/{shim.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1]
            parent = Path(f"/proc/{int(ppid)}/comm").read_bytes().strip()
        except OSError:
            continue
        if argv == [b""]:  # a zombie (a start or delete process that just exited)
            continue
        if not {b"start", b"delete"} & set(argv) and not parent.startswith(b"containerd-shim"):
            found.append(shim)
    return found


def test_parallel_steps_share_one_shim_and_leave_nothing(clean_runtime, busybox_digest):
    rt = clean_runtime
    assert rt.shim_group is not None
    rt.drain()
    made = rt.shim_group.anchors_made
    seen_shims: set[str] = set()  # the container ids shim daemons were started for
    stop = threading.Event()

    def watch() -> None:  # every shim of our containerd while the steps run
        while not stop.is_set():
            seen_shims.update(s.id for s in _our_shims(rt))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _step(rt, busybox_digest, i,
                                                    "default" if i % 4 == 0 else "none"),
                                    range(48)))
    finally:
        stop.set()
        watcher.join()
    assert [status for status, _ in results] == [i % 3 for i in range(48)]
    assert [lines for _, lines in results] == [[f"out {i}".encode()] for i in range(48)]
    # the daemons were started for anchors (one per CPU at most): no step's task
    # started a shim of its own
    width = len(rt.shim_group._slots)
    assert 1 <= len(seen_shims) <= width
    assert all(cid.startswith("kata-anchor-") for cid in seen_shims)
    assert rt.shim_group.anchors_made - made == len(seen_shims)
    rt.drain()  # the group ends with the last container: its shim exits
    assert_clean(rt)
    deadline = time.monotonic() + 5
    while _our_shims(rt) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _our_shims(rt) == []


def test_steps_starting_while_the_group_ends_never_meet_a_dying_shim(clean_runtime,
                                                                    busybox_digest):
    """The group is ended (anchor deleted, shim shutting down) whenever it is idle, as
    often as possible, while two threads start steps back to back: each step gets the
    current group or a new one, never the address of a shim that is exiting."""
    rt = clean_runtime
    made = rt.shim_group.anchors_made
    stop = threading.Event()
    closes = 0

    errors: list[BaseException] = []

    def closer() -> None:
        nonlocal closes
        while not stop.is_set():
            try:
                rt.shim_group.close()
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return
            closes += 1
            time.sleep(0.001)

    t = threading.Thread(target=closer)
    t.start()
    try:
        def paced(i: int) -> tuple[int, list[bytes]]:
            if i % 4:  # a gap in which the group goes idle and ends
                time.sleep(0.15)
            return _step(rt, busybox_digest, i)

        # one paced thread, so the group is idle at times; one that never waits
        with ThreadPoolExecutor(2) as pool:
            paced_results = pool.submit(lambda: [paced(i) for i in range(0, 40, 2)])
            eager_results = pool.submit(lambda: [_step(rt, busybox_digest, i)
                                                 for i in range(1, 12, 2)])
            results = paced_results.result()
            eager = eager_results.result()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert [status for status, _ in results] == [i % 3 for i in range(0, 40, 2)]
    assert [status for status, _ in eager] == [i % 3 for i in range(1, 12, 2)]
    assert rt.shim_group.anchors_made - made >= 2, "the group never ended between steps"
    rt.drain()
    assert_clean(rt)


def test_a_step_that_cannot_start_leaves_the_group_usable(clean_runtime, busybox_digest):
    rt = clean_runtime
    rt.drain()
    made = rt.shim_group.anchors_made
    with pytest.raises(KataError) as err:
        rt.run(StepSpec(image=busybox_digest, argv=("/no/such/command",)),
               lambda *_: None, threading.Event())
    assert err.value.reason == "runtime.start_failed"
    assert _step(rt, busybox_digest, 4) == (1, [b"out 4"])
    assert rt.shim_group.anchors_made == made + 1
    rt.drain()
    assert_clean(rt)


def test_timeouts_and_cancels_in_a_shared_shim(clean_runtime, busybox_digest):
    from kata.runtimes.base import CANCEL_EXIT, TIMEOUT_EXIT

    rt = clean_runtime
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    with ThreadPoolExecutor(3) as pool:
        slow = pool.submit(rt.run, StepSpec(image=busybox_digest, argv=("sleep", "60"),
                                            timeout=0.3), lambda *_: None, threading.Event())
        cancelled = pool.submit(rt.run, StepSpec(image=busybox_digest, argv=("sleep", "60")),
                                lambda *_: None, cancel)
        quick = pool.submit(_step, rt, busybox_digest, 0)
        assert (slow.result(), cancelled.result(), quick.result()) == \
            (TIMEOUT_EXIT, CANCEL_EXIT, (0, [b"out 0"]))
    rt.drain()
    assert_clean(rt)


def test_a_killed_kata_s_containers_in_a_shared_shim_are_reaped(
        containerd_daemon, busybox_digest, runtime, tmp_path):
    """A kata killed with containers whose task containerd never registered, inside its
    shared shim (made deterministic as in test_containerd_run: tasks started, their
    container records deleted, then SIGKILL). The next connect deletes the anchor, ends
    the shim, and reaps each container by its bundle: processes, rootfs mounts, runtime
    state, all gone."""
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import threading, time
        from kata.runtimes.containerd import ContainerdRuntime
        from kata.runtimes.containerd.cleanup import Cleanup
        from kata.runtimes.containerd.client import containers_pb2
        from kata.runtimes.containerd.task import StepRun, TaskOptions
        from kata.runtimes.base import StepSpec
        from kata.runtimes.containerd.config import RuntimeConfig
        rt = ContainerdRuntime.connect(address={containerd_daemon.address!r},
                                       state_dir={str(containerd_daemon.root.parent)!r},
                                       config=RuntimeConfig(shared_shim=True, step_runner="task"))
        image = rt.images.run_image({busybox_digest!r})
        opts = TaskOptions(fifo_root=rt.fifo_root, shim_group=rt.shim_group,
                           runtime_options=rt._runtime_options,
                           precompiled_seccomp=rt._precompiled_seccomp)
        for i in range(3):
            run = StepRun(rt.client, opts, StepSpec(image={busybox_digest!r},
                          argv=("sleep", "1000")), image, lambda s, d: None,
                          threading.Event())
            run.launch(Cleanup())
            c = rt.client
            c.call(c.containers.Delete, containers_pb2.DeleteContainerRequest(id=run.id), "x")
        time.sleep(0.5)
        open({str(marker)!r}, "w").write("x")
        time.sleep(1000)
    """)
    kill_once_started(script, marker)
    address = containerd_daemon.address
    left = orphans.shims(address, "kata")
    # shared shims: one per CPU at most, each started for an anchor, not per step
    assert 1 <= len(left) <= (os.cpu_count() or 1)
    assert all(s.id.startswith("kata-anchor-") for s in left)
    task_dir = Path(containerd_daemon.state) / "io.containerd.runtime.v2.task" / "kata"
    bundles = [p for p in task_dir.iterdir() if not p.name.startswith("kata-anchor-")]
    assert len(bundles) == 3
    inits = [int((b / "init.pid").read_text()) for b in bundles]
    assert all(b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in inits)
    with ContainerdRuntime.connect(address=address,
                                   state_dir=str(containerd_daemon.root.parent)) as rt:
        assert rt.leftovers() == {k: [] for k in rt.leftovers()}
    assert orphans.shims(address, "kata") == []
    assert [p for p in task_dir.iterdir()] == []
    for pid in inits:  # the containers' processes ended
        assert not Path(f"/proc/{pid}/cmdline").exists() or \
            b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not any(os.path.isdir(f"/run/containerd/runc/kata/{b.name}") for b in bundles)


def test_a_ctrl_c_while_the_group_ends_is_raised_after_its_anchor_is_deleted(
        clean_runtime, busybox_digest, monkeypatch):
    """Found by a reviewer: a Ctrl-C landing while `kata run` closed its runtime (after
    the scheduler gave its handlers back) cut ShimGroup.close() between forgetting an
    anchor and deleting it, leaving the anchor, its shim and its mount for a later
    sweep. The signal now waits for the release, then acts."""
    import signal

    from kata.runtimes.containerd import shimgroup
    from kata.runtimes.containerd.client import containers_pb2

    rt = clean_runtime
    assert _step(rt, busybox_digest, 0)[0] == 0
    real = shimgroup.ShimGroup._delete_anchor

    def ctrl_c_then_delete(self, cid):  # the user's Ctrl-C lands mid-delete
        os.kill(os.getpid(), signal.SIGINT)
        return real(self, cid)

    monkeypatch.setattr(shimgroup.ShimGroup, "_delete_anchor", ctrl_c_then_delete)
    with pytest.raises(KeyboardInterrupt):
        rt.drain()
    monkeypatch.undo()
    c = rt.client
    left = [x.id for x in c.call(c.containers.List, containers_pb2.ListContainersRequest(),
                                 "list containers").containers]
    assert not [cid for cid in left if cid.startswith("kata-anchor-")], left


def test_an_anchor_whose_delete_failed_is_deleted_by_the_next_close(
        clean_runtime, busybox_digest, monkeypatch):
    """An anchor that could not be deleted (containerd slow or away) used to be forgotten,
    left with its shim for the runtime's whole life (the sweep spares a live owner's
    containers); the next close now tries it again."""
    from kata.runtimes.containerd import shimgroup
    from kata.runtimes.containerd.client import containers_pb2

    rt = clean_runtime
    assert _step(rt, busybox_digest, 0)[0] == 0
    real = shimgroup.ShimGroup._delete_anchor
    tries: list[str] = []

    def fail_once(self, cid):
        tries.append(cid)
        if len(tries) == 1:
            real(self, cid)  # deleted halfway: the task is gone, the container is not
            raise RuntimeError("containerd did not answer in time")
        return real(self, cid)

    monkeypatch.setattr(shimgroup.ShimGroup, "_delete_anchor", fail_once)
    with pytest.raises(RuntimeError):
        rt.drain()  # the step's release first, then the group's close
    rt.drain()
    c = rt.client
    left = [x.id for x in c.call(c.containers.List, containers_pb2.ListContainersRequest(),
                                 "list containers").containers]
    assert tries[0] in tries[1:] and tries[0] not in left, (tries, left)


def test_shared_shim_off_gives_a_shim_per_container(containerd_daemon, busybox_digest):
    from kata.runtimes.containerd.config import RuntimeConfig

    with ContainerdRuntime.connect(address=containerd_daemon.address,
                                   state_dir=str(containerd_daemon.root.parent),
                                   config=RuntimeConfig(shared_shim=False, step_runner="task")) as rt:
        assert rt.shim_group is None
        assert _step(rt, busybox_digest, 1) == (1, [b"out 1"])
        rt.drain()
        assert_clean(rt)


def test_shared_shim_must_be_a_boolean(tmp_path):
    from kata.runtimes.containerd.config import load_runtime_config

    cfg = tmp_path / "config.yaml"
    cfg.write_text("containerd:\n  shared_shim: sometimes\n")
    with pytest.raises(KataError) as err:
        load_runtime_config(cfg)
    assert err.value.reason == "config.bad_value"
    cfg.write_text("containerd:\n  shared_shim: false\n")
    assert load_runtime_config(cfg).shared_shim is False
    cfg.write_text("containerd:\n  stop_grace: 1s\n")
    assert load_runtime_config(cfg).shared_shim is True  # the default


def test_an_idle_shim_ends_without_drain(clean_runtime, busybox_digest, monkeypatch):
    # a long-lived runtime (kata worker) keeps no shim while it runs nothing
    from kata.runtimes.containerd import shimgroup

    monkeypatch.setattr(shimgroup, "IDLE_SECONDS", 0.3)
    rt = clean_runtime
    rt.drain()
    assert _step(rt, busybox_digest, 3) == (0, [b"out 3"])
    deadline = time.monotonic() + 10
    while any(s.anchor for s in rt.shim_group._slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(s.anchor for s in rt.shim_group._slots)
    while _our_shims(rt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _our_shims(rt) == []
    assert _step(rt, busybox_digest, 4) == (1, [b"out 4"])  # a new group starts


def _shared(containerd_daemon) -> ContainerdRuntime:
    from kata.runtimes.containerd.config import RuntimeConfig

    return ContainerdRuntime.connect(address=containerd_daemon.address,
                                     state_dir=str(containerd_daemon.root.parent),
                                     config=RuntimeConfig(shared_shim=True, step_runner="task"), sweep=False)


def test_another_runtime_s_check_waits_for_an_idle_group(
        clean_runtime, containerd_daemon, busybox_digest):
    """The cause of the anchors found in test_image_concurrency's teardown (suite runs
    with shared_shim on): the session runtime had just run test_hit_property's realiser
    (which does not drain it), so its idle shim's anchor (task, container, rootfs mount)
    waited for its idle timer, and its last step's release could still be under way,
    when the next test's own runtime listed what the namespace holds. Not a leak: held
    until the timer or a drain. leftovers() now drains every runtime of the process on
    that containerd before it lists; an anchor with a step in flight is still reported."""
    idle = _shared(containerd_daemon)  # the session runtime after a realiser run
    try:
        assert _step(idle, busybox_digest, 0) == (0, [b"out 0"])
        assert [s.anchor for s in idle.shim_group._slots if s.anchor]
        assert_clean(clean_runtime)  # before: {'containers': [the anchor, ...], ...}
        assert not [s.anchor for s in idle.shim_group._slots if s.anchor]
        gid = idle.shim_group.acquire()  # a step in flight: its anchor is not idle
        try:
            left = clean_runtime.leftovers()
            assert [c for c in left["containers"] if c.startswith("kata-anchor-")], left
        finally:
            idle.shim_group.release(gid)
    finally:
        idle.close()


def test_another_runtime_s_check_waits_for_an_anchor_the_idle_timer_is_deleting(
        clean_runtime, containerd_daemon, busybox_digest, monkeypatch):
    """The interleaving injected: the idle timer took the anchor from its slot and its
    delete (~0.1 s, seconds under load) is under way when another runtime lists the
    namespace. The listing comes after the delete (drain waits for an expiry in flight)."""
    from kata.runtimes.containerd import shimgroup

    idle = _shared(containerd_daemon)
    try:
        assert _step(idle, busybox_digest, 0) == (0, [b"out 0"])
        from concurrent.futures import wait

        wait(list(idle._releasing))  # the step's release done: its anchor idle
        group = idle.shim_group
        with group._lock:  # the test plays the timer
            group._timer.cancel()
            group._timer = None
        assert [s.anchor for s in group._slots if s.anchor]
        real = shimgroup.ShimGroup._delete_anchor
        deleting, go = threading.Event(), threading.Event()
        order: list[str] = []

        def slow_delete(self, cid):
            deleting.set()
            assert go.wait(30)
            real(self, cid)
            order.append("deleted")

        monkeypatch.setattr(shimgroup.ShimGroup, "_delete_anchor", slow_delete)
        for slot in group._slots:
            slot.idle_since -= shimgroup.IDLE_SECONDS  # due now
        timer = threading.Thread(target=group._expire)
        timer.start()
        left: list[dict] = []

        def listing() -> None:
            left.append(clean_runtime.leftovers())
            order.append("listed")

        check = threading.Thread(target=listing)
        try:
            assert deleting.wait(30)
            assert not any(s.anchor for s in group._slots)  # taken, not yet gone
            check.start()
            check.join(0.5)  # before the fix it listed the anchor here
            order.append("released")
        finally:
            go.set()
            timer.join(30)
            check.join(30)
        assert order == ["released", "deleted", "listed"]
        assert left == [{k: [] for k in left[0]}], left
    finally:
        idle.close()
