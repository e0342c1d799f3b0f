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

