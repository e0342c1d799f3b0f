"""One connection to a remote executor, through ``kata.remote.cas`` (the same channel,
CAS client and bearer-token metadata the remote cache uses)."""

from __future__ import annotations

from kata.remote.cas import Remote
from kata.remote.cas import connect as connect_remote
from kata.remote.config import RemoteConfig, parse_url

CALL_TIMEOUT = 60.0  # seconds per CAS call (uploads and downloads get more per byte)


def connect(url: str, instance: str = "", *, where: str) -> Remote:
    """``grpc://HOST:PORT`` (or grpcs:// with the system's roots) -> a lazy connection.

    KataError remote.bad_url (exit 2, naming ``where``) for anything else."""
    target, tls = parse_url(url, where=where)
    return connect_remote(RemoteConfig(url=url, target=target, tls=tls, instance=instance,
                                       timeout=CALL_TIMEOUT))
