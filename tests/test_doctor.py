"""`kata doctor`: each prerequisite found or named with its fix, on fake hosts and on
this machine (which has them all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from kata.doctor import Host, diagnose

ROOT = Path(__file__).resolve().parent.parent
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
V1_MOUNTS = ("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
             "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
             "cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n"
             "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")


def fake_host(tmp_path: Path, *, filesystems: str = "nodev\tproc\nnodev\toverlay\n",
              mounts: str = V2_MOUNTS, controllers: str = "cpuset cpu io memory pids\n",
              binaries: tuple[str, ...] = ("containerd", "runc", "ip", "iptables", "git"),
              plugins: tuple[str, ...] = ("bridge", "host-local"), **kw) -> Host:
    proc, sysfs, cni, bin_dir = (tmp_path / d for d in ("proc", "sys", "cni", "bin"))
    for d in (proc / "self", sysfs / "fs" / "cgroup", cni, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "filesystems").write_text(filesystems)
    (proc / "self" / "mounts").write_text(mounts)
    (sysfs / "fs" / "cgroup" / "cgroup.controllers").write_text(controllers)
    for name in plugins:
        (cni / name).write_text("#!/bin/sh\n")
        (cni / name).chmod(0o755)
    for name in binaries:  # answers --version like the real ones
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{name} version 9.9'\n")
        (bin_dir / name).chmod(0o755)
    found = {name: str(bin_dir / name) for name in binaries}
    kw.setdefault("store", tmp_path / "store")
    kw.setdefault("euid", 0)
    return Host(proc=proc, sys=sysfs, cni_path=cni, which=found.get, **kw)


def by_name(host: Host) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.detail, c.fix) for c in diagnose(host)}


def test_a_host_with_everything(tmp_path) -> None:
    checks = by_name(fake_host(tmp_path))
    assert list(checks) == ["root", "overlay", "cgroups", "containerd", "open-files", "runc",
                            "oci-runtime", "step-runner", "cni", "store", "space", "git"]
    assert {n: s for n, (s, _, _) in checks.items()} == dict.fromkeys(checks, "ok")
    assert checks["runc"][1] == "runc version 9.9"
    assert checks["oci-runtime"][1] == ("runc version 9.9 (containerd.oci_runtime: auto; crun "
                                        "is not installed (apt-get install crun))")
    assert checks["cgroups"][1] == "cgroups v2 (unified), controllers cpu, memory, pids"
    assert checks["store"][1] == f"{tmp_path / 'store'} (created on first use)"
    assert checks["containerd"][1] == ("containerd version 9.9; kata starts its own on "
                                       "first use")


def test_each_missing_prerequisite_says_what_to_fix(tmp_path) -> None:
    host = fake_host(tmp_path, filesystems="nodev\tproc\n", mounts="", binaries=("ip",),
                     plugins=("bridge",), euid=1000)
    checks = by_name(host)
    assert checks["root"][0] == "fail" and "run it as root" in checks["root"][2]
    assert checks["overlay"] == ("fail", "the kernel has no overlay filesystem loaded",
                                 "modprobe overlay (and add it to /etc/modules); the kernel "
                                 "needs CONFIG_OVERLAY_FS")
    assert checks["cgroups"][:2] == ("fail", "no cgroup filesystem mounted")
    assert checks["containerd"] == ("fail", "containerd is not installed",
                                    "apt-get install containerd (kata starts its own daemon "
                                    "from it)")
    assert checks["runc"] == ("fail", "runc is not installed", "apt-get install runc")
    assert checks["oci-runtime"] == ("fail", "runc is not installed: apt-get install runc",
                                     "apt-get install crun")
    assert checks["cni"][0] == "fail" and "host-local" in checks["cni"][1]
    assert checks["cni"][2].startswith("apt-get install containernetworking-plugins")
    assert checks["git"][0] == "warn"


def test_cgroup_v1_and_missing_controllers(tmp_path) -> None:
    assert by_name(fake_host(tmp_path, mounts=V1_MOUNTS))["cgroups"] == (
        "ok", "cgroups v1 (hybrid), controllers cpu, memory, pids", "")
    status, detail, fix = by_name(fake_host(tmp_path, controllers="cpu io\n"))["cgroups"]
    assert (status, detail) == ("warn", "cgroups v2 (unified); controllers memory, pids missing")


HYBRID = V1_MOUNTS  # v1 controllers, v2 at /sys/fs/cgroup/unified


def test_the_oci_runtime_crun_where_it_can_run(tmp_path) -> None:
    binaries = ("containerd", "runc", "crun", "ip", "iptables", "git")
    # auto takes crun on a unified host, and on a hybrid one whose v2 holds no controller
    for mounts, held in ((V2_MOUNTS, "cpu memory pids\n"), (HYBRID, "")):
        host = fake_host(tmp_path, binaries=binaries, mounts=mounts)
        unified = host.sys / "fs" / "cgroup" / "unified"
        unified.mkdir(exist_ok=True)
        (unified / "cgroup.controllers").write_text(held)
        assert by_name(host)["oci-runtime"] == (
            "ok", "crun version 9.9 (containerd.oci_runtime: auto; crun is installed and can "
            "run here)", "")
    # a hybrid v2 holding hugetlb (this VM's layout before .ci/install-kata): runc, said why
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    status, detail, fix = by_name(fake_host(tmp_path, binaries=binaries, mounts=HYBRID))[
        "oci-runtime"]
    assert status == "ok" and detail.startswith("runc version 9.9 (containerd.oci_runtime: "
                                                "auto; the cgroups are hybrid")
    assert "mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb" in detail
    # asked for by name: crun there fails with the same reason; runc is taken as asked
    status, detail, fix = by_name(fake_host(tmp_path, binaries=binaries, mounts=HYBRID,
                                            oci_runtime="crun"))["oci-runtime"]
    assert status == "fail" and detail.startswith("containerd.oci_runtime is crun, but the "
                                                  "cgroups are hybrid") and fix
    assert by_name(fake_host(tmp_path, binaries=binaries, oci_runtime="runc"))[
        "oci-runtime"] == ("ok", "runc version 9.9 (containerd.oci_runtime: runc)", "")
    status, detail, fix = by_name(fake_host(tmp_path, oci_runtime="crun"))["oci-runtime"]
    assert (status, fix) == ("fail", "apt-get install crun") and "not installed" in detail


def test_the_step_runner_says_how_steps_without_services_run(tmp_path) -> None:
    binaries = ("containerd", "runc", "crun", "ip", "iptables", "git")
    # crun on cgroup v1 with every hierarchy a direct step gets: direct
    host = fake_host(tmp_path, binaries=binaries, mounts=HYBRID)
    cgroups = host.sys / "fs" / "cgroup"
    (cgroups / "cgroup.controllers").unlink()
    for controller in ("memory", "pids", "cpu", "devices"):
        (cgroups / controller).mkdir()
    assert by_name(host)["step-runner"] == (
        "ok", "direct: one crun per step, supervised by kata; steps with services run as "
        "containerd tasks", "")
    # a missing hierarchy, runc, unified cgroups: tasks, and why
    (cgroups / "devices").rmdir()
    assert by_name(host)["step-runner"][:2] == (
        "ok", "containerd tasks: the cgroup v1 hierarchies devices are not mounted "
        "(containerd.step_runner: direct falls back)")
    assert by_name(fake_host(tmp_path, oci_runtime="runc"))["step-runner"][1].startswith(
        "containerd tasks: the OCI runtime is runc (direct steps need crun)")
    assert by_name(fake_host(tmp_path, binaries=binaries))["step-runner"][1].startswith(
        "containerd tasks: the cgroups are unified (v2)")
    # asked for tasks; no OCI runtime at all: a warning pointing at that check
    assert by_name(fake_host(tmp_path, step_runner="task"))["step-runner"] == (
        "ok", "containerd tasks (containerd.step_runner: task)", "")
    assert by_name(fake_host(tmp_path, binaries=("git",)))["step-runner"][0] == "warn"


def test_an_explicit_containerd_that_does_not_answer(tmp_path) -> None:
    host = fake_host(tmp_path, containerd_address="/run/x.sock", answers=lambda p: False)
    assert by_name(host)["containerd"][:2] == ("fail", "nothing answers at /run/x.sock")
    host = fake_host(tmp_path, containerd_address="/run/x.sock", answers=lambda p: True)
    assert by_name(host)["containerd"][:2] == ("ok", "answers at /run/x.sock")


def test_a_containerd_holding_fewer_open_files_than_kata_is_named_with_the_fix(tmp_path) -> None:
    """Its shims, and the crun they run, can only lower the daemon's hard limit: steps run
    as its tasks get that, not 65536:524288 (spec.task_rlimits)."""
    sock = "/run/containerd/containerd.sock"
    low = fake_host(tmp_path, system_socket=sock, answers=lambda p: p == sock,
                    daemon_nofile=lambda p: (4242, 4096) if p == sock else None,
                    nofile_ceiling=524288)
    status, detail, fix = by_name(low)["open-files"]
    assert status == "warn" and "(pid 4242) holds a hard open-files limit of 4096" in detail
    assert "get 4096:4096, not 65536:524288" in detail
    assert "LimitNOFILE=infinity" in fix and "prlimit --pid 4242 --nofile=65536:524288" in fix
    # this CI's kata holds 20000: a daemon holding as much (kata's own, started by it) is fine
    same = fake_host(tmp_path, system_socket=sock, answers=lambda p: p == sock,
                     daemon_nofile=lambda p: (4242, 20000), nofile_ceiling=20000)
    assert by_name(same)["open-files"] == ("ok", "steps get 20000:20000 (containerd pid 4242 "
                                           "allows 20000)", "")
    none = fake_host(tmp_path)  # kata starts its own: it inherits kata's
    assert by_name(none)["open-files"][0] == "ok"
    from kata.runtimes.containerd.spec import NOFILE_HARD, NOFILE_SOFT

    assert Host().nofile_spec == (NOFILE_SOFT, NOFILE_HARD)  # the default is the spec's


def test_an_unwritable_store(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    status, detail, fix = by_name(fake_host(tmp_path, store=blocked / "store"))["store"]
    assert status == "fail" and "is not a directory" in detail and "--store" in fix
    status, detail, _ = by_name(fake_host(tmp_path, store=Path("/proc/kata-store")))["store"]
    assert status == "fail" and detail.startswith("/proc/kata-store: cannot write in /proc")


def test_kata_s_own_containerd_already_running_is_reported_as_such(tmp_path) -> None:
    """Issue 12 (e): doctor says kata's own containerd is running and used, instead of
    promising to start one; the system's, when it answers, comes first (as kata connects)."""
    own = "/run/kata/containerd/containerd.sock"
    host = fake_host(tmp_path, kata_socket=own, kata_pid=4242, answers=lambda p: p == own)
    assert by_name(host)["containerd"][:2] == (
        "ok", f"containerd version 9.9; kata's own is running (pid 4242) and answers at {own}; "
              "kata uses it")
    # not even on PATH any more (removed after it started): it still answers, so ok
    host = fake_host(tmp_path, kata_socket=own, binaries=("runc", "ip", "iptables", "git"),
                     answers=lambda p: p == own)
    assert by_name(host)["containerd"][:2] == (
        "ok", f"kata's own is running and answers at {own}; kata uses it")
    sysd = "/run/containerd/containerd.sock"
    host = fake_host(tmp_path, kata_socket=own, system_socket=sysd, answers=lambda p: True)
    assert by_name(host)["containerd"][1].endswith(f"the system's answers at {sysd}")
    hung = fake_host(tmp_path, kata_socket=own, kata_pid=4242, answers=lambda p: False)
    status, detail, fix = by_name(hung)["containerd"]
    assert status == "fail" and "running (pid 4242) but its socket" in detail
    assert fix.startswith("kata daemon stop")


def test_a_non_root_user_in_group_kata_passes_the_root_check(tmp_path) -> None:
    sock = "/run/kata/kata.sock"
    ok = by_name(fake_host(tmp_path, euid=1000, server_socket=sock, server_access="yes"))
    assert ok["root"][:2] == ("ok", f"uid 1000: kata commands run as root through kata's "
                                    f"server at {sock} (group kata)")
    denied = by_name(fake_host(tmp_path, euid=1000, server_socket=sock, server_access="denied"))
    assert denied["root"][0] == "fail" and "usermod -aG kata" in denied["root"][2]
    alone = by_name(fake_host(tmp_path, euid=1000))
    assert alone["root"][0] == "fail" and "kata daemon serve" in alone["root"][2]


def test_kata_doctor_finds_kata_s_running_containerd(tmp_path, containerd_daemon) -> None:
    """On this machine: a host config naming the state_dir of a running embedded
    containerd (the test's own): doctor reports it running, starts nothing, exits 0."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"containerd:\n  state_dir: {containerd_daemon.root.parent}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(tmp_path / "store"),
           "KATA_CONFIG": str(cfg)}
    env.pop("KATA_CONTAINERD_ADDRESS", None)
    pid_before = containerd_daemon.pidfile.read_text()
    r = subprocess.run([sys.executable, "-m", "kata", "doctor"], env=env,
                       capture_output=True, text=True, timeout=60)
    line = next(x for x in r.stdout.splitlines() if "containerd:" in x)
    assert line.startswith("[OK]") and "kata's own is running (pid " in line, r.stdout
    assert f"answers at {containerd_daemon.socket}; kata uses it" in line
    assert containerd_daemon.pidfile.read_text() == pid_before  # no second daemon


def test_kata_doctor_on_this_machine(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KATA_STORE": str(tmp_path / "store")}
    env.pop("KATA_CONTAINERD_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "kata", "doctor", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["ok"] is True and doc["version"] == 1
    assert {n: s for n, s in statuses.items() if n != "space"} == {
        "root": "ok", "overlay": "ok", "cgroups": "ok", "containerd": "ok", "open-files": "ok",
        "runc": "ok",
        "oci-runtime": "ok", "step-runner": "ok", "cni": "ok", "store": "ok", "git": "ok"}
    assert statuses["space"] in ("ok", "warn")
    runner = next(c for c in doc["checks"] if c["name"] == "step-runner")
    assert runner["detail"].startswith("direct: one crun per step")  # crun, cgroup v1 here
    assert not (tmp_path / "store").exists()  # the check left nothing behind
    broken = subprocess.run([sys.executable, "-m", "kata", "--store", "/proc/kata-store",
                             "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "[FAIL] store: /proc/kata-store: cannot write in /proc" in broken.stdout
    assert "fix: choose a writable store" in broken.stdout


TEST_ONLY = ("sshfs", "openssh-server", "docker-registry", "mmdebstrap")


def test_the_readmes_first_command_installs_only_what_kata_needs() -> None:
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```sh\n", 1)[1].splitlines()[0]
    assert first.startswith("bash examples/quickstart.sh")
    quickstart = (ROOT / "examples" / "quickstart.sh").read_text()
    assert "bash .ci/install-kata busybox-static" in quickstart
    assert ".ci/install\n" not in quickstart and '"${kata[@]}" doctor' in quickstart
    runtime = (ROOT / ".ci" / "install-kata").read_text()
    for package in ("containerd", "runc", "crun", "containernetworking-plugins"):
        assert package in runtime
    assert not [p for p in TEST_ONLY if p in runtime]
    assert "-e .\n" in runtime and "[test]" not in runtime
    ci = (ROOT / ".ci" / "install").read_text()  # CI still installs everything
    assert "bash .ci/install-kata" in ci and all(p in ci for p in TEST_ONLY)
    assert "'.[test]'" in ci and "bash .ci/install" in (ROOT / ".ci" / "run").read_text()
    for script in (".ci/install", ".ci/install-kata", "examples/quickstart.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0


def test_a_configured_remote_executor_is_checked(tmp_path) -> None:
    """Fakes of the executor's answer; the real BuildGrid one is in test_remote_exec.py."""
    from types import SimpleNamespace

    from kata.remote.cas import RemoteError

    def answers(exec_enabled: bool):  # noqa: ANN202
        caps = SimpleNamespace(execution_capabilities=SimpleNamespace(
            exec_enabled=exec_enabled, digest_function=1))
        return lambda: caps

    def down():  # noqa: ANN202
        raise RemoteError("remote.unavailable", "GetCapabilities: UNAVAILABLE: refused")

    url = "grpc://sched:50051"
    assert "remote-executor" not in by_name(fake_host(tmp_path))  # none configured
    ok = by_name(fake_host(tmp_path, remote_executor=url, executor_probe=answers(True)))
    assert list(ok)[-1] == "remote-executor"
    assert ok["remote-executor"] == ("ok", f"{url}: execution enabled", "")
    cache_only = by_name(fake_host(tmp_path, remote_executor=url,
                                   executor_probe=answers(False)))["remote-executor"]
    assert cache_only[0] == "fail" and "does not execute" in cache_only[1]
    dead = by_name(fake_host(tmp_path, remote_executor=url, executor_probe=down))
    assert dead["remote-executor"][0] == "fail"
    assert "UNAVAILABLE" in dead["remote-executor"][1] and url in dead["remote-executor"][2]
