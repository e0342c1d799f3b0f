"""Registries for pull tests: Debian's real docker-registry, and a tiny fake one.

    with docker_registry(tmp_path) as url:          # "http://127.0.0.1:PORT"
        push_image(url, "kata/busybox", "1", img)    # the distribution API, with httpx
    with FakeRegistry(blobs={...}, manifests={...}, bearer=True) as fake:
        ...                                          # fake.url; serves exactly what it is given
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from .images import OciImage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def docker_registry(workdir: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """Run `docker-registry serve` on 127.0.0.1:<free port>; yield its base URL.

    ``users`` (name -> password): the registry demands basic auth (its htpasswd
    backend, bcrypt hashes made with libcrypt); ``push_image(..., auth=(name, password))``.
    """
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is missing: apt install docker-registry")
    port = free_port()
    storage = workdir / "registry-storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "registry.yml"
    cfg.write_text(f"""\
version: 0.1
log: {{level: error}}
storage:
  filesystem: {{rootdirectory: {storage}}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{port}
""")
    if users:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # libcrypt's bcrypt; the registry's htpasswd reads only bcrypt

        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(
            f"{name}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
            for name, password in users.items()))
        with open(cfg, "a") as f:
            f.write(f"auth:\n  htpasswd: {{realm: kata-test, path: {htpasswd}}}\n")
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/v2/", timeout=1).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def push_image(url: str, repo: str, tag: str, img: OciImage,
               auth: tuple[str, str] | None = None) -> None:
    """Push ``img`` with the distribution API (monolithic blob uploads, then the manifest)."""
    with httpx.Client(base_url=url, timeout=30, auth=auth) as http:
        for digest, data in img.blobs.items():
            if digest == img.digest:
                continue
            start = http.post(f"/v2/{repo}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["location"]
            sep = "&" if "?" in location else "?"  # keep the registry's own _state query
            put = http.put(f"{location}{sep}digest={digest}", content=data,
                           headers={"Content-Type": "application/octet-stream"})
            put.raise_for_status()
        resp = http.put(f"/v2/{repo}/manifests/{tag}", content=img.manifest,
                        headers={"Content-Type": json.loads(img.manifest)["mediaType"]})
        resp.raise_for_status()


class FakeRegistry:
    """Serves fixed manifests and blobs; can demand a bearer token; can lie about blobs."""

    def __init__(self, *, blobs: dict[str, bytes], manifests: dict[str, tuple[str, bytes]],
                 bearer: bool = False, token_auth: str | None = None) -> None:
        self.blobs = blobs  # digest -> bytes served for it (may be wrong on purpose)
        self.manifests = manifests  # tag or digest -> (media type, bytes)
        self.bearer = bearer
        self.token_auth = token_auth  # "Basic …" the token endpoint demands, if any
        self.token = "kata-test-token"
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                if self.path.startswith("/token"):
                    if outer.token_auth and self.headers.get("Authorization") != outer.token_auth:
                        return self._send(401, b"{}")
                    return self._send(200, json.dumps({"token": outer.token}).encode())
                if outer.bearer and self.headers.get("Authorization") != f"Bearer {outer.token}":
                    realm = f"http://127.0.0.1:{outer.port}/token"
                    return self._send(401, b"{}", {"WWW-Authenticate":
                                      f'Bearer realm="{realm}",service="fake",scope="x"'})
                parts = self.path.split("/")
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                if len(parts) >= 4 and parts[-2] == "manifests" and parts[-1] in outer.manifests:
                    mt, body = outer.manifests[parts[-1]]
                    return self._send(200, body, {"Content-Type": mt})
                if len(parts) >= 4 and parts[-2] == "blobs" and parts[-1] in outer.blobs:
                    return self._send(200, outer.blobs[parts[-1]],
                                      {"Content-Type": "application/octet-stream"})
                return self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_oci_archive(archive: Path) -> OciImage:
    """The image of an OCI layout archive (support.images.write_oci_archive's, or
    debian_image_archive's), to push."""
    import tarfile

    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        blobs = {"sha256:" + m.name.rsplit("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.name.startswith("blobs/sha256/")}
    manifest = blobs[index["manifests"][0]["digest"]]
    doc = json.loads(manifest)
    return OciImage(ref="trial", manifest=manifest, config=blobs[doc["config"]["digest"]],
                    layers=tuple(blobs[layer["digest"]] for layer in doc["layers"]),
                    diff_ids=(), blobs=blobs)


@contextmanager
def served_image(workdir: Path, archive: Path, repo: str, tag: str = "bookworm") -> Iterator[str]:
    """``archive`` pushed as ``repo:tag`` to a real registry in ``workdir``: its reference
    (HOST:PORT/REPO:TAG) while the registry runs."""
    with docker_registry(workdir) as url:
        push_image(url, repo, tag, read_oci_archive(archive))
        yield f"{url.removeprefix('http://')}/{repo}:{tag}"

