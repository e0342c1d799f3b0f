"""Pure parts of the containerd adapter: references, config, OCI spec, stubs, cleanup."""

from __future__ import annotations

import json
import os

import pytest

from kata.errors import KataError
from kata.runtimes.base import Mount, StepSpec
from kata.runtimes.containerd.cleanup import Cleanup
from kata.runtimes.containerd.config import load_runtime_config
from kata.runtimes.containerd.images import chain_ids, select_platform
from kata.runtimes.containerd.reference import parse_reference
from kata.runtimes.containerd.registry import docker_credentials
from kata.runtimes.containerd.spec import build_spec
from procs import owner_alive, owner_id

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref,name", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("user/app:1.2", "docker.io/user/app:1.2"),
    ("kata.local/busybox:latest", "kata.local/busybox:latest"),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
    ("localhost/x", "localhost/x:latest"),
    (f"node:20@{D}", f"docker.io/library/node@{D}"),
])
def test_references_normalise(ref, name):
    assert parse_reference(ref).stored_name == name


@pytest.mark.parametrize("ref", ["", "Upper/case", "a b", "x@sha256:short", "x:", " busybox"])
def test_bad_references(ref):
    with pytest.raises(KataError) as err:
        parse_reference(ref)
    assert err.value.reason == "image.bad_reference"


def test_config_oci_runtime(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    monkeypatch.setenv("KATA_CONFIG", str(cfg))
    cfg.write_text("offline: false\n")
    assert load_runtime_config().oci_runtime == "auto"
    for name in ("auto", "crun", "runc"):
        cfg.write_text(f"containerd: {{oci_runtime: {name}}}\n")
        assert load_runtime_config().oci_runtime == name
    cfg.write_text("containerd:\n  oci_runtime: youki\n")
    with pytest.raises(KataError) as err:
        load_runtime_config()
    assert err.value.reason == "config.bad_value" and err.value.exit_code == 2
    assert "auto, crun, runc, got 'youki'" in err.value.message
    assert (err.value.position.line, err.value.position.column) == (2, 3)  # the key


def test_config_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("offline: true\ncontainerd: {stop_grace: 1.5}\n"
                   "registries:\n  docker.io: {mirrors: ['http://m:5000']}\n  r:5000: {plain_http: true}\n")
    monkeypatch.setenv("KATA_CONFIG", str(cfg))
    c = load_runtime_config()
    assert c.offline and c.stop_grace == 1.5
    assert c.registry("docker.io").mirrors == ("http://m:5000",)
    assert c.registry("r:5000").plain_http and not c.registry("other").plain_http
    cfg.write_text("registries: {x: {mirror: []}}\n")
    with pytest.raises(KataError) as err:
        load_runtime_config()
    assert err.value.reason == "config.unknown_key"
    cfg.write_text("registries: {x: {mirrors: ['m:5000']}}\n")
    with pytest.raises(KataError) as err:
        load_runtime_config()
    assert err.value.reason == "config.bad_value"
    monkeypatch.setenv("KATA_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(KataError) as err:
        load_runtime_config()
    assert err.value.reason == "config.not_found"


def test_docker_credentials(tmp_path):
    import base64

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p:w").decode()},
        "reg.example:5000": {"username": "a", "password": "b"},
    }}))
    assert docker_credentials("docker.io", cfg) == ("u", "p:w")
    assert docker_credentials("reg.example:5000", cfg) == ("a", "b")
    assert docker_credentials("other", cfg) is None


def test_spec_from_containerd_defaults():
    step = StepSpec(image=D, argv=("sh", "-c", "true"), env={"A": "1"}, workdir="/w",
                    user="10:20", network="none",
                    mounts=(Mount(kind="bind", source="/tmp", target="/t", readonly=True),
                            Mount(kind="tmpfs", target="/s")))
    spec = build_spec(step, container_id="kata-x", image_env=("PATH=/bin", "A=0", "B=2"))
    p = spec["process"]
    assert p["args"] == ["sh", "-c", "true"] and p["cwd"] == "/w"
    assert p["user"]["uid"] == 10 and p["user"]["gid"] == 20
    assert p["env"] == ["PATH=/bin", "A=1", "B=2"]
    assert p["noNewPrivileges"] is True and len(p["capabilities"]["bounding"]) == 14
    assert {"type": "network"} in spec["linux"]["namespaces"]
    assert spec["linux"]["cgroupsPath"] == "/kata/kata-x"
    targets = [m["destination"] for m in spec["mounts"]]
    # and no tmpfs on /run: the image's own, as under Docker (test_step_env)
    assert targets[:6] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]
    assert "/run" not in targets
    assert spec["mounts"][-2]["options"][:2] == ["rbind", "ro"]
    host = build_spec(StepSpec(image=D, argv=("true",), network="host"), container_id="k",
                      image_env=())
    assert all(ns["type"] != "network" for ns in host["linux"]["namespaces"])


@pytest.mark.parametrize("mount", [
    Mount(kind="bind", source="relative", target="/x"),
    Mount(kind="overlay", target="/x"),
    Mount(kind="overlay", target="/x", lower=("/a:b",), upper="/u", work="/w"),
    Mount(kind="overlay", target="/x", lower=("/a",), upper="/u"),
    Mount(kind="tmpfs", target="relative"),
])
def test_bad_mounts(mount):
    with pytest.raises(KataError) as err:
        build_spec(StepSpec(image=D, argv=("true",), mounts=(mount,)), container_id="k", image_env=())
    assert err.value.reason == "runtime.bad_mount"


def test_chain_ids_and_platform():
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    import hashlib

    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]
    index = {"manifests": [
        {"digest": a, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": b, "size": 2, "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert select_platform(index).digest == b
    with pytest.raises(KataError) as err:
        select_platform({"manifests": index["manifests"][:1]})
    assert err.value.reason == "image.no_platform"


def test_owner_labels():
    me = owner_id()
    assert owner_alive(me)
    assert not owner_alive(me.replace("@", "@other-boot-"))
    pid, _, rest = me.partition(".")
    assert not owner_alive(f"{pid}.1@{rest.partition('@')[2]}")  # same pid, another start


def test_cleanup_never_hides_the_first_error():
    ran = []

    def fail(msg):
        def f():
            ran.append(msg)
            raise RuntimeError(msg)
        return f

    with pytest.raises(ValueError) as err:
        with Cleanup() as c:
            c.push("a", fail("a"))
            c.push("b", fail("b"))
            raise ValueError("first")
    assert ran == ["b", "a"]
    assert any("b" in n for n in err.value.__notes__)
    with pytest.raises(RuntimeError, match="b"):
        with Cleanup() as c:
            c.push("a", fail("a2"))
            c.push("b", fail("b"))


def test_protogen_rewrites_imports(tmp_path):
    from kata.runtimes.containerd import protogen

    out = protogen.generate(tmp_path / "_api")
    files = list(out.rglob("*_pb2*.py"))
    assert len(files) >= 40
    text = "\n".join(f.read_text() for f in files)
    assert "from github" not in text and "import github" not in text
    assert "from gogoproto" not in text
    assert "from kata.runtimes.containerd._api.api.types import mount_pb2" in text


def test_docker_credential_helpers(tmp_path, monkeypatch):
    """credHelpers[host] first, then credsStore, then auths; Docker Hub is asked by its
    index URL; "credentials not found" falls through to auths."""
    import base64

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("echo", 'read s; printf \'{"Username": "u-%s", "Secret": "pw"}\' "$s"\n'),
                       ("none", "echo 'credentials not found in native keychain' >&2; exit 1\n"),
                       ("broken", "echo boom >&2; exit 3\n")):
        helper = bin_dir / f"docker-credential-{name}"
        helper.write_text("#!/bin/sh\n" + body)
        helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credsStore": "echo", "credHelpers": {"reg.b": "none"},
                               "auths": {"reg.b": {"auth": base64.b64encode(b"a:b").decode()}}}))
    assert docker_credentials("reg.a:5000", cfg) == ("u-reg.a:5000", "pw")
    assert docker_credentials("docker.io", cfg) == ("u-https://index.docker.io/v1/", "pw")
    assert docker_credentials("reg.b", cfg) == ("a", "b")  # helper has none: auths
    cfg.write_text(json.dumps({"credsStore": "broken"}))
    with pytest.raises(KataError) as err:
        docker_credentials("reg.a", cfg)
    assert err.value.reason == "image.credential_helper" and "boom" in err.value.message


# -- the shim group's idle timer (shimgroup.py), anchors faked: no containerd -----------
def _fake_group(monkeypatch, deletes: list[str], fail: set[str] | None = None):
    from pathlib import Path

    from kata.runtimes.containerd import shimgroup

    group = shimgroup.ShimGroup(None, anchor_root=Path("/nonexistent"), runtime_options=None,
                                precompiled_seccomp=False, runtime_name="x", width=1)
    made = iter(range(1000))

    def start(slot):
        n = next(made)
        slot.group, slot.anchor = f"g{n}", f"a{n}"

    def delete(cid):
        deletes.append(cid)
        if fail and cid in fail:
            fail.discard(cid)
            raise RuntimeError("containerd did not answer in time")

    group._start_anchor, group._delete_anchor = start, delete
    return group


def _used(group) -> str:
    """One container through the group: returns its group id, the group idle again."""
    gid = group.acquire()
    group.release(gid)
    return gid


def test_an_idle_expiry_waiting_for_close_keeps_the_timer_a_release_started(monkeypatch):
    """The idle timer fired while close() was deleting; a release meanwhile started a
    new timer. The late expiry forgot that one (it reset the group's timer), so the next
    close() could not cancel it and it fired after close."""
    import threading

    from kata.runtimes.containerd import shimgroup

    monkeypatch.setattr(shimgroup, "IDLE_SECONDS", 0.01)
    group = _fake_group(monkeypatch, [])
    fired = threading.Event()
    real_expire = group._expire

    def expire():
        fired.set()
        real_expire()

    group._expire = expire
    with group._deleting:  # close() is deleting
        _used(group)  # its timer fires now and waits for close()
        first = group._timer
        assert fired.wait(10)
        with group._lock:  # what close() does to the timer
            group._timer = None
        monkeypatch.setattr(shimgroup, "IDLE_SECONDS", 60.0)
        _used(group)  # a release while close() ends: a new timer
        second = group._timer
        assert second is not None and second is not first
    first.join(10)
    assert group._timer is second
    group.close()
    assert group._timer is None and second.finished.is_set()  # cancelled


def test_an_anchor_whose_delete_failed_is_tried_again_by_the_next_expiry(monkeypatch):
    """A long-lived runtime (`kata worker`) may never close its group: an anchor whose
    delete failed in an expiry waited for a close() that might not come."""
    from kata.runtimes.containerd import shimgroup

    monkeypatch.setattr(shimgroup, "IDLE_SECONDS", 60.0)  # the test plays the timer
    deletes: list[str] = []
    group = _fake_group(monkeypatch, deletes, fail={"a0"})

    def expire_now():
        for slot in group._slots:
            slot.idle_since -= 60.0
        group._expire()

    _used(group)
    expire_now()
    assert deletes == ["a0"] and group._stray == ["a0"]
    _used(group)
    expire_now()
    assert sorted(deletes) == ["a0", "a0", "a1"] and group._stray == []
    group.close()


def test_crun_refused_rlimits_name_the_daemons_limit_and_the_fix():
    """Where kata cannot read containerd's limits (spec.task_rlimits), crun's refusal of
    the spec's open-files limit says what to raise, not only crun's words."""
    import grpc

    from kata.runtimes.containerd.client import wrap

    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNKNOWN

        def details(self):
            return ("failed to create shim task: OCI runtime create failed: setrlimit "
                    "`RLIMIT_NOFILE`: Operation not permitted: unknown")

    err = wrap(Refused(), "create task")
    assert err.message.startswith("containerd: create task: failed to create shim task")
    assert "LimitNOFILE=infinity" in err.message and "kata doctor" in err.message
