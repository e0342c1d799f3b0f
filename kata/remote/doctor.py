"""`kata doctor`'s look at a configured remote cache (``remote.cache``).

One GetCapabilities call (REAPI's ``Capabilities`` service): is it reachable, does it know
the instance name, does it hash with SHA-256, does its action cache accept updates. A
remote cache is never a prerequisite of running steps (one that is down degrades to the
local store), so an unreachable or read-only one is ``warn``; a setting Kata cannot use at
all (a token or TLS file it cannot read) is ``fail``. The remote executor has its own
check (``kata.doctor.check_remote_executor``): a run needs that one to answer.
"""

from __future__ import annotations

import grpc

from kata.doctor import Check, remote_fix
from kata.errors import KataError
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
from kata.remote.cas import open_channel, read_token
from kata.remote.config import RemoteConfig

_TIMEOUT = 5.0  # seconds for the one call (doctor should answer quickly)


def check_remote(config: RemoteConfig) -> Check:
    """``remote-cache``: ask ``config``'s server for its capabilities. Names the URL and
    instance in ``detail``."""
    name = "remote-cache"
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
        fix = remote_fix(code.name, detail, server="server", timeout=min(config.timeout, _TIMEOUT),
                         start="start the server or correct the URL; runs go on with the "
                               "local store meanwhile (one warning each)",
                         hung="runs wait remote.connect_timeout for it, then go on with the "
                              "local store (one warning each)")
        return Check(name=name, status="warn", detail=detail, fix=fix)
    functions = set(caps.cache_capabilities.digest_functions)
    if functions and re_pb2.DigestFunction.SHA256 not in functions:
        return Check(name=name, status="warn", detail=f"{where}: the server does not hash "
                     "with SHA-256", fix="configure the server for SHA-256 digests")
    api = f"REAPI {caps.high_api_version.major}.{caps.high_api_version.minor}"
    if not caps.cache_capabilities.action_cache_update_capabilities.update_enabled:
        return Check(name=name, status="warn", detail=f"{where}: {api}, but its action cache "
                     "takes no updates (results built here are not shared)",
                     fix="allow updates in the server's action cache (BuildGrid: "
                         "allow-updates: true)")
    return Check(name=name, status="ok", detail=f"{where}: {api}, action cache updates "
                 "enabled")
