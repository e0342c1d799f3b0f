"""`kata doctor`'s look at a configured ``remote:`` (the host config or the flags).

One GetCapabilities call per remote (REAPI's ``Capabilities`` service): is it reachable,
does it know the instance name, does it hash with SHA-256, and is what Kata will use
enabled there (the action cache accepting updates for ``cache``; ``exec_enabled`` for
``executor``). A remote is never a prerequisite of running steps (a cache that is down
degrades to the local store), so an unreachable or disabled one is ``warn``; a setting
Kata cannot use at all (a token or TLS file it cannot read, a bad URL) is ``fail``.
"""

from __future__ import annotations

import grpc

from kata.doctor import Check
from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from kata.remote.cas import open_channel, read_token
from kata.remote.config import RemoteConfig, load_remote_config

_TIMEOUT = 5.0  # seconds for the one call (doctor should answer quickly)


def remote_checks() -> list[Check]:
    """A Check per remote the host config names (``remote.cache``, ``remote.executor``);
    none when it names none. A ``remote:`` section Kata cannot read is one ``fail``."""
    out = []
    for role in ("cache", "executor"):
        try:
            config = load_remote_config(key=role)
        except KataError as err:
            return [Check(name="remote", status="fail", detail=err.message,
                          fix="correct the remote: section of the host config "
                              "(docs/remote.md)")]
        if config is not None:
            out.append(check_remote(config, role=role))
    return out


def check_remote(config: RemoteConfig, *, role: str) -> Check:
    """Ask ``config``'s server for its capabilities; ``role``: ``cache`` or ``executor``
    (what must be enabled there). Names the URL and instance in ``detail``."""
    assert role in ("cache", "executor")
    name = f"remote-{role}"
    where = f"{config.url}" + (f" (instance {config.instance!r})" if config.instance else "")
    try:
        token = read_token(config)
        channel = open_channel(config)
    except KataError as err:
        return Check(name=name, status="fail", detail=f"{where}: {err.message}",
                     fix="make the file readable or correct remote: in the host config")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        with channel:
            caps = re_grpc.CapabilitiesStub(channel).GetCapabilities(
                re_pb2.GetCapabilitiesRequest(instance_name=config.instance),
                timeout=min(config.timeout, _TIMEOUT), metadata=metadata)
    except grpc.RpcError as err:
        code = err.code()
        detail = f"{where}: GetCapabilities: {code.name}: {err.details() or ''}".rstrip(": ")
        if code == grpc.StatusCode.INVALID_ARGUMENT or code == grpc.StatusCode.NOT_FOUND:
            fix = "the server does not know this instance name: set remote.instance " \
                  "(or --remote-instance) to one it serves"
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            fix = "the server refused the credentials: check remote.token_file and remote.tls"
        else:
            fix = "start the server or correct the URL; runs go on with the local store " \
                  "meanwhile (one warning each)"
        return Check(name=name, status="warn", detail=detail, fix=fix)
    functions = set(caps.cache_capabilities.digest_functions)
    if functions and re_pb2.DigestFunction.SHA256 not in functions:
        return Check(name=name, status="warn", detail=f"{where}: the server does not hash "
                     "with SHA-256", fix="configure the server for SHA-256 digests")
    api = f"REAPI {caps.high_api_version.major}.{caps.high_api_version.minor}"
    if role == "cache" and not caps.cache_capabilities.action_cache_update_capabilities.update_enabled:
        return Check(name=name, status="warn", detail=f"{where}: {api}, but its action cache "
                     "takes no updates (results built here are not shared)",
                     fix="allow updates in the server's action cache (BuildGrid: "
                         "allow-updates: true)")
    if role == "executor" and not caps.execution_capabilities.exec_enabled:
        return Check(name=name, status="warn", detail=f"{where}: {api}, but it does not "
                     "execute (execEnabled is false)",
                     fix="enable the Execution service and a scheduler on the server, or "
                         "remove remote.executor (docs/remote.md)")
    enabled = "action cache updates enabled" if role == "cache" else "execution enabled"
    return Check(name=name, status="ok", detail=f"{where}: {api}, {enabled}")
