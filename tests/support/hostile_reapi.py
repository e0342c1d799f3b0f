"""A hostile REAPI client: it sends whatever Action, Command and input root it is given
straight to a scheduler's Execution service, the way anyone who can reach the scheduler
can, with none of ``kata run``'s checks. The blobs are sent as they are (even ones
``kata.executor.action`` would never write), so a test can ask what a `kata worker` does
with them.

    client = HostileClient(bg.url)
    good = client.kata_action(image)                # what kata would send: a Draft
    good.spec["network"] = "host"                   # then make it hostile
    outcome = client.execute(good)                  # Outcome(code, message, result)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grpc

from kata.executor import action as act
from kata.executor.files import digest_of, message_bytes
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import (
    remote_execution_pb2_grpc as re_grpc,
)


def props(**kw: str) -> list[tuple[str, str]]:
    """Platform properties as (name, value) pairs, in the order given."""
    return [(k.replace("_", "-"), v) for k, v in kw.items()]


@dataclass
class Draft:
    """An action under construction: every part can be made hostile before ``execute``.

    ``root`` is the input root as nested dicts: name -> bytes (a file), dict (a
    directory), ``("link", target)`` (a symlink), ``("dir", Directory)`` (a Directory
    message as is) or ``("file", Digest)`` (a file node naming any digest); ``spec`` is
    kata-spec.json as a dict (``spec_bytes`` wins when set)."""

    argv: list[str]
    env: list[tuple[str, str]]
    platform: list[tuple[str, str]]
    spec: dict
    root: dict
    command_platform: list[tuple[str, str]] | None = None  # None: the same as platform
    working_directory: str = act.WORKSPACE_DIR
    output_paths: list[str] = field(default_factory=lambda: [
        act.WORKSPACE_DIR, act.SERVICES_DIR, act.SPECIAL_FILE, act.ERROR_FILE])
    spec_bytes: bytes | None = None
    extra_blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """How the execution ended: the status code (0: ran) and message, and the result."""

    code: int
    message: str
    result: re_pb2.ActionResult | None


class HostileClient:
    def __init__(self, url: str, instance: str = "") -> None:
        self.instance = instance
        self.channel = grpc.insecure_channel(url.removeprefix("grpc://"))
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.execution = re_grpc.ExecutionStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def kata_action(image: str, command: str = "echo hi") -> Draft:
        """What ``kata run`` would send for a step ``command`` on ``image``
        (``NAME@sha256:…``) with default settings."""
        spec = {"version": 1, "image": image, "workdir": "/src", "user": "0:0",
                "hostname": "kata", "network": "none", "timeout": 60,
                "resources": {"memory": None, "cpus": None, "pids": None}, "services": []}
        return Draft(argv=["/bin/sh", "-c", command], env=[("HOME", "/root")],
                     platform=props(ISA=act.ISA, OSFamily=act.OS_FAMILY,
                                    container_image=f"docker://{image}", network="none"),
                     spec=spec, root={act.WORKSPACE_DIR: {"in.txt": b"input\n"}})

    def execute(self, draft: Draft, timeout: float = 120) -> Outcome:
        """Upload the draft's blobs as they are and Execute it (skip_cache_lookup); wait
        for the operation to end."""
        blobs: dict[str, bytes] = dict(draft.extra_blobs)

        def put(data: bytes) -> re_pb2.Digest:
            d = digest_of(data)
            blobs[d.hash] = data
            return d

        def pack(tree: dict) -> re_pb2.Digest:
            directory = re_pb2.Directory()
            for name, node in tree.items():  # in the order given: a test may unsort them
                if isinstance(node, bytes):
                    directory.files.add(name=name, digest=put(node))
                elif isinstance(node, dict):
                    directory.directories.add(name=name, digest=pack(node))
                elif node[0] == "link":
                    directory.symlinks.add(name=name, target=node[1])
                elif node[0] == "dir":
                    directory.directories.add(name=name, digest=node[1])
                else:
                    directory.files.add(name=name, digest=node[1])
            return put(message_bytes(directory))

        spec = draft.spec_bytes if draft.spec_bytes is not None else json.dumps(
            draft.spec, sort_keys=True).encode()
        root_digest = pack(dict(sorted({act.SPEC_FILE: spec, **draft.root}.items())))

        def platform(pairs: list[tuple[str, str]]) -> re_pb2.Platform:
            return re_pb2.Platform(properties=[re_pb2.Platform.Property(name=k, value=v)
                                               for k, v in pairs])

        command = re_pb2.Command(
            arguments=draft.argv,
            environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=v)
                                   for k, v in draft.env],
            output_paths=draft.output_paths, working_directory=draft.working_directory,
            platform=platform(draft.platform if draft.command_platform is None
                              else draft.command_platform))
        action = re_pb2.Action(command_digest=put(message_bytes(command)),
                               input_root_digest=root_digest, do_not_cache=True)
        if draft.platform:
            action.platform.CopyFrom(platform(draft.platform))
        action_digest = put(message_bytes(action))
        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance)
        for data in blobs.values():
            request.requests.add(digest=digest_of(data), data=data)
        self.cas.BatchUpdateBlobs(request, timeout=30)
        try:
            for op in self.execution.Execute(re_pb2.ExecuteRequest(
                    instance_name=self.instance, action_digest=action_digest,
                    skip_cache_lookup=True), timeout=timeout):
                if not op.done:
                    continue
                if op.HasField("error") and op.error.code:
                    return Outcome(op.error.code, op.error.message, None)
                response = re_pb2.ExecuteResponse()
                op.response.Unpack(response)
                return Outcome(response.status.code, response.status.message,
                               response.result if response.HasField("result") else None)
        except grpc.RpcError as err:  # the scheduler itself refused it
            return Outcome(err.code().value[0], f"scheduler: {err.details()}", None)
        raise AssertionError("the operation stream ended without a result")

    def read(self, digest: re_pb2.Digest) -> bytes:
        got = self.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
            instance_name=self.instance, digests=[digest]), timeout=30)
        return got.responses[0].data
