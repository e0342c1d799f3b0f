"""A step that fills the disk (SECURITY.md, "Resource limits"): nothing bounds what a step
writes to its workspace's upper layer or its root filesystem's, which live on the host's
disk beside kata's state and store. A pushed branch on a hook server could fill that
filesystem and break every other run. The runtime's disk guard (kata/runtimes/diskguard.py)
kills the step holding most of a filesystem that falls below the host's reserve
(``containerd.disk_reserve``), and the step fails saying so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kata.errors import KataError
from procs.leftovers import remove_tree
from kata.runtimes import diskguard
from kata.runtimes.diskguard import DiskGuard, Reserve, parse_reserve
from support.cli import KataProcess
from support.git import git
from support.mounts import small_tmpfs

IMAGE = "kata.local/busybox:latest"


def _nest(root: Path, levels: int) -> Path:
    """``root/d/d/…/d``, ``levels`` deep, made one level at a time (``os.makedirs``
    recurses per level, deeper than Python allows)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return Path(str(root) + "/d" * levels)
MIB = 1 << 20


# -- the reserve's grammar -------------------------------------------------------------
@pytest.mark.parametrize("value, reserve", [
    ("5%", Reserve(fraction=0.05)), ("12.5%", Reserve(fraction=0.125)),
    ("2GiB", Reserve(fraction=0.0, size=2 << 30)), (1 << 30, Reserve(fraction=0.0, size=1 << 30)),
    (0, Reserve(fraction=0.0, size=0)), ("0", Reserve(fraction=0.0, size=0)),
])
def test_the_reserve_is_a_percentage_or_a_size(value, reserve):
    assert parse_reserve(value) == reserve


@pytest.mark.parametrize("value", ["100%", "-1%", "x%", "lots", True, 1.5, [], "-5GiB"])
def test_a_bad_reserve_is_refused(value):
    with pytest.raises(ValueError, match="a percentage"):
        parse_reserve(value)


def test_the_host_config_sets_the_reserve_and_a_bad_one_names_its_position(tmp_path,
                                                                            monkeypatch):
    from kata.runtimes.containerd.config import load_runtime_config

    cfg = tmp_path / "config.yaml"
    monkeypatch.setenv("KATA_CONFIG", str(cfg))
    cfg.write_text("offline: false\n")
    assert load_runtime_config().disk_reserve == Reserve(fraction=0.05)  # the default
    cfg.write_text("containerd:\n  disk_reserve: 2GiB\n")
    assert load_runtime_config().disk_reserve == Reserve(fraction=0.0, size=2 << 30)
    cfg.write_text("containerd:\n  disk_reserve: 150%\n")
    with pytest.raises(KataError) as err:
        load_runtime_config()
    assert err.value.reason == "config.bad_value" and err.value.exit_code == 2
    assert "disk_reserve must be a percentage between 0 and 100 (5%), got '150%'" \
        in err.value.message
    assert (err.value.position.line, err.value.position.column) == (2, 3)


# -- the guard, on values ----------------------------------------------------------------
class _Fs:
    """A statvfs of a filesystem of ``total`` bytes with ``free`` of them free."""

    def __init__(self, total: int, free: int, files: int = 1_000_000, ffree: int = 900_000):
        self.total, self.free, self.files, self.ffree = total, free, files, ffree

    def __call__(self, _path: str) -> os.statvfs_result:
        bs = 4096
        return os.statvfs_result((bs, bs, self.total // bs, self.free // bs, self.free // bs,
                                  self.files, self.ffree, self.ffree, 0, 255))


def _layer(root: Path, name: str, size: int) -> str:
    d = root / name
    d.mkdir()
    with open(d / "blob", "wb") as f:
        f.write(os.urandom(size))  # allocated blocks, not a sparse file
    return str(d)


def test_the_step_holding_most_of_a_filesystem_below_its_reserve_is_tripped(tmp_path):
    fs = _Fs(total=1000 * MIB, free=40 * MIB)  # below 5% (50 MiB)
    guard = DiskGuard(Reserve(), statvfs=fs, watch=False)
    small, big = guard.ticket(), guard.ticket()
    try:
        small.add(_layer(tmp_path, "small", MIB))
        big.add(_layer(tmp_path, "big", 20 * MIB))
        guard.check([small, big])
        assert small.tripped is None
        assert big.tripped is not None and big.tripped.startswith(
            "killed to keep the disk's reserve: its filesystem has 40 MiB free of 1000 MiB, "
            "below the reserve of 50 MiB (host config containerd.disk_reserve: 5%), and the "
            "step wrote 20"), big.tripped
        # one at a time: nobody else while the tripped step is still there
        other = guard.ticket()
        other.add(_layer(tmp_path, "other", 30 * MIB))
        guard.check([small, big, other])
        assert other.tripped is None
    finally:
        for t in (small, big):
            guard.release(t)


def test_a_step_holding_little_is_never_blamed_for_a_full_disk(tmp_path):
    """Something else filled the disk (another process, the store): a step that holds
    less than a quarter of the reserve is not killed for it."""
    guard = DiskGuard(Reserve(), statvfs=_Fs(total=1000 * MIB, free=10 * MIB), watch=False)
    ticket = guard.ticket()
    try:
        ticket.add(_layer(tmp_path, "l", 4 * MIB))
        guard.check([ticket])
        assert ticket.tripped is None
    finally:
        guard.release(ticket)


def test_inodes_below_their_reserve_trip_the_step_that_made_most_files(tmp_path):
    fs = _Fs(total=1000 * MIB, free=900 * MIB, files=10_000, ffree=400)  # below 5%: 500
    guard = DiskGuard(Reserve(), statvfs=fs, watch=False)
    ticket = guard.ticket()
    try:
        layer = Path(_layer(tmp_path, "many", 0))
        for i in range(300):
            (layer / str(i)).touch()
        ticket.add(str(layer))
        guard.check([ticket])
        assert ticket.tripped is not None and "400 free inodes, below the reserve of 500" \
            in ticket.tripped, ticket.tripped
    finally:
        guard.release(ticket)


def test_the_guard_looks_more_often_as_free_space_nears_the_reserve(tmp_path):
    layer = _layer(tmp_path, "l", 0)
    far = DiskGuard(Reserve(), statvfs=_Fs(total=100 << 30, free=50 << 30), watch=False)
    near = DiskGuard(Reserve(), statvfs=_Fs(total=100 << 30, free=(5 << 30) + 50 * MIB), watch=False)
    for guard, expected in ((far, diskguard.MAX_INTERVAL), (near, None)):
        ticket = guard.ticket()
        ticket.add(layer)
        wait = guard.check([ticket])
        guard.release(ticket)
        if expected is not None:
            assert wait == expected
        else:
            assert diskguard.MIN_INTERVAL <= wait < 0.1, wait


def test_an_overlay_named_through_a_link_is_measured_by_its_upper_layer(tmp_path):
    """A workspace is an overlay whose lower layers hold the step's inputs; the step wrote
    only its upper layer. Named through a symlink (a store given as a link), the mount
    point was not found in mountinfo (which has the resolved path), the merged view was
    walked, and a step that wrote nothing but read a large checkout was killed in place of
    the one filling the disk."""
    import subprocess

    lower = Path(_layer(tmp_path, "inputs", 30 * MIB))  # a large checkout, only read
    for name in ("u", "w", "m"):
        (tmp_path / name).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={tmp_path / 'u'},workdir={tmp_path / 'w'}",
                    str(tmp_path / "m")], check=True)
    try:
        (tmp_path / "link").symlink_to(tmp_path)
        guard = DiskGuard(Reserve(), statvfs=_Fs(total=1000 * MIB, free=40 * MIB), watch=False)
        reader, writer = guard.ticket(), guard.ticket()
        try:
            reader.add(str(tmp_path / "link" / "m"))  # its workspace, wrote nothing
            writer.add(_layer(tmp_path, "writer", 20 * MIB))
            guard.check([reader, writer])
            assert reader.tripped is None
            assert writer.tripped is not None
        finally:
            for t in (reader, writer):
                guard.release(t)
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)


def test_usage_counts_a_deep_tree_and_hard_links_once(tmp_path):
    deep = tmp_path / "deep"
    p = _nest(deep, 1500)  # deeper than Python recurses
    try:
        (p / "f").write_bytes(b"x" * 8192)
        os.link(p / "f", deep / "again")
        size, entries = diskguard.usage(str(deep))
        assert entries == 1500 + 2
        assert 8192 <= size < 8192 + 1501 * 8192
    finally:
        remove_tree(str(deep))  # pytest's own clean-up recurses per level


# -- a real step -------------------------------------------------------------------------
def _repo(tmp_path: Path, steps: list[dict]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x").write_text("x\n")
    (repo / ".kata-ci.yaml").write_text(yaml.safe_dump({"pipeline": "hog", "steps": steps}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hog")
    return repo


# writes 4 MiB files forever, going on when the disk is full (a hostile step does not stop)
FILL = ("i=0; while true; do dd if=/dev/zero of=fill$i bs=1M count=4 2>/dev/null || "
        "sleep 0.05; i=$((i+1)); done")


@pytest.mark.integration
def test_a_step_filling_its_workspace_is_killed_at_the_reserve(tmp_path, containerd_daemon,
                                                               runtime):
    """The store (and with it kata's state: the runs' workspaces) on a 256 MiB
    filesystem, a reserve of 64 MiB: the step that writes into its workspace without end
    is killed and fails saying why; before the guard it ran until its timeout with the
    filesystem full. Nothing is left: no workspace, and the space is free again."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text("containerd:\n  disk_reserve: 64MiB\n")
    with small_tmpfs(tmp_path, "256m") as small:
        repo = _repo(tmp_path, [{"name": "hog", "image": IMAGE, "inputs": ["x"],
                                 "timeout": "2m", "commands": [FILL]}])
        kata = KataProcess(repo, store=small / "store", address=containerd_daemon.address,
                           timeout=300)
        run = kata("run", KATA_CONFIG=str(cfg))
        assert run.returncode == 1, run.stdout + run.stderr
        fail = [line for line in run.stdout.splitlines() if line.startswith("[FAIL] hog")]
        assert len(fail) == 1 and fail[0].startswith(
            "[FAIL] hog (killed to keep the disk's reserve: its filesystem has "), run.stdout
        assert "below the reserve of 64 MiB (host config containerd.disk_reserve: 64 MiB)" \
            in fail[0], fail[0]
        assert run.stdout.splitlines()[-1].startswith("[DONE]"), run.stdout
        assert list((small / "store" / "local" / "work").iterdir()) == []
        st = os.statvfs(small)
        assert st.f_bavail * st.f_frsize > 128 * MIB  # what it wrote is gone
        verify = kata("store", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.integration
def test_a_step_filling_its_root_filesystem_is_killed_at_the_reserve(tmp_path, clean_runtime,
                                                                      busybox_digest):
    """The same through the step's root filesystem (``/tmp`` in the container: a direct
    step's upper layer under the steps root), on a runtime whose steps root is a small
    filesystem."""
    import threading

    from kata.runtimes.base import DISK_EXIT, StepSpec
    from kata.runtimes.containerd.direct import DirectSteps

    rt = clean_runtime
    with small_tmpfs(tmp_path, "256m") as small:
        saved = rt.direct, rt.disk
        rt.direct = DirectSteps(rt.client, rt.oci, small / "steps")
        rt.disk = DiskGuard(Reserve(fraction=0.0, size=64 * MIB))
        try:
            lines: list[bytes] = []
            status = rt.run(StepSpec(image=busybox_digest, argv=("sh", "-c", "cd /tmp && " + FILL),
                                     timeout=120),
                            lambda _stream, line: lines.append(line), threading.Event())
        finally:
            rt.drain()  # its deferred release, then the small steps root's image views
            rt.direct, rt.disk = saved
        assert status == DISK_EXIT, (status, lines)
        assert "(host config containerd.disk_reserve: 64 MiB)" in status.note, status.note
        assert list((small / "steps").glob("*/kata-*")) == []
        st = os.statvfs(small)
        assert st.f_bavail * st.f_frsize > 128 * MIB


@pytest.mark.integration
def test_a_step_printing_without_end_is_killed_at_the_reserve(tmp_path, containerd_daemon,
                                                              runtime):
    """Its log was spooled to the host's /tmp, outside every reserve, and stored whole:
    now beside its workspace, counted with its layers."""
    import subprocess

    cfg = tmp_path / "config.yaml"
    cfg.write_text("containerd:\n  disk_reserve: 32MiB\n")
    with small_tmpfs(tmp_path, "128m") as small:
        repo = _repo(tmp_path, [{"name": "loud", "image": IMAGE, "inputs": ["x"],
                                 "timeout": "2m", "commands": [f"yes {'y' * 200}"]}])
        kata = KataProcess(repo, store=small / "store", address=containerd_daemon.address,
                           timeout=300)
        out = tmp_path / "out.txt"  # on the host's disk: ~100 MiB of `loud | yyy…` lines
        with open(out, "wb") as f:
            code = subprocess.run([*kata.base, "run"], cwd=repo, stdout=f,
                                  stderr=subprocess.PIPE, env={**kata.env, "KATA_CONFIG": str(cfg)},
                                  timeout=300)
        assert code.returncode == 1, code.stderr
        assert b"Traceback" not in code.stderr, code.stderr
        fail = [line for line in out.read_bytes().splitlines() if line.startswith(b"[FAIL] loud")]
        assert len(fail) == 1 and b"killed to keep the disk's reserve" in fail[0], fail
        assert b"to its writable layers and log" in fail[0], fail[0]
        assert list((small / "store" / "local" / "work").iterdir()) == []


@pytest.mark.integration
def test_a_retry_after_the_log_filled_the_disk_is_still_a_retry(tmp_path, containerd_daemon,
                                                                runtime):
    """With the guard off (``disk_reserve: 0``) a step's output fills the filesystem its
    log is spooled to. Its attempt failed saying so, but the note kata writes to the log
    before a retry met the full disk too: the step then failed with a bare ``No space
    left on device (ENOSPC)`` and was never retried. That note is skipped as the other
    one is; the retry (an event, a line) still says why."""
    import subprocess

    cfg = tmp_path / "config.yaml"
    cfg.write_text("containerd:\n  disk_reserve: 0\n")
    with small_tmpfs(tmp_path, "16m") as small:
        repo = _repo(tmp_path, [{"name": "loud", "image": IMAGE, "inputs": ["x"], "retry": 1,
                                 "timeout": "8s", "commands": [f"yes {'y' * 200}"]}])
        kata = KataProcess(repo, store=small / "store", address=containerd_daemon.address,
                           timeout=300)
        out = tmp_path / "out.txt"
        with open(out, "wb") as f:
            code = subprocess.run([*kata.base, "run"], cwd=repo, stdout=f,
                                  stderr=subprocess.PIPE, env={**kata.env, "KATA_CONFIG": str(cfg)},
                                  timeout=300)
        assert code.returncode == 1, code.stderr
        assert b"Traceback" not in code.stderr, code.stderr
        mine = [line for line in out.read_bytes().splitlines() if line.startswith(b"[")]
        assert b"[RETRY] loud (attempt 2/2: no space left on kata's state filesystem while " \
            b"writing the step's log)" in mine, mine
        assert [line for line in mine if line.startswith(b"[FAIL] loud")], mine
        assert not [line for line in mine if b"(ENOSPC)" in line], mine
        assert list((small / "store" / "local" / "work").iterdir()) == []


@pytest.mark.integration
def test_each_step_runner_hands_the_guard_its_root_filesystem_layer(each_step_runner,
                                                                    busybox_digest):
    """A direct step's ``upper`` and a containerd task's snapshot: the guard finds what the
    step wrote to ``/tmp`` in either (the filesystem made to look low, so that a real one
    need not be filled)."""
    import threading

    from kata.runtimes.base import DISK_EXIT, StepSpec

    rt = each_step_runner
    saved = rt.disk
    rt.disk = DiskGuard(Reserve(fraction=0.0, size=64 * MIB),
                        statvfs=_Fs(total=1 << 30, free=10 * MIB))
    try:
        status = rt.run(StepSpec(image=busybox_digest, timeout=120, argv=(
            "sh", "-c", "dd if=/dev/zero of=/tmp/blob bs=1M count=32 2>/dev/null; sleep 60")),
            lambda *_: None, threading.Event())
    finally:
        rt.disk = saved
        rt.drain()
    assert status == DISK_EXIT, status
    assert "the step wrote 32" in status.note, status.note
