"""Resource limits (issue 10, item 3): `resources:` in the config, the OCI spec, the
cgroup a real container gets, an out-of-memory kill reported as such, a fork bomb held
by the pids limit."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kata.errors import KataError
from kata.loader import load_text
from kata.resources import (GIB, MIB, Resources, effective, format_size, host_defaults,
                            parse_memory)
from kata.runtimes.base import OOM_EXIT, ServiceSpec, StepSpec
from kata.runtimes.containerd.spec import build_spec
from support.cli import KataProcess

CONFIG = """\
pipeline: limits
settings:
  resources: {memory: 1GiB, pids: 100}
steps:
  - name: build
    image: busybox
    commands: [make]
    resources: {cpus: 1.5, memory: "512MiB"}
    services:
      - name: db
        image: postgres
        resources: {memory: 64MiB}
      - name: cache
        image: redis
  - name: test
    image: busybox
    commands: [make test]
"""


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,size", [
    ("2GiB", 2 * GIB), ("512MiB", 512 * MIB), ("1.5G", 1_500_000_000), ("64m", 64_000_000),
    ("500MB", 500_000_000), ("1 GiB", GIB), (67108864, 64 * MIB), ("1TiB", 1 << 40),
    ("8Mi", 8 * MIB), ("1024000000", 1_024_000_000),
])
def test_memory_sizes(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "2 GiBs", "-1GiB", "1e3", "1k", True, "0", -5,
                                  "2XB", "1.5.5G"])
def test_bad_memory_sizes(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_one_size_grammar_for_config_and_cli():
    # `kata store gc --max-size` and `resources.memory` read sizes the same way
    from kata.cli.store_cmds import parse_size as cli_size

    from kata.resources import parse_size

    cases = {"2GiB": 2 * GIB, "1.5G": 1_500_000_000, "500MB": 500_000_000, "64m": 64_000_000,
             "1024": 1024, "8Ki": 8192, "3pb": 3 * 10**15}
    assert {t: cli_size(t) for t in cases} == cases
    assert {t: parse_size(t) for t in cases} == cases


def test_format_size():
    assert format_size(64 * MIB) == "64 MiB"
    assert format_size(3 * GIB // 2) == "1.5 GiB"
    assert format_size(12_000) == "11.72 KiB"


def test_host_defaults_are_sized_from_the_host(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683776 kB\nMemFree:        100 kB\n")
    d = host_defaults(str(meminfo))
    assert d.memory == 24683776 * 1024 // 2
    import os

    assert d.cpus == float(len(os.sched_getaffinity(0)))
    assert d.pids == 4096
    assert host_defaults(str(tmp_path / "missing")).memory == 2 * GIB
    assert effective(Resources(pids=7)).pids == 7
    assert effective(None).complete


# -- the config -------------------------------------------------------------------------------
def test_resources_inherit_from_settings():
    p = load_text(CONFIG, file="ci.yaml")
    assert p.settings.resources == Resources(memory=GIB, pids=100)
    build, test = p.steps
    assert build.resources == Resources(memory=512 * MIB, cpus=1.5, pids=100)
    assert test.resources == Resources(memory=GIB, pids=100)
    db, cache = build.services
    # a service takes settings' defaults, not its step's
    assert db.resources == Resources(memory=64 * MIB, pids=100)
    assert cache.resources == Resources(memory=GIB, pids=100)
    assert load_text("steps: [{name: a, image: busybox}]").steps[0].resources == Resources()


@pytest.mark.parametrize("value,reason,where,message", [
    ("{memory: 2XB}", "config.value", (5, 25), "resources.memory: bad size '2XB'"),
    ("{memory: 1k}", "config.value", (5, 25), "below the minimum of 6 MiB"),
    ("{memory: [1]}", "config.type", (5, 25), "resources.memory must be a size"),
    ("{cpus: 0}", "config.value", (5, 23), "resources.cpus must be between 0.01 and 1024"),
    ("{cpus: lots}", "config.type", (5, 23), "resources.cpus must be a number of CPUs"),
    ("{pids: 0}", "config.value", (5, 23), "resources.pids must be between 1 and 4194304"),
    ("{pids: 2.5}", "config.type", (5, 23), "resources.pids must be an integer"),
    ("{memroy: 1GiB}", "config.unknown_key", (5, 17), "did you mean 'memory'?"),
    ("4GiB", "config.type", (5, 16), "resources must be a mapping"),
])
def test_bad_resources_name_file_line_column(value, reason, where, message):
    text = f"steps:\n  - name: a\n    image: busybox\n    commands: [x]\n    resources: {value}\n"
    with pytest.raises(KataError) as err:
        load_text(text, file="ci.yaml")
    e = err.value
    assert e.reason == reason
    assert (e.position.file, e.position.line, e.position.column) == ("ci.yaml", *where)
    assert message in e.message


def test_bad_resources_on_settings_and_services():
    with pytest.raises(KataError) as err:
        load_text("settings:\n  resources: {cpus: -1}\nsteps: [{name: a, image: b}]\n",
                  file="ci.yaml")
    assert (err.value.reason, err.value.position.line, err.value.position.column) == \
        ("config.value", 2, 21)
    assert "settings.resources.cpus" in err.value.message
    with pytest.raises(KataError) as err:
        load_text("steps:\n  - name: a\n    image: b\n    services:\n      - name: db\n"
                  "        image: pg\n        resources: {pids: x}\n", file="ci.yaml")
    assert (err.value.position.line, err.value.position.column) == (7, 27)
    assert "service 'db': resources.pids must be an integer" in err.value.message


def test_userns_is_refused_with_the_reason():
    with pytest.raises(KataError) as err:
        load_text("settings:\n  userns: true\nsteps: [{name: a, image: b}]\n", file="ci.yaml")
    assert err.value.reason == "config.unsupported"
    assert (err.value.position.line, err.value.position.column) == (2, 3)
    assert "SECURITY.md" in err.value.message


def test_declared_resources_enter_the_derivation_hash(tmp_path):
    # a pass under 4 GiB is no pass under 64 MiB (docs/architecture.md, "What is in a key");
    # host defaults do not: a config without limits has one key on every host, and the
    # key of a step without limits is the one it had before limits were hashed
    from kata.compile import compile_pipeline

    digest = "sha256:" + "1" * 64
    body = "steps:\n  - name: a\n    image: busybox\n    commands: [x]\n"

    def key(res: str, settings: str = "") -> str:
        graph = compile_pipeline(load_text(settings + body + res), resolver=lambda ref: digest,
                                 repo_root=tmp_path)
        return graph.nodes["a"].drv_hash

    plain = key("")
    limited = key("    resources: {memory: 64MiB, cpus: 0.5, pids: 32}\n")
    assert plain != limited
    assert key("    resources: {memory: 4GiB}\n") != key("    resources: {memory: 64MiB}\n")
    # the same limit written another way, or inherited from settings, is the same key
    assert key("    resources: {memory: 4096MiB, cpus: 2}\n") == \
        key("    resources: {memory: 4GiB, cpus: 2.0}\n")
    assert key("", "settings: {resources: {memory: 64MiB, cpus: 0.5, pids: 32}}\n") == limited


# -- the spec -------------------------------------------------------------------------------
def test_spec_carries_the_limits():
    spec = build_spec(StepSpec(image="sha256:" + "0" * 64, argv=("true",),
                               resources=Resources(memory=64 * MIB, cpus=1.5, pids=64)),
                      container_id="kata-x", image_env=())
    res = spec["linux"]["resources"]
    assert res["memory"]["limit"] == 64 * MIB
    assert res["memory"].get("swap", 64 * MIB) == 64 * MIB
    assert res["cpu"] == {"quota": 150_000, "period": 100_000}
    assert res["pids"] == {"limit": 64}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]
    default = build_spec(StepSpec(image="sha256:" + "0" * 64, argv=("true",)),
                         container_id="kata-x", image_env=())["linux"]["resources"]
    host = host_defaults()
    assert default["memory"]["limit"] == host.memory
    assert default["pids"] == {"limit": 4096}
    assert default["cpu"]["quota"] == round(host.cpus * 100_000)


# -- real containers ------------------------------------------------------------------------
class Lines:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.event = threading.Event()
        self.on_line = None

    def __call__(self, stream, line) -> None:
        self.items.append(line)
        if self.on_line is not None:
            self.on_line(line)


def _cgroup_values(cid: str) -> dict[str, str]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # v2
        d = root / "kata" / cid
        return {"memory": (d / "memory.max").read_text().strip(),
                "cpu": (d / "cpu.max").read_text().strip(),
                "pids": (d / "pids.max").read_text().strip()}
    return {"memory": (root / "memory/kata" / cid / "memory.limit_in_bytes").read_text().strip(),
            "cpu": (root / "cpu/kata" / cid / "cpu.cfs_quota_us").read_text().strip() + " " +
            (root / "cpu/kata" / cid / "cpu.cfs_period_us").read_text().strip(),
            "pids": (root / "pids/kata" / cid / "pids.max").read_text().strip()}


@pytest.mark.integration
def test_a_container_gets_its_cgroup_limits(each_oci_runtime, busybox_digest):
    import secrets

    from support.steps import running_steps

    label = secrets.token_hex(6)
    seen: dict[str, str] = {}

    def on_line(line: bytes) -> None:  # a containerd task's or a direct step's cgroup
        found = running_steps(each_oci_runtime, ("kata.test", label))
        seen.update(_cgroup_values(found[0][0]))

    out = Lines()
    out.on_line = on_line
    status = each_oci_runtime.run(StepSpec(
        image=busybox_digest, argv=("sh", "-c", "echo up; sleep 0.2"), timeout=60,
        labels={"kata.test": label},
        resources=Resources(memory=96 * MIB, cpus=0.5, pids=50)), out, threading.Event())
    assert status == 0
    # a direct step's cgroup also holds the crun that waits for it: one process more
    pids = "51" if each_oci_runtime.direct_unusable == "" else "50"
    assert seen == {"memory": str(96 * MIB), "cpu": "50000 100000", "pids": pids}


@pytest.mark.integration
def test_out_of_memory_is_reported_as_such(each_oci_runtime, busybox_digest):
    limited = Resources(memory=64 * MIB)
    hog = StepSpec(image=busybox_digest, timeout=60, resources=limited,
                   argv=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1"))
    assert each_oci_runtime.run(hog, Lines(), threading.Event()) == OOM_EXIT
    # the same limit holds what fits, and a plain SIGKILL is not an OOM
    fits = StepSpec(image=busybox_digest, timeout=60, resources=limited,
                    argv=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=16M count=2"))
    assert each_oci_runtime.run(fits, Lines(), threading.Event()) == 0
    killed = StepSpec(image=busybox_digest, timeout=60, resources=limited,
                      argv=("sh", "-c", "sh -c 'kill -9 $$'; exit $?"))  # not PID 1
    assert each_oci_runtime.run(killed, Lines(), threading.Event()) == 137
    # a child that ran out of memory while the step went on and passed: a pass
    survived = StepSpec(image=busybox_digest, timeout=60, resources=limited,
                        argv=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1 || "
                              "echo survived"))
    out = Lines()
    assert each_oci_runtime.run(survived, out, threading.Event()) == 0
    assert b"survived" in out.items


def _host_can_fork() -> bool:
    return subprocess.run(["true"], timeout=30).returncode == 0


@pytest.mark.integration
def test_a_fork_bomb_is_held_by_the_pids_limit(each_oci_runtime, busybox_digest):
    # the bomb runs in the background while the step counts its processes with shell
    # builtins only (a glob over /proc: no fork needed), then exits: PID 1 leaving ends
    # the pid namespace and every process of the bomb with it
    script = textwrap.dedent("""\
        bomb() { bomb | bomb & }
        sleep 2 & s=$!
        bomb
        wait $s
        set -- /proc/[0-9]*
        echo "processes $#"
        exit 0
    """)
    forks_during: list[bool] = []
    out = Lines()
    out.on_line = lambda line: forks_during.append(_host_can_fork()) if not forks_during else None
    started = time.monotonic()
    status = each_oci_runtime.run(StepSpec(image=busybox_digest, argv=("sh", "-c", script),
                                        timeout=60, resources=Resources(pids=64)),
                               out, threading.Event())
    assert time.monotonic() - started < 60  # ended by itself, not by the timeout
    assert status in (0, 2), out.items[-5:]  # 2: the step's own shell could not fork either
    # the bomb's shells write "sh: " and the reason in two writes, all at once: lines
    # interleave, so the refused fork is looked for in the whole output
    assert b"can't fork: Resource temporarily unavailable" in b"\n".join(out.items)
    counts = [int(x.split()[1]) for x in out.items if x.startswith(b"processes ")]
    assert all(n <= 64 for n in counts), counts
    assert forks_during == [True]  # the host forked while the bomb was at its limit
    assert _host_can_fork()
    if status != 0:  # said after the step's own output
        assert out.items[-1] == (b"kata: the step reached its process limit (64 processes "
                                 b"and threads): forks failed")


@pytest.mark.integration
def test_a_service_gets_its_own_limits(clean_runtime, busybox_digest):
    lines: list[bytes] = []
    svc = ServiceSpec(name="svc", image=busybox_digest, resources=Resources(memory=64 * MIB),
                      argv=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1; "
                                        "echo dd=$?; exec sleep 60"))
    step = StepSpec(image=busybox_digest, argv=("sh", "-c", "sleep 0.5"), services=(svc,),
                    timeout=60)
    status = clean_runtime.run(step, Lines(), threading.Event(),
                               service_sink=lambda n, s, line: lines.append(line))
    assert status == 0
    assert b"dd=137" in lines  # killed by the OOM killer inside the 64 MiB service


@pytest.mark.integration
def test_a_service_out_of_memory_says_so(clean_runtime, busybox_digest):
    from kata.runtimes.base import Readiness

    svc = ServiceSpec(name="hog", image=busybox_digest, resources=Resources(memory=32 * MIB),
                      argv=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1"),
                      ready=Readiness(kind="tcp", target="5432", timeout=30))
    step = StepSpec(image=busybox_digest, argv=("true",), services=(svc,), timeout=60)
    with pytest.raises(KataError) as err:
        clean_runtime.run(step, Lines(), threading.Event(), service_sink=lambda *a: None)
    assert err.value.reason == "service.exited"
    assert "service hog exited before it was ready (out of memory: limit 32 MiB)" in \
        err.value.message


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.integration
def test_kata_run_reports_out_of_memory(tmp_path, containerd_daemon, clean_runtime):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".kata-ci.yaml").write_text(textwrap.dedent("""\
        pipeline: limits
        settings:
          resources: {pids: 256}
          fail_fast: false
        steps:
          - name: hog
            image: kata.local/busybox:latest
            resources: {memory: 64MiB}
            commands: ["dd if=/dev/zero of=/dev/null bs=100M count=1"]
          - name: small
            image: kata.local/busybox:latest
            resources: {memory: 64MiB, cpus: 0.5}
            commands: ["dd if=/dev/zero of=/dev/null bs=8M count=1", "echo fine"]
          - name: bomb
            image: kata.local/busybox:latest
            timeout: 60s
            resources: {pids: 32}
            commands: ["bomb() { bomb | bomb & }", "bomb", "sleep 2", "exit 3"]
        """))
    kata = KataProcess(repo, store=tmp_path / "store", address=containerd_daemon.address)
    plain = kata("run")
    lines = plain.stdout.splitlines()
    assert plain.returncode == 1, plain.stdout + plain.stderr
    fail = [x for x in lines if x.startswith("[FAIL] hog")]
    assert len(fail) == 1 and fail[0].startswith("[FAIL] hog (out of memory: limit 64 MiB, ")
    assert "small | fine" in lines
    assert any(x.startswith("[PASS] small (") for x in lines)
    # the bomb is held at 32 tasks; the step ends (its shell cannot fork `sleep`, or exits 3)
    assert any(x.startswith("bomb | ") and x.endswith("can't fork: Resource temporarily "
                                                      "unavailable") for x in lines)
    assert ("bomb | kata: the step reached its process limit (32 processes and threads): "
            "forks failed") in lines
    assert [x.split(",")[0] for x in lines if x.startswith("[FAIL] bomb")] in \
        (["[FAIL] bomb (exit 2"], ["[FAIL] bomb (exit 3"])
    assert lines[-1].startswith("[DONE] ")
    proc = kata("run", "--json")  # hog runs again (a failure is never cached)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    import json

    failed = [e for e in map(json.loads, proc.stdout.splitlines())
              if e["event"] == "fail"]
    assert [(e["step"], e["reason"], e["exit_status"], e["message"]) for e in failed
            if e["step"] == "hog"] == [("hog", "step.oom", 137, "out of memory: limit 64 MiB")]


@pytest.mark.parametrize("value", ['"' + "9" * 400 + 'GiB"', "99999999999999999999GiB",
                                   "99999999999999999999999999", '"5EiB"', '"1e3GiB"'])
def test_a_size_too_large_for_any_machine_is_a_positioned_error(value):
    """Found by a review: a 400-digit size crashed the loader (OverflowError: float
    infinity), and ``99999999999999999999GiB`` loaded, then crashed `kata run` where the
    derivation is packed (msgpack: integer out of range). A size is exact and at most
    4 EiB (2**62 bytes: every int64 field holds it)."""
    with pytest.raises(KataError) as info:
        load_text(f"settings: {{resources: {{memory: {value}}}}}\nsteps:\n  - name: a\n"
                  "    image: x\n", file="c.yaml")
    assert info.value.reason == "config.value", str(info.value)
    assert (info.value.position.line, info.value.position.column) == (1, 32)


def test_sizes_are_exact():
    from kata.resources import parse_size

    assert parse_size("1.5G") == 1_500_000_000 and parse_size("0.1KiB") == 102
    assert parse_size("4096PiB") == 1 << 62
    with pytest.raises(ValueError):
        parse_size("4097PiB")
