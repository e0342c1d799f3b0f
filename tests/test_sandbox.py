"""The sandbox of a step (issue 10, item 2): seccomp, no-new-privileges, masked and
read-only paths, capabilities, AppArmor detection.

Pure tests check the profile against containerd's source and the spec's fields; the
integration tests run a static probe (tests/support/sandbox_probe.c) in real containers
and assert each escape fails with the errno the profile gives.
"""

from __future__ import annotations

import threading

import pytest

from kata.runtimes.base import ServiceSpec, StepSpec
from kata.runtimes.containerd import sandbox, seccompgen
from kata.runtimes.containerd.spec import CAPABILITIES, build_spec

CONTAINERD_CAPS = [  # containerd 1.6 oci/spec.go defaultUnixCaps(), Docker's default set
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
DOCKER_MASKED = [  # moby oci/defaults.go
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
DOCKER_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
ESCAPES = ["mount", "unshare", "setns", "bpf", "keyctl", "add_key", "request_key",
           "init_module", "finit_module", "delete_module", "ptrace", "process_vm_readv",
           "process_vm_writev", "kexec_load", "open_by_handle_at", "reboot", "swapon",
           "pivot_root", "umount2", "clone3", "perf_event_open", "userfaultfd",
           "io_uring_setup", "io_uring_enter", "io_uring_register"]


def _allowed(profile: dict) -> set[str]:
    return {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
            for n in r["names"]}


# -- the profile as data ------------------------------------------------------------------
def test_committed_profile_is_what_containerds_source_generates():
    # the source comes with golang-github-containerd-containerd-dev (.ci/install)
    assert seccompgen.SOURCE.exists(), f"{seccompgen.SOURCE} is missing: run .ci/install"
    assert seccompgen.OUTPUT.read_text() == seccompgen.render(seccompgen.generate())


def test_generator_reads_the_rules_containerd_builds():
    parts = seccompgen.generate()
    base = set(parts["syscalls"][0]["names"])
    assert {"read", "write", "execve", "fork", "io_uring_setup"} <= base
    assert len(base) == 349
    assert parts["kernel"] == [{"min": [4, 8], "names": ["ptrace"]}]
    assert parts["arch"]["amd64"] == ["arch_prctl", "modify_ldt"]
    assert "unshare" in parts["caps"]["CAP_SYS_ADMIN"]
    assert "mount" in parts["caps"]["CAP_SYS_ADMIN"]
    assert parts["caps"]["CAP_SYS_MODULE"] == ["delete_module", "init_module", "finit_module"]
    clone, clone3 = parts["non_admin"]
    assert clone["names"] == ["clone"]
    # CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP, as in Docker's JSON profile
    assert clone["args"] == [{"index": 0, "value": 2114060288, "valueTwo": 0,
                              "op": "SCMP_CMP_MASKED_EQ"}]
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_profile_for_the_default_caps_refuses_every_escape():
    profile = sandbox.seccomp_profile(CAPABILITIES, kernel=(6, 1), machine="x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]  # no 32-bit compat ABIs
    arm = sandbox.seccomp_profile(CAPABILITIES, kernel=(6, 1), machine="aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64"]
    allowed = _allowed(profile)
    assert not allowed & set(ESCAPES), allowed & set(ESCAPES)
    assert {"chroot", "arch_prctl", "execve", "fork", "vfork"} <= allowed  # CAP_SYS_CHROOT
    masked = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert masked and masked[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"


def test_profile_equals_containerds_except_ptrace_io_uring_and_compat_abis():
    # containerd 1.6 adds ptrace on kernels >= 4.8, allows io_uring (containerd 2.0 and
    # Docker 25 no longer do) and lists i386/x32; kata does none of that, and nothing
    # else differs
    ours = sandbox.seccomp_profile(CAPABILITIES, kernel=(6, 1), machine="x86_64")
    parts = seccompgen.generate()
    base = [dict(r, names=[n for n in r["names"] if n not in sandbox.IO_URING])
            for r in parts["syscalls"]]
    theirs = [*base, {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"},
              {"names": parts["arch"]["amd64"], "action": "SCMP_ACT_ALLOW"},
              {"names": parts["caps"]["CAP_SYS_CHROOT"], "action": "SCMP_ACT_ALLOW"},
              *parts["non_admin"]]
    assert [r for r in theirs if r["names"] != ["ptrace"]] == ours["syscalls"]
    # a container given CAP_SYS_PTRACE gets ptrace back, as with containerd
    traced = sandbox.seccomp_profile([*CAPABILITIES, "CAP_SYS_PTRACE"], kernel=(6, 1),
                                     machine="x86_64")
    assert "ptrace" in _allowed(traced)


def test_cap_sys_admin_unlocks_what_containerd_unlocks():
    profile = sandbox.seccomp_profile([*CAPABILITIES, "CAP_SYS_ADMIN"], kernel=(6, 1),
                                      machine="x86_64")
    assert {"mount", "unshare", "setns", "clone", "clone3"} <= _allowed(profile)
    assert not any(r.get("errnoRet") for r in profile["syscalls"])


# -- the spec -----------------------------------------------------------------------------
def test_every_spec_carries_the_sandbox():
    spec = build_spec(StepSpec(image="sha256:" + "0" * 64, argv=("true",)),
                      container_id="kata-x", image_env=())
    process, linux = spec["process"], spec["linux"]
    assert process["noNewPrivileges"] is True
    caps = process["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == CONTAINERD_CAPS
    assert "inheritable" not in caps and "ambient" not in caps
    assert linux["maskedPaths"] == DOCKER_MASKED
    assert linux["readonlyPaths"] == DOCKER_READONLY
    assert linux["seccomp"] == sandbox.seccomp_profile(CAPABILITIES)
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert {ns["type"] for ns in linux["namespaces"]} == {"pid", "ipc", "uts", "mount",
                                                            "network"}
    # no AppArmor on this kernel: no profile named (see test_apparmor_detection)
    assert ("apparmorProfile" in process) == sandbox.apparmor_available()


def test_apparmor_detection(tmp_path, monkeypatch):
    flag = tmp_path / "enabled"
    assert not sandbox.apparmor_available(flag)  # no module: no AppArmor
    flag.write_text("N\n")
    assert not sandbox.apparmor_available(flag)
    flag.write_text("Y\n")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert not sandbox.apparmor_available(flag)  # on, but nothing to load a profile with
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: "/sbin/" + name)
    assert sandbox.apparmor_available(flag)
    text = sandbox.render_apparmor(etc=tmp_path)
    assert text.startswith("@{PROC}=/proc/\n")
    assert "profile kata-default flags=(attach_disconnected,mediate_deleted) {" in text
    for rule in ("deny mount,", "ptrace (trace,read) peer=kata-default,",
                 "deny @{PROC}/sysrq-trigger rwklx,", "deny /sys/kernel/security/** rwklx,"):
        assert f"  {rule}\n" in text


# -- real containers ----------------------------------------------------------------------
class Lines:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, stream, line) -> None:
        with self.lock:
            self.items.append((stream, line))

    def text(self, stream: str | None = None) -> list[str]:
        return [line.decode() for s, line in self.items if stream in (None, s)]


def run(rt, digest, script, stream=None, **kw):
    out = Lines()
    status = rt.run(StepSpec(image=digest, argv=("sh", "-c", script), timeout=60, **kw),
                    out, threading.Event())
    return status, out.text(stream)


PROBES = {  # operation -> the errno the sandbox answers with
    "userns": "EPERM", "clone_userns": "EPERM", "mountns": "EPERM", "mount": "EPERM",
    "keyctl": "EPERM", "add_key": "EPERM", "bpf": "EPERM", "init_module": "EPERM",
    "finit_module": "EPERM", "delete_module": "EPERM", "ptrace": "EPERM",
    "ptrace_child": "EPERM", "process_vm_readv": "EPERM", "setns": "EPERM",
    "reboot": "EPERM", "swapon": "EPERM",
    # not in containerd 1.6's profile either (CAP_SYS_ADMIN), tried for real here
    "perf_event_open": "EPERM", "userfaultfd": "EPERM",
    # allowed by containerd 1.6's profile, denied by kata (sandbox.IO_URING)
    "io_uring": "EPERM",
}


@pytest.mark.integration
def test_every_escape_fails_inside_a_step(each_oci_runtime, probe_digest):
    script = "for op in " + " ".join(PROBES) + "; do probe $op; done 2>&1; true"
    status, lines = run(each_oci_runtime, probe_digest, script)
    assert status == 0
    assert lines == [f"{op} blocked: {errno}" for op, errno in PROBES.items()]


@pytest.mark.integration
def test_the_user_namespace_escape_of_the_issue_fails(each_oci_runtime, busybox_digest):
    status, lines = run(each_oci_runtime, busybox_digest,
                        "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; "
                        "unshare -U -r -m sh -c 'mount -t tmpfs none /tmp && echo MOUNTED'")
    assert status == 1
    status_lines = {x.split(":")[0]: x.split(":\t")[1] for x in lines if ":\t" in x}
    assert status_lines["NoNewPrivs"] == "1"
    assert status_lines["Seccomp"] == "2"  # SECCOMP_MODE_FILTER
    assert status_lines["CapEff"] == "00000000a80425fb"  # the 14 default capabilities
    assert "MOUNTED" not in lines
    # stdout and stderr are copied independently: the error may come before the status
    assert "unshare: unshare(0x10020000): Operation not permitted" in lines


@pytest.mark.integration
def test_masked_and_readonly_paths_inside_a_step(each_oci_runtime, busybox_digest):
    status, lines = run(each_oci_runtime, busybox_digest, """
        echo "timer_list=$(wc -c < /proc/timer_list) keys=$(wc -c < /proc/keys)"
        echo "firmware=$(ls /sys/firmware | wc -l) acpi=$(ls /proc/acpi | wc -l)"
        { echo 1 > /proc/sys/vm/drop_caches; } 2>/dev/null && echo WROTE-SYS || echo sys-ro
        { echo 1 > /proc/sys/kernel/sysrq; } 2>/dev/null && echo WROTE-SYSRQ || echo sysrq-ro
        mkdir /sys/kata 2>/dev/null && echo WROTE-SYSFS || echo sysfs-ro
        echo ok""")
    assert status == 0
    # the host's /proc/timer_list and /sys/firmware are not empty (checked below)
    assert lines == ["timer_list=0 keys=0", "firmware=0 acpi=0", "sys-ro", "sysrq-ro",
                     "sysfs-ro", "ok"]
    with open("/proc/timer_list", "rb") as f:
        assert f.read(1)
    assert any(__import__("os").scandir("/sys/firmware"))


@pytest.mark.integration
def test_normal_work_still_runs_under_the_profile(clean_runtime, busybox_digest):
    # fork, exec, pipes, signals, chroot (CAP_SYS_CHROOT), chown, mknod of a fifo
    status, lines = run(clean_runtime, busybox_digest, """
        set -e
        mkfifo /tmp/f; (echo through-fifo > /tmp/f &); cat /tmp/f
        sleep 5 & kill $!; wait $! || echo killed=$?
        touch /tmp/x && chown 65534:65534 /tmp/x && stat -c %u /tmp/x
        chroot / true && echo chroot-ok
        seq 1 1000 | sort -rn | head -1""", stream="stdout")
    assert status == 0, lines
    assert lines == ["through-fifo", "killed=143", "65534", "chroot-ok", "1000"]


@pytest.mark.integration
def test_a_service_container_gets_the_same_sandbox(each_oci_runtime, probe_digest):
    lines: list[str] = []
    lock = threading.Lock()
    got = threading.Event()

    def service_sink(name, stream, line):
        with lock:
            lines.append(line.decode())
            if line.startswith(b"mount blocked") or line.startswith(b"mount ALLOWED"):
                got.set()

    svc = ServiceSpec(name="svc", image=probe_digest,
                      argv=("sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
                                        "probe userns; probe mount; exec sleep 60"))
    step = StepSpec(image=probe_digest, argv=("sh", "-c", "sleep 0.3"), services=(svc,),
                    timeout=60)
    status = each_oci_runtime.run(step, Lines(), threading.Event(), service_sink=service_sink)
    assert status == 0
    assert got.is_set()
    assert lines == ["NoNewPrivs:\t1", "Seccomp:\t2", "userns blocked: EPERM",
                     "mount blocked: EPERM"]


@pytest.mark.integration
def test_a_syscall_through_the_32bit_abi_is_killed(each_oci_runtime, probe_digest, tmp_path):
    # on the host the same probe works: the compat ABI exists, only the filter stops it
    import platform
    import subprocess

    from support.images import probe_binary

    assert platform.machine() == "x86_64"
    exe = tmp_path / "probe"
    exe.write_bytes(probe_binary())
    exe.chmod(0o755)
    host = subprocess.run([str(exe), "compat"], capture_output=True, text=True)
    assert (host.returncode, host.stdout) == (1, "compat ALLOWED\n")
    status, lines = run(each_oci_runtime, probe_digest, "probe compat; echo status=$?",
                        stream="stdout")
    assert status == 0
    assert lines == [f"status={128 + 31}"]  # SIGSYS: libseccomp's bad-arch action



# -- the profile compiled once, for crun (seccompbpf.py) -----------------------------------
def test_the_compiled_profile_is_cached_and_skips_no_spec():
    from kata.runtimes.containerd import seccompbpf

    profile = sandbox.seccomp_profile(CAPABILITIES)
    first = seccompbpf.bpf_annotations(profile)
    assert set(first) == {"run.oci.seccomp_bpf_data"}
    assert seccompbpf.bpf_annotations(sandbox.seccomp_profile(CAPABILITIES)) == first
    assert seccompbpf.bpf_annotations(None) == {}  # a spec without a profile: nothing given
    # a different profile (CAP_SYS_ADMIN unlocks mount, ...) compiles to a different filter
    admin = seccompbpf.bpf_annotations(sandbox.seccomp_profile([*CAPABILITIES, "CAP_SYS_ADMIN"]))
    assert admin != first


@pytest.mark.integration
def test_the_precompiled_filter_is_byte_for_byte_crun_s_own(tmp_path):
    # crun writes the filter it compiled from linux.seccomp to <root>/<id>/seccomp.bpf at
    # `crun create`; kata's must be those very bytes (so the annotation changes nothing)
    import base64
    import io
    import json
    import os
    import subprocess
    import tarfile

    from kata.runtimes.containerd import seccompbpf
    from support.images import busybox_layer

    bundle, root = tmp_path / "bundle", tmp_path / "crun"
    (bundle / "rootfs").mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as tar:
        tar.extractall(bundle / "rootfs", filter="fully_trusted")
    for caps in (CAPABILITIES, [*CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]):
        spec = build_spec(StepSpec(image="sha256:" + "0" * 64, argv=("true",)),
                          container_id="kata-bpf", image_env=())
        spec["process"]["capabilities"] = {k: list(caps) for k in ("bounding", "effective",
                                                                    "permitted")}
        spec["linux"]["seccomp"] = sandbox.seccomp_profile(caps)
        spec["root"] = {"path": str(bundle / "rootfs")}
        spec["linux"]["cgroupsPath"] = f"/kata/bpf-test-{os.getpid()}"
        (bundle / "config.json").write_text(json.dumps(spec))
        # the created container's init holds its stdio until it is started: not a pipe
        subprocess.run(["crun", "--root", str(root), "create", "--bundle", str(bundle), "bpf"],
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        try:
            crun_own = (root / "bpf" / "seccomp.bpf").read_bytes()
        finally:
            subprocess.run(["crun", "--root", str(root), "delete", "--force", "bpf"],
                           check=True, capture_output=True, timeout=60)
        ours = seccompbpf.compile_profile(spec["linux"]["seccomp"])
        assert len(ours) > 1000 and ours == crun_own
        assert seccompbpf.bpf_annotations(spec["linux"]["seccomp"]) == {
            seccompbpf.ANNOTATION: base64.b64encode(crun_own).decode()}


@pytest.mark.integration
def test_crun_containers_get_the_compiled_filter_runc_ones_the_profile(each_oci_runtime,
                                                                       busybox_digest):
    # the spec containerd holds for a running step: on crun the compiled filter in place
    # of the profile's rules, on runc the profile
    from kata.runtimes.containerd import seccompbpf
    from support.steps import running_steps

    rt = each_oci_runtime
    seen: list[dict] = []

    def sink(stream, line):
        if line == b"up" and not seen:
            for _cid, spec in running_steps(rt):  # a containerd task's or a direct step's
                if spec["process"]["args"][-1].startswith("echo up"):
                    seen.append(spec)

    status = rt.run(StepSpec(image=busybox_digest, argv=("sh", "-c", "echo up; sleep 0.2"),
                             timeout=60), sink, threading.Event())
    assert status == 0 and len(seen) == 1
    spec = seen[0]
    profile = sandbox.seccomp_profile(CAPABILITIES)
    if rt.oci.name == "crun":
        assert seccompbpf.takes_compiled_filter(rt.oci.binary)  # crun 1.8 here
        assert "seccomp" not in spec["linux"]
        from kata.runtimes.containerd.shimgroup import GROUP_ANNOTATION

        own = {k: v for k, v in spec["annotations"].items() if k != GROUP_ANNOTATION}
        assert own == seccompbpf.bpf_annotations(profile)  # beside the shim group's id
    else:
        assert spec["linux"]["seccomp"] == profile
        assert seccompbpf.ANNOTATION not in (spec.get("annotations") or {})


def test_only_a_crun_that_takes_the_annotation_gets_it(tmp_path):
    from kata.runtimes.containerd import seccompbpf

    def fake(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
        path.chmod(0o755)
        return str(path)

    assert seccompbpf.takes_compiled_filter(fake("new", "crun version 1.8.1\n+CAP +SECCOMP +YAJL"))
    assert not seccompbpf.takes_compiled_filter(fake("old", "crun version 0.16\n+CAP +SECCOMP"))
    assert not seccompbpf.takes_compiled_filter(fake("noseccomp", "crun version 1.8.1\n+CAP +YAJL"))
    assert not seccompbpf.takes_compiled_filter(fake("other", "runc version 1.1.5"))
    assert not seccompbpf.takes_compiled_filter(str(tmp_path / "missing"))
