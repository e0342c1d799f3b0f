"""What a `kata worker` accepts (``kata.executor.admit``), as values: every action kata's
client builds passes, and the worker's host config decides about `network: host`. The
hostile actions themselves are sent to a real worker through a real BuildGrid in
tests/test_hostile_remote.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kata.errors import KataError
from kata.executor import action as act
from kata.executor import admit, files
from kata.hostconfig import load_host_config
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from support.cli import ROOT
from test_remote_action import spec

ALLOW = admit.WorkerPolicy(allow_host_network=True)


def _sent(step) -> tuple[re_pb2.Action, re_pb2.Command]:  # noqa: ANN001
    remote = act.build_action(step, re_pb2.Digest(hash="0" * 64, size_bytes=1))
    action = re_pb2.Action()
    action.ParseFromString(remote.blobs[files.key(remote.digest)])
    command = re_pb2.Command()
    command.ParseFromString(remote.blobs[files.key(action.command_digest)])
    return action, command


@pytest.mark.parametrize("network", ["none", "default", "host"])
def test_every_action_kata_builds_is_admitted(network: str) -> None:
    for step in (spec(network=network), spec(network=network, cache_paths=("node_modules/",)),
                 spec(network=network, services=(), user="0:0", timeout=None),
                 spec(network=network, resources=spec().resources.__class__(cpus=0.015))):
        action, command = _sent(step)
        props = admit.check_action(action, command)
        back = act.read_spec(command, act.spec_document(step), "/w/ws", {})
        admit.check_spec(back, props, ALLOW)


def test_network_host_needs_the_workers_consent() -> None:
    action, command = _sent(spec(network="host"))
    props = admit.check_action(action, command)
    back = act.read_spec(command, act.spec_document(spec(network="host")), "/w/ws", {})
    with pytest.raises(KataError) as err:
        admit.check_spec(back, props, admit.WorkerPolicy())
    assert err.value.reason == "worker.policy"
    assert "worker.allow_host_network" in err.value.message


def test_a_directory_that_contains_itself_is_refused_not_walked_for_ever() -> None:
    """A Directory cannot name its own digest, but what a lying GetTree answers is only a
    dict: the check must end on it."""
    loop = re_pb2.Directory()
    loop.directories.add(name="again", digest=re_pb2.Digest(hash="b" * 64, size_bytes=4))
    root = re_pb2.Directory()
    root.directories.add(name=act.WORKSPACE_DIR, digest=re_pb2.Digest(hash="b" * 64,
                                                                      size_bytes=4))
    root.files.add(name=act.SPEC_FILE, digest=re_pb2.Digest(hash="c" * 64, size_bytes=2))
    with pytest.raises(KataError) as err:
        admit.check_input_root(re_pb2.Digest(hash="a" * 64, size_bytes=9),
                               {"a" * 64: root, "b" * 64: loop}, dest_len=50,
                               free_bytes=1 << 40)
    assert err.value.reason == "remote.bad_action" and "contains itself" in err.value.message


@pytest.mark.parametrize("text, allowed", [("", False), ("worker:\n", False),
                                           ("worker:\n  allow_host_network: true\n", True),
                                           ("worker:\n  allow_host_network: false\n", False)])
def test_the_worker_section_of_the_host_config(tmp_path, text: str, allowed: bool) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    policy = admit.WorkerPolicy.from_host_config(load_host_config(path))
    assert policy.allow_host_network is allowed


@pytest.mark.parametrize("text, reason, where", [
    ("worker:\n  allow_host_network: yes please\n", "config.bad_value", ":2:3"),
    ("worker:\n  allow_privileged: true\n", "config.unknown_key", ":2:3"),
    ("worker: [1]\n", "config.bad_value", ":1:1"),
    ("worker: true\n", "config.bad_value", ":1:1")])
def test_a_bad_worker_section_is_an_error_at_its_place(tmp_path, text, reason, where) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(KataError) as err:
        admit.WorkerPolicy.from_host_config(load_host_config(path))
    assert err.value.reason == reason and err.value.exit_code == 2
    assert str(err.value.position) == f"{path}{where}"
    if text == "worker: true\n":  # it says what goes there and what it got (review-session)
        assert "allow_host_network" in err.value.message and "True" in err.value.message


def test_kata_worker_with_a_bad_worker_section_exits_2_before_it_starts(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("worker:\n  allow_host_network: 1\n")
    proc = subprocess.run([sys.executable, "-m", "kata", "worker", "--executor",
                           "grpc://127.0.0.1:1", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "KATA_CONFIG": str(path),
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "worker.allow_host_network must be true or false" in proc.stderr
    assert f"{path}:2:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("field, value", [("image", 5), ("image", None), ("hostname", ["a"]),
                                          ("timeout", True), ("user", 0)])
def test_a_spec_field_of_the_wrong_type_is_refused_not_a_crash(field, value) -> None:
    import json

    step = spec(network="none")
    action, command = _sent(step)
    props = admit.check_action(action, command)
    doc = json.loads(act.spec_document(step))
    doc[field] = value
    with pytest.raises(KataError) as err:
        back = act.read_spec(command, json.dumps(doc).encode(), "/w/ws", {})
        admit.check_spec(back, props, ALLOW)
    assert err.value.reason == "remote.bad_action"
