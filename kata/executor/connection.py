"""One connection to a remote executor, through ``kata.remote.cas`` (the same channel,
CAS client and bearer-token metadata the remote cache uses)."""

from __future__ import annotations

import dataclasses

from kata.remote.cas import Remote, wrap
from kata.remote.cas import connect as connect_remote
from kata.remote.config import RemoteConfig, parse_url

CALL_TIMEOUT = 60.0  # seconds per CAS call (uploads and downloads get more per byte)


def connect(url: str | RemoteConfig, instance: str = "", *, where: str) -> Remote:
    """``grpc://HOST:PORT`` (or grpcs:// with the system's roots), or a whole
    :class:`RemoteConfig` (the host config's ``remote.executor`` with its TLS files and
    token) -> a lazy connection. Calls get at least ``CALL_TIMEOUT`` seconds.

    KataError remote.bad_url (exit 2, naming ``where``) for a bad URL."""
    if isinstance(url, RemoteConfig):
        return connect_remote(dataclasses.replace(url, timeout=max(url.timeout,
                                                                   CALL_TIMEOUT)))
    target, tls = parse_url(url, where=where)
    return connect_remote(RemoteConfig(url=url, target=target, tls=tls, instance=instance,
                                       timeout=CALL_TIMEOUT))


def probe(config: RemoteConfig, timeout: float = 5.0):  # noqa: ANN201
    """The executor's ``ServerCapabilities`` (one GetCapabilities, ``timeout`` seconds), for
    ``kata doctor``. RemoteError (``remote.unavailable``, ``remote.refused``, ...) when it
    does not answer; KataError (exit 2) for an unreadable token or TLS file."""
    import grpc

    from kata.remote._api.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from kata.remote._api.build.bazel.remote.execution.v2 import (
        remote_execution_pb2_grpc as re_grpc,
    )

    remote = connect_remote(config)
    try:
        return re_grpc.CapabilitiesStub(remote.channel).GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=config.instance), timeout=timeout,
            metadata=remote.metadata)
    except grpc.RpcError as err:
        raise wrap(err, "GetCapabilities") from None
    finally:
        remote.close()



#: what BuildGrid's Bots service answers a CreateBotSession without a bot id: the service
#: is there and routes the instance, and nothing was created
_NO_BOT_ID = "id must be set"


def probe_bots(config: RemoteConfig, timeout: float = 5.0) -> str:
    """Ask the scheduler ``config`` names whether a ``kata worker`` can work for it, for
    ``kata doctor --worker-executor``: GetCapabilities for the instance (reachable, TLS,
    token, the instance known, execution enabled), then a CreateBotSession that names no
    bot (REAPI's Bots API requires one, so a scheduler refuses it, INVALID_ARGUMENT, and
    opens no session): UNIMPLEMENTED there means no Bots service. ``timeout`` seconds per
    call. Returns what it found, one line. RemoteError (``code`` the gRPC status name;
    ``remote.unsupported`` when the server does not execute) otherwise."""
    import grpc

    from kata.remote._api.google.devtools.remoteworkers.v1test2 import (
        bots_pb2, bots_pb2_grpc,
    )
    from kata.remote.cas import RemoteError

    caps = probe(config, timeout)
    if not caps.execution_capabilities.exec_enabled:
        raise RemoteError("remote.unsupported", "GetCapabilities: execEnabled is false (a "
                          "cache-only server)", code="UNIMPLEMENTED")
    remote = connect_remote(config)
    try:
        bots_pb2_grpc.BotsStub(remote.channel).CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=config.instance,
                                             bot_session=bots_pb2.BotSession()),
            timeout=timeout, metadata=remote.metadata)
    except grpc.RpcError as err:
        code, detail = err.code(), err.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.INVALID_ARGUMENT and _NO_BOT_ID in detail:
            return "Bots service present, execution enabled"
        if code == grpc.StatusCode.INVALID_ARGUMENT and "instance" not in detail.lower():
            return "Bots service present (it refused a session without a bot id)"
        raise wrap(err, "CreateBotSession") from None
    finally:
        remote.close()
    return "Bots service present"  # it opened a session for no bot: it expires unused
