"""One connection to a remote executor, through ``kata.remote.cas`` (the same channel,
CAS client and bearer-token metadata the remote cache uses)."""

from __future__ import annotations

import dataclasses

from kata.remote.cas import Remote
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
