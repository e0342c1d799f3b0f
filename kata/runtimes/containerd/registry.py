"""A small client of the OCI distribution API (pull only), with httpx.

Anonymous and bearer-token auth (the WWW-Authenticate challenge), basic auth,
credentials from ~/.docker/config.json (its credential helpers too), mirrors and plain-http registries from
kata's config. Manifests are checked against the digest they were asked by;
blobs are checked while they stream into containerd (images.write_blob).

A *confined* client (the pulls of an untrusted run, whose ``.kata-ci.yaml`` names the
images) connects only to public addresses: every connection it opens (the registry, a
redirect's target, a token realm) is resolved first and refused when any address it
resolves to is loopback, private, link-local, shared, reserved or multicast, unless its
host is one the administrator declared under ``registries:`` (a registry or a mirror).
The check is made on the address actually connected to, so a name that resolves to a
public address once and to 127.0.0.1 the next time (DNS rebinding) is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx

from kata.errors import KataError
from kata.model import ImageRef

from .config import RuntimeConfig
from .images import Descriptor
from .pulls import PullStop

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
MAX_MANIFEST = 4 << 20
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def _is_local(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is a public unicast address (RFC 6890's
    globally reachable, not multicast); an IPv4-mapped IPv6 address is judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def declared_hosts(config: RuntimeConfig) -> frozenset[str]:
    """``host`` and ``host:port`` names the administrator declared: every key of
    ``registries:`` and the host of each of their mirrors."""
    names: set[str] = set()
    for name, reg in config.registries.items():
        names.add(name)
        for mirror in reg.mirrors:
            url = httpx.URL(mirror)
            names.add(f"{url.host}:{url.port}" if url.port else url.host)
    return frozenset(names)


class ConfinedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to public addresses (or declared hosts).

    KataError image.refused (exit 2) names the host, what it resolved to, and the fix.
    """

    def __init__(self, declared: frozenset[str]) -> None:
        self.declared = declared

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:  # noqa: ANN001
        if host in self.declared or f"{host}:{port}" in self.declared:
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise httpcore.ConnectError(f"{host}: {err}") from None
        addresses = [info[4][0] for info in infos]
        private = [a for a in addresses if not _public(a)]
        if private or not addresses:
            raise KataError(
                "image.refused",
                f"registry host {host}:{port} resolves to {', '.join(private or addresses)}, "
                "not a public address: an untrusted run may not make the server connect "
                "there (declare the registry under `registries:` in kata's host config to "
                "allow it, or import the image with `kata image import`)",
                obj=host, exit_code=2)
        return super().connect_tcp(addresses[0], port, timeout, local_address, socket_options)


def docker_credentials(host: str, path: Path | None = None) -> tuple[str, str] | None:
    """Username and password for ``host`` as docker finds them in ~/.docker/config.json
    (``$DOCKER_CONFIG/config.json``), or None.

    As docker's CLI does: a ``credHelpers`` entry for the host names the credential helper
    to ask, else ``credsStore`` names one for every host; a helper is the program
    ``docker-credential-<name>`` on PATH, asked with ``get`` and the server URL on stdin
    (docker's credential-helper protocol: it answers ``{"Username", "Secret"}`` or exits
    non-zero with "credentials not found"). Without a helper answer, the ``auths`` entry
    (``auth`` base64 ``user:password``, or ``username``/``password``) is used.
    KataError image.credential_helper (exit 2): the helper named is not on PATH, or fails.
    """
    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
        path = Path(base) / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    docker_hub = host in ("docker.io", "registry-1.docker.io", "index.docker.io")
    helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
    helper = next((helpers[k] for k in ([host, "docker.io", "index.docker.io"] if docker_hub
                                        else [host]) if isinstance(helpers.get(k), str)),
                  doc.get("credsStore") if isinstance(doc.get("credsStore"), str) else None)
    if helper:
        server = "https://index.docker.io/v1/" if docker_hub else host
        found = _ask_helper(helper, server, path)
        if found is not None:
            return found
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if docker_hub:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    for key in keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    return None


def _ask_helper(helper: str, server: str, config: Path) -> tuple[str, str] | None:
    """(username, secret) from ``docker-credential-<helper> get``; None when it has none."""
    import shutil
    import subprocess

    program = f"docker-credential-{helper}"
    found = shutil.which(program)
    if found is None:
        raise KataError("image.credential_helper",
                        f"{config} names the credential helper {helper!r} but {program} is not "
                        "on PATH (install it, or remove credsStore/credHelpers)", obj=server)
    try:
        proc = subprocess.run([found, "get"], input=server, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KataError("image.credential_helper", f"{program} get: {err}", obj=server) from None
    if proc.returncode != 0:
        if "credentials not found" in (proc.stdout + proc.stderr).lower():
            return None
        raise KataError("image.credential_helper", f"{program} get failed (exit "
                        f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()[:200]}",
                        obj=server)
    try:
        answer = json.loads(proc.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise KataError("image.credential_helper",
                        f"{program} get did not answer {{\"Username\", \"Secret\"}} JSON",
                        obj=server) from None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    return user, secret


class RegistryClient:
    """Fetches manifests and blobs of one or more registries; thread-safe."""

    def __init__(self, config: RuntimeConfig, *, docker_config: Path | None = None,
                 confined: bool = False) -> None:
        """``confined``: connect only to public addresses or declared hosts (the pulls of
        an untrusted run; see the module's docstring)."""
        self.config = config
        self.docker_config = docker_config
        self.confined = confined
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._http = self._client(verify=True)
        self._insecure = self._client(verify=False)

    def _client(self, *, verify: bool) -> httpx.Client:
        timeout = httpx.Timeout(60.0, connect=10.0)
        if not self.confined:
            return httpx.Client(timeout=timeout, follow_redirects=True, verify=verify)
        if any(k in ("http", "https", "all") for k in urllib.request.getproxies()):
            # the proxy would connect for us, wherever the pipeline points it
            raise KataError("image.refused", "an untrusted run's image pulls cannot go "
                            "through a proxy (http_proxy/https_proxy are set): import its "
                            "images with `kata image import`, or unset the proxy for kata",
                            exit_code=2)
        transport = httpx.HTTPTransport(verify=verify)
        # httpx takes no network backend itself; its pool (httpcore's) does
        transport._pool._network_backend = ConfinedBackend(declared_hosts(self.config))
        return httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)

    def close(self) -> None:
        self._http.close()
        self._insecure.close()

    def endpoints(self, ref: ImageRef) -> list[str]:
        reg = self.config.registry(ref.registry)
        host = "registry-1.docker.io" if ref.registry == "docker.io" else ref.registry
        scheme = "http" if reg.plain_http or _is_local(host) else "https"
        return [m.rstrip("/") for m in reg.mirrors] + [f"{scheme}://{host}"]

    # -- requests with auth -----------------------------------------------------------
    def _request(self, base: str, ref: ImageRef, path: str, *, stream: bool = False,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        host = httpx.URL(base).host
        scope = f"repository:{ref.repository}:pull"
        url = f"{base}/v2/{ref.repository}/{path}"
        client = self._insecure if self.config.registry(ref.registry).skip_verify else self._http
        hdrs = dict(headers or {})
        token = self._tokens.get((host, scope))
        if token:
            hdrs["Authorization"] = token
        resp = self._send(client, url, hdrs, stream)
        if resp.status_code == 401:
            challenge = resp.headers.get("www-authenticate", "")
            resp.close()
            auth = self._authorize(client, host, ref, challenge, scope)
            if auth is None:
                raise KataError("image.unauthorized",
                                f"{ref.name}: the registry wants credentials "
                                "(add them to ~/.docker/config.json)", obj=str(ref), exit_code=1)
            with self._lock:
                self._tokens[(host, scope)] = auth
            hdrs["Authorization"] = auth
            resp = self._send(client, url, hdrs, stream)
        return resp

    @staticmethod
    def _send(client: httpx.Client, url: str, headers: dict[str, str], stream: bool) -> httpx.Response:
        request = client.build_request("GET", url, headers=headers)
        return client.send(request, stream=stream)

    def _authorize(self, client: httpx.Client, host: str, ref: ImageRef, challenge: str,
                   scope: str) -> str | None:
        creds = docker_credentials(ref.registry, self.docker_config) or (
            docker_credentials(host, self.docker_config) if host != ref.registry else None)
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            if creds is None:
                return None
            return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if scheme.lower() != "bearer":
            return None
        fields = dict(_CHALLENGE.findall(params))
        realm = fields.get("realm")
        if not realm:
            return None
        query = {"scope": fields.get("scope", scope)}
        if "service" in fields:
            query["service"] = fields["service"]
        try:
            resp = client.get(realm, params=query, auth=creds)
        except httpx.HTTPError as err:
            raise KataError("image.registry_unreachable", f"token service {realm}: {err}",
                            exit_code=1) from None
        if resp.status_code != 200:
            return None
        try:
            body = resp.json()
        except ValueError:
            return None
        token = body.get("token") or body.get("access_token")
        return f"Bearer {token}" if token else None

    # -- manifests and blobs ------------------------------------------------------------
    def fetch_manifest(self, ref: ImageRef, digest: str | None = None) -> tuple[str, bytes, str]:
        """(digest, bytes, media type) of the manifest or index ``ref`` (or ``digest``) names."""
        wanted = digest or ref.digest
        target = wanted or ref.tag or "latest"
        errors = []
        for base in self.endpoints(ref):
            try:
                resp = self._request(base, ref, f"manifests/{target}", headers={"Accept": ACCEPT})
            except httpx.HTTPError as err:
                errors.append(f"{base}: {err}")
                continue
            if resp.status_code == 404:
                errors.append(f"{base}: not found")
                continue
            if resp.status_code != 200:
                errors.append(f"{base}: HTTP {resp.status_code}")
                continue
            body = resp.content
            if len(body) > MAX_MANIFEST:
                raise KataError("image.bad_manifest", f"{ref}: manifest too large", exit_code=1)
            got = "sha256:" + hashlib.sha256(body).hexdigest()
            if wanted and got != wanted:
                raise KataError("image.digest_mismatch",
                                f"{ref}: the registry sent manifest {got} for {wanted}: refused",
                                obj=str(ref), exit_code=1)
            header = resp.headers.get("docker-content-digest")
            if not wanted and header and header.startswith("sha256:") and header != got:
                raise KataError("image.digest_mismatch",
                                f"{ref}: manifest digest {got} differs from the registry's "
                                f"{header}: refused", obj=str(ref), exit_code=1)
            media_type = resp.headers.get("content-type", "").split(";")[0].strip()
            try:
                media_type = json.loads(body).get("mediaType") or media_type
            except (ValueError, AttributeError):
                pass
            return got, body, media_type
        if errors and all(e.endswith("not found") for e in errors):
            raise KataError("image.not_found", f"image {ref} not found in the registry",
                            obj=str(ref), exit_code=1)
        raise KataError("image.registry_unreachable",
                        f"cannot fetch {ref}: " + "; ".join(errors), obj=str(ref), exit_code=1)

    def blob_chunks(self, ref: ImageRef, desc: Descriptor,
                    stop: PullStop | None = None) -> Iterator[bytes]:
        """The blob's bytes as they arrive (verified by the caller while writing).

        ``stop`` (pulls.PullStop): once set, a read blocked on the blob's socket returns
        and KataError(image.pull_stopped) is raised instead of the next chunk.
        """
        errors = []
        for base in self.endpoints(ref):
            if stop is not None:
                stop.check(desc.digest)
            try:
                resp = self._request(base, ref, f"blobs/{desc.digest}", stream=True)
            except httpx.HTTPError as err:
                errors.append(f"{base}: {err}")
                continue
            if resp.status_code != 200:
                resp.close()
                errors.append(f"{base}: HTTP {resp.status_code}")
                continue
            return self._iterate(resp, desc, stop)
        raise KataError("image.registry_unreachable",
                        f"cannot fetch blob {desc.digest} of {ref}: " + "; ".join(errors),
                        obj=desc.digest, exit_code=1)

    @staticmethod
    def _iterate(resp: httpx.Response, desc: Descriptor,
                 stop: PullStop | None) -> Iterator[bytes]:
        if stop is not None:
            stop.track(resp)
        try:
            for chunk in resp.iter_bytes(1 << 20):
                if stop is not None:
                    stop.check(desc.digest)
                yield chunk
        except httpx.HTTPError as err:
            if stop is not None:
                stop.check(desc.digest)  # the error is the socket `stop` shut
            raise KataError("image.registry_unreachable",
                            f"blob {desc.digest}: {err}", obj=desc.digest, exit_code=1) from None
        finally:
            if stop is not None:
                stop.untrack(resp)
            resp.close()


__all__ = ["RegistryClient", "docker_credentials"]
