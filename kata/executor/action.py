"""A step's container spec as an REAPI ``Action`` and back (both ends of remote execution).

The input root of a remote step (``Command.working_directory`` is ``ws``)::

    ws/               the step's workspace: its inputs and its dependencies' artifacts,
                      bind-mounted at the step's workdir (``StepSpec.workdir``)
    kata-spec.json    what the container needs beyond the Command (``SPEC_FILE``)

``kata-spec.json`` (sorted keys, UTF-8)::

    {"version": 1, "image": "NAME@sha256:…", "workdir": "/src", "user": "0:0",
     "hostname": "kata", "network": "none|default|host", "timeout": seconds | null,
     "resources": {"memory": bytes|null, "cpus": float|null, "pids": int|null},
     "services": [{"name", "image", "argv", "env", "workdir", "user",
                   "ready": {"kind", "target", "timeout", "interval"} | null,
                   "resources": {…}}]}

Version 2 (``SPEC_VERSION``) adds ``"cache_paths": ["node_modules/", …]``: the restored
``cache.paths`` the worker gives the step's user before it starts, as the realiser does
locally (``StepSpec.cache_paths``). It is written only for a step that has some; every
other step keeps version 1, so a worker that predates it still runs those, and refuses
(``remote.bad_action``) only the ones it would run wrong.

The ``Command`` carries the argv and the environment (sorted by name, as REAPI asks),
``output_paths`` = ``["ws", "kata-services", "kata-special"]`` (the whole workspace comes
back, one log file per service under ``kata-services/``, and, when the step left any, the
workspace paths of its FIFOs, sockets and devices, NUL-separated, which no REAPI tree can
hold: the client makes a FIFO at each so that its `artifacts:` see what they would see
locally), and the platform properties a scheduler
matches and a worker reads (REAPI's ``Platform``, sorted by name):

    OSFamily=linux  ISA=x86-64  container-image=docker://NAME@sha256:…
    network=none|default|host   and, when set: memory=BYTES  cpus=N  pids=N

BuildGrid must list every non-standard key among its scheduler's ``wildcard-property-
keys`` (docs/remote.md). The ``Action`` sets ``do_not_cache``: whether a result is
reused is Kata's decision (its store and the remote cache), never the executor's.
No secret is ever part of an Action: steps with secrets run locally (SECURITY.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.resources import Resources, effective
from kata.runtimes.base import Mount, Readiness, ServiceSpec, StepSpec

from .files import digest_of, key, message_bytes

SPEC_FILE = "kata-spec.json"
SPEC_VERSION = 2
SPEC_VERSIONS = (1, 2)  # what read_spec takes
WORKSPACE_DIR = "ws"
SERVICES_DIR = "kata-services"
SPECIAL_FILE = "kata-special"  # the workspace's FIFOs, sockets, devices (NUL-separated paths)
# why the step could not run to an exit status on the worker, as the local runtime would
# have raised it (a service that exited or never became ready, a user the image refuses,
# an image the worker cannot pull):
# JSON {"reason": "service.not_ready", "message": "…", "object": "db" | null,
# "exit_code": 1 | 2} (``error_document``)
ERROR_FILE = "kata-error"
OS_FAMILY = "linux"
ISA = "x86-64"
#: the non-standard platform keys Kata sets (a BuildGrid config lists them as wildcards)
WILDCARD_KEYS = ("container-image", "network", "memory", "cpus", "pids")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteAction:
    """An action ready to send: its digest, and the blobs (key -> bytes) that name it:
    the ``Action``, the ``Command`` and the spec file (the input root is packed apart)."""

    digest: re_pb2.Digest
    blobs: dict[str, bytes]


def _resources(r: Resources) -> dict[str, Any]:
    return {"memory": r.memory, "cpus": r.cpus, "pids": r.pids}


def _service(s: ServiceSpec) -> dict[str, Any]:
    ready = None
    if s.ready is not None:
        ready = {"kind": s.ready.kind, "target": s.ready.target, "timeout": s.ready.timeout,
                 "interval": s.ready.interval}
    return {"name": s.name, "image": s.image, "argv": list(s.argv), "env": dict(s.env),
            "workdir": s.workdir, "user": s.user, "ready": ready,
            "resources": _resources(s.resources)}


def spec_document(spec: StepSpec) -> bytes:
    """The ``kata-spec.json`` bytes of a step (mounts and labels excluded: the workspace is
    the input root, and labels name the client's run)."""
    doc = {"version": 1, "image": spec.image, "workdir": spec.workdir,
           "user": spec.user, "hostname": spec.hostname, "network": spec.network,
           "timeout": spec.timeout, "resources": _resources(spec.resources),
           "services": [_service(s) for s in spec.services]}
    if spec.cache_paths:
        doc.update(version=SPEC_VERSION, cache_paths=list(spec.cache_paths))
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def remote_image(image: str) -> str:
    """``docker://NAME@sha256:…`` for a pinned reference; ``remote.image_unnamed`` for a
    bare digest (an image only this host has, which no worker could pull)."""
    if image.startswith("sha256:"):
        raise KataError("remote.image_unnamed", f"image {image} has no name a worker could "
                        "pull it by", obj=image, exit_code=1)
    return f"docker://{image}"


def platform(spec: StepSpec) -> re_pb2.Platform:
    """The platform properties of a step, sorted by name."""
    props = {"OSFamily": OS_FAMILY, "ISA": ISA, "container-image": remote_image(spec.image),
             "network": spec.network}
    r = spec.resources
    if r.memory is not None:
        props["memory"] = str(r.memory)
    if r.cpus is not None:
        props["cpus"] = f"{r.cpus:g}"
    if r.pids is not None:
        props["pids"] = str(r.pids)
    return re_pb2.Platform(properties=[re_pb2.Platform.Property(name=k, value=v)
                                       for k, v in sorted(props.items())])


def build_action(spec: StepSpec, input_root: re_pb2.Digest) -> RemoteAction:
    """The ``Action`` (and its ``Command``) that runs ``spec`` on ``input_root``."""
    command = re_pb2.Command(
        arguments=list(spec.argv),
        environment_variables=[re_pb2.Command.EnvironmentVariable(name=k, value=v)
                               for k, v in sorted(spec.env.items())],
        output_paths=[WORKSPACE_DIR, SERVICES_DIR, SPECIAL_FILE, ERROR_FILE],
        output_directories=[WORKSPACE_DIR, SERVICES_DIR],  # for v2.0 servers
        output_files=[SPECIAL_FILE, ERROR_FILE],
        working_directory=WORKSPACE_DIR,
        platform=platform(spec),
    )
    command_bytes = message_bytes(command)
    command_digest = digest_of(command_bytes)
    action = re_pb2.Action(command_digest=command_digest, input_root_digest=input_root,
                           do_not_cache=True, platform=command.platform)
    if spec.timeout is not None:
        action.timeout.CopyFrom(duration_pb2.Duration(seconds=int(spec.timeout) + 1))
    action_bytes = message_bytes(action)
    digest = digest_of(action_bytes)
    return RemoteAction(digest=digest, blobs={key(command_digest): command_bytes,
                                               key(digest): action_bytes})


def _res(doc: dict[str, Any] | None) -> Resources:
    doc = doc or {}
    return Resources(memory=doc.get("memory"), cpus=doc.get("cpus"), pids=doc.get("pids"))


def read_spec(command: re_pb2.Command, spec_bytes: bytes, workspace: str,
              labels: dict[str, str]) -> StepSpec:
    """The ``StepSpec`` a worker runs: ``command``'s argv and env, ``kata-spec.json``'s
    container settings, the materialised ``workspace`` bind-mounted at the workdir.

    ``KataError("remote.bad_action")`` for an action Kata did not make."""
    try:
        doc = json.loads(spec_bytes)
        if doc.get("version") not in SPEC_VERSIONS:
            raise ValueError(f"spec version {doc.get('version')!r}, not one of "
                             f"{', '.join(map(str, SPEC_VERSIONS))}")
        cache_paths = tuple(doc.get("cache_paths", ()))
        if not all(isinstance(p, str) and p and not p.startswith("/")
                   and ".." not in p.split("/") for p in cache_paths):
            raise ValueError(f"cache_paths {list(cache_paths)!r} leave the workspace")
        services = []
        for s in doc.get("services", []):
            ready = s.get("ready")
            services.append(ServiceSpec(
                name=s["name"], image=s["image"], argv=tuple(s["argv"]), env=dict(s["env"]),
                workdir=s["workdir"], user=s["user"], resources=_res(s.get("resources")),
                ready=Readiness(**ready) if ready else None))
        return StepSpec(
            image=doc["image"], argv=tuple(command.arguments),
            env={e.name: e.value for e in command.environment_variables},
            workdir=doc["workdir"], user=doc["user"], hostname=doc["hostname"],
            network=doc["network"], timeout=doc["timeout"],
            resources=_res(doc.get("resources")), services=tuple(services),
            cache_paths=cache_paths,
            mounts=(Mount(kind="bind", target=doc["workdir"], source=workspace),),
            labels=labels)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise KataError("remote.bad_action", f"not an action kata made: {err}",
                        exit_code=1) from err


_REASON = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+")


def error_document(err: KataError) -> bytes:
    """The ``kata-error`` file of a step the worker's runtime refused to run on (``err``)."""
    return json.dumps({"reason": err.reason, "message": err.message, "object": err.obj,
                       "exit_code": err.exit_code}, sort_keys=True,
                      separators=(",", ":")).encode()


def read_error(data: bytes) -> KataError:
    """The KataError a ``kata-error`` file names, to raise as the local runtime would have;
    ``remote.bad_answer`` for one Kata did not write."""
    try:
        doc = json.loads(data)
        reason, message = doc["reason"], doc["message"]
        obj, code = doc.get("object"), doc.get("exit_code", 1)
        if not (isinstance(reason, str) and _REASON.fullmatch(reason)
                and isinstance(message, str) and isinstance(obj, (str, type(None)))
                and code in (1, 2)):
            raise ValueError(doc)
    except (ValueError, KeyError, TypeError) as err:
        raise KataError("remote.bad_answer", f"the worker's {ERROR_FILE} is not one kata "
                        f"wrote: {data[:200]!r}", exit_code=1) from err
    return KataError(reason, message, obj=obj, exit_code=code)


LIMITS_KEY = "kata.limits"  # the Struct in ExecutedActionMetadata.auxiliary_metadata


def add_applied_limits(meta: re_pb2.ExecutedActionMetadata, spec: StepSpec) -> None:
    """Say in ``meta`` (REAPI's ``auxiliary_metadata``, worker-specific details) the limits
    the worker applied to ``spec``: a ``google.protobuf.Struct`` ``{"kata.limits":
    {"memory": bytes, "cpus": float, "pids": int}}``, its host defaults filling what the
    step left out (``kata.resources.effective``), so the client words an out-of-memory
    kill with the worker's limit, not its own host's default."""
    applied = effective(spec.resources)
    limits = struct_pb2.Struct()
    limits.update({LIMITS_KEY: {"memory": applied.memory, "cpus": applied.cpus,
                                "pids": applied.pids}})
    meta.auxiliary_metadata.add().Pack(limits)


def applied_memory(meta: re_pb2.ExecutedActionMetadata) -> int | None:
    """The memory limit (bytes) a worker said it applied (``add_applied_limits``); None
    from a worker that says nothing of it."""
    for item in meta.auxiliary_metadata:
        limits = struct_pb2.Struct()
        if item.Is(struct_pb2.Struct.DESCRIPTOR) and item.Unpack(limits) \
                and LIMITS_KEY in limits.fields:
            said = limits.fields[LIMITS_KEY].struct_value.fields.get("memory")
            memory = said.number_value if said is not None else 0.0
            if memory.is_integer() and memory > 0:
                return int(memory)
    return None
