"""Where the remote cache is, as the user wrote it: ``--remote-cache``/``--remote-instance``
or the ``remote:`` section of the host config (``/etc/kata/config.yaml``)::

    remote:
      cache: grpcs://cache.example.com:443   # grpc:// (plaintext) or grpcs:// (TLS)
      executor: grpcs://exec.example.com:443 # steps run there (kata run --remote-executor)
      logstream: grpc://exec.example.com:50052 # live output of remote steps (default: executor)
      instance: main                         # the REAPI instance name ("" by default)
      tls:
        ca: /etc/kata/remote-ca.pem          # roots to verify the server (default: system)
        cert: /etc/kata/client.pem           # client certificate for mutual TLS (with key)
        key: /etc/kata/client.key
      token_file: /etc/kata/remote.token     # sent as "authorization: Bearer <token>"
      timeout: 10s                           # per call; a slower remote is left for the run
      connect_timeout: 2s                    # the run's first call (Capabilities); default 2s
      backoff: 1m                            # after a remote that timed out, later runs skip
                                             #   it this long (0s: ask it every run)

The executor, when named, uses the same instance, TLS files, token and timeout (one
REAPI server usually serves both; ``from_host_config(..., key="executor")``).
The flags win over the file. Nothing here touches the network: :func:`parse_url` and
:func:`from_host_config` only read and validate (the named token and TLS files are read
too; errors are KataError, exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kata.errors import KataError

if TYPE_CHECKING:
    from kata.hostconfig import HostConfig

_HEADER_SAFE = re.compile(rb"[\x21-\x7e]+")  # one token: visible ASCII
KEYS = frozenset({"backoff", "cache", "connect_timeout", "executor", "instance", "logstream",
                  "tls", "token_file", "timeout"})
TLS_KEYS = frozenset({"ca", "cert", "key"})
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 2.0  # a Capabilities answer takes ~1 ms on a LAN, a few RTTs on a WAN
DEFAULT_BACKOFF = 60.0
_URL = re.compile(r"^(grpcs?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})/?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteConfig:
    """A remote cache endpoint.

    ``target``: ``host:port`` for gRPC; ``tls``: grpcs; ``instance``: the REAPI instance
    name; ``ca``/``cert``/``key``: PEM files (paths); ``token_file``: a file holding a bearer
    token; ``timeout``: seconds per call (uploads and downloads get more per byte);
    ``logstream``: for an executor, the URL of the LogStream service its log streams are
    read from (None: the executor itself); ``connect_timeout``: seconds the remote cache's
    first call of a run (GetCapabilities) may take (a remote that accepts connections but
    never answers costs this, not ``timeout``; an executor's first call gets at least
    ``kata.executor.client.FIRST_CONTACT_ANSWER``); ``backoff``: seconds later runs leave a
    remote cache alone after it timed out (0: no back-off; ``kata.remote.backoff``).
    """

    url: str
    target: str
    tls: bool = False
    instance: str = ""
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    logstream: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    backoff: float = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        assert self.timeout > 0 and self.connect_timeout > 0 and self.backoff >= 0
        assert (self.cert is None) == (self.key is None)


def parse_url(url: str, *, where: str = "--remote-cache") -> tuple[str, bool]:
    """``grpc://HOST:PORT`` or ``grpcs://HOST:PORT`` -> (``HOST:PORT``, tls).

    KataError remote.bad_url (exit 2) for anything else."""
    m = _URL.match(url.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        scheme, sep, rest = url.strip().partition("://")
        hint = ""
        if sep and scheme.lower() in ("http", "https") and rest:
            # bgd's own --remote takes http(s)://: the same server is grpc(s):// here
            hint = f" (write {'grpcs' if scheme.lower() == 'https' else 'grpc'}://{rest})"
        raise KataError("remote.bad_url", f"{where}: {url!r} is not grpc://HOST:PORT or "
                        f"grpcs://HOST:PORT{hint}", obj=url)
    return f"{m.group(2)}:{int(m.group(3))}", m.group(1) == "grpcs"


def load_remote_config(url: str | None = None, instance: str | None = None, *,
                       key: str = "cache") -> RemoteConfig | None:
    """The remote cache (``key="executor"``: the remote executor) for this run: the flags
    over the host config (``$KATA_CONFIG`` or /etc/kata/config.yaml); None when neither
    names one."""
    from kata.hostconfig import load_host_config

    return from_host_config(load_host_config(), url=url, instance=instance, key=key)


def from_host_config(config: "HostConfig", *, url: str | None = None,
                     instance: str | None = None, key: str = "cache") -> RemoteConfig | None:
    """The remote the flags (``url``, ``instance``) and the host config's ``remote:`` name
    under ``key`` (``cache`` or ``executor``), or None when neither names one.

    KataError (exit 2, at the key's file:line:column): config.unknown_key, config.bad_value,
    remote.bad_url, remote.token_unreadable / remote.tls_unreadable (a named file is
    missing, unreadable, empty, or holds no PEM block)."""
    assert key in ("cache", "executor")
    which = key  # `key` names the TLS key file below
    flag = "--remote-cache" if key == "cache" else "--remote-executor"
    from kata.model import Duration

    raw = config.section("remote")
    if raw is not None and not isinstance(raw, dict):
        raise config.error("config.bad_value", f"remote must be a mapping (cache:, executor:, "
                           f"instance:…: docs/config.md), not {type(raw).__name__} {raw!r}",
                           "remote")
    raw = raw or {}
    for k in raw:
        if k not in KEYS:
            raise config.error("config.unknown_key", f"unknown key {k!r} in remote (expected "
                               f"one of {', '.join(sorted(KEYS))})", "remote", k)
    file_url = raw.get(key)
    if url is None and file_url is None:
        return None
    if url is not None:
        target, tls = parse_url(url, where=flag)
    else:
        if not isinstance(file_url, str):
            raise config.error("config.bad_value", f"remote.{key} must be a string "
                               "(grpc://HOST:PORT or grpcs://HOST:PORT)", "remote", key)
        try:
            target, tls = parse_url(file_url, where=f"remote.{key}")
        except KataError as err:
            raise config.error(err.reason, err.message, "remote", key) from None
    name = instance if instance is not None else raw.get("instance", "")
    if not isinstance(name, str):
        raise config.error("config.bad_value", "remote.instance must be a string",
                           "remote", "instance")

    def path(value: object, *at: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise config.error("config.bad_value", f"{'.'.join(('remote',) + at)} must be a "
                               "file path", "remote", *at)
        return Path(value)

    def readable(value: Path | None, *at: str) -> Path | None:
        """The file a key names, read now: one that cannot serve (missing, unreadable, a
        token file that is empty, a TLS file that holds no PEM block) is an error at the
        key, before anything connects (grpc would only log it, on every call)."""
        if value is None:
            return None
        where = ".".join(("remote",) + at)
        token = at == ("token_file",)
        reason = "remote.token_unreadable" if token else "remote.tls_unreadable"
        try:
            with open(value, "rb") as f:
                data = f.read(1 << 20)
        except OSError as err:
            what = ("write the bearer token there (one line) or remove the key" if token
                    else "give the PEM file's path or remove the key")
            raise config.error(reason, f"{where}: cannot read {value}: {err.strerror or err} "
                               f"({what})", "remote", *at) from None
        if token and not data.strip():
            raise config.error(reason, f"{where}: {value} is empty (write the bearer token "
                               "in it)", "remote", *at)
        if token and not _HEADER_SAFE.fullmatch(data.strip()):
            # it travels as an HTTP/2 header value: anything else is a UnicodeDecodeError
            # or gRPC core's own log line on every call, never a clear refusal
            raise config.error("remote.bad_token", f"{where}: the token in {value} must be "
                               "one line of printable ASCII without blanks (a bearer token, "
                               "e.g. a JWT)", "remote", *at)
        if not token and b"-----BEGIN " not in data:
            raise config.error(reason, f"{where}: {value} holds no PEM block (-----BEGIN "
                               "...-----): give a PEM certificate or key", "remote", *at)
        if at in (("tls", "ca"), ("tls", "cert")) and b"-----BEGIN CERTIFICATE-----" not in data:
            # gRPC would take it and fail every handshake with "Failed to create security
            # handshaker", which reads like a server that is down
            whose = ("the CA certificate that signed the server's (for a self-signed "
                     "server, its own certificate)" if at[1] == "ca" else
                     "this host's client certificate")
            raise config.error(reason, f"{where}: {value} holds no certificate (-----BEGIN "
                               f"CERTIFICATE-----): give {whose}, not a key", "remote", *at)
        if at == ("tls", "key") and not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
            raise config.error(reason, f"{where}: {value} holds no private key (-----BEGIN "
                               "PRIVATE KEY-----): give the key of remote.tls.cert", "remote",
                               *at)
        return Path(value)

    tls_raw = raw.get("tls")
    if tls_raw is not None and not isinstance(tls_raw, dict):
        raise config.error("config.bad_value", "remote.tls must be a mapping", "remote", "tls")
    tls_raw = tls_raw or {}
    for k in tls_raw:
        if k not in TLS_KEYS:
            raise config.error("config.unknown_key", f"unknown key {k!r} in remote.tls "
                               f"(expected one of {', '.join(sorted(TLS_KEYS))})",
                               "remote", "tls", k)
    ca = path(tls_raw.get("ca"), "tls", "ca")
    cert = path(tls_raw.get("cert"), "tls", "cert")
    key = path(tls_raw.get("key"), "tls", "key")
    if (cert is None) != (key is None):
        raise config.error("config.bad_value", "remote.tls: cert and key go together "
                           "(mutual TLS needs both)", "remote", "tls")
    if tls_raw and not tls and url is None:  # a grpc:// flag just does not use them
        raise config.error("config.bad_value", "remote.tls is set but the remote is grpc:// "
                           "(use grpcs:// for TLS)", "remote", "tls")
    def duration(name: str, default: float, *, zero: bool = False) -> float:
        if raw.get(name) is None:
            return default
        try:
            seconds = Duration.parse(str(raw[name])).seconds
        except (KataError, ValueError) as err:
            raise config.error("config.bad_value", f"remote.{name}: {err}", "remote",
                               name) from None
        if seconds < 0 or (seconds == 0 and not zero):
            raise config.error("config.bad_value", f"remote.{name} must be "
                               f"{'0 or more' if zero else 'more than 0'} (a duration such "
                               "as 2s or 1m)", "remote", name)
        return seconds

    timeout = duration("timeout", DEFAULT_TIMEOUT)
    connect_timeout = duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    backoff = duration("backoff", DEFAULT_BACKOFF, zero=True)
    logstream = raw.get("logstream")
    if logstream is not None:
        if not isinstance(logstream, str):
            raise config.error("config.bad_value", "remote.logstream must be a string "
                               "(grpc://HOST:PORT or grpcs://HOST:PORT)", "remote", "logstream")
        try:
            parse_url(logstream, where="remote.logstream")
        except KataError as err:
            raise config.error(err.reason, err.message, "remote", "logstream") from None
    token_file = readable(path(raw.get("token_file"), "token_file"), "token_file")
    if tls:  # a grpc:// flag over a grpcs:// file does not use them
        for value, at in ((ca, "ca"), (cert, "cert"), (key, "key")):
            readable(value, "tls", at)
    return RemoteConfig(url=url if url is not None else file_url, target=target, tls=tls,
                        instance=name, ca=ca, cert=cert, key=key,
                        token_file=token_file, timeout=timeout,
                        logstream=logstream if which == "executor" else None,
                        connect_timeout=connect_timeout, backoff=backoff)
