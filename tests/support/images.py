"""Small OCI images built locally, so no test pulls anything from the internet.

``busybox_image()`` is Debian's busybox-static as /bin/busybox plus a symlink per
applet (so /bin/sh, /bin/true, /bin/cat ... exist), /etc/passwd and /etc/group, and
the usual empty mount points. Archives are byte-for-byte reproducible, so the same
image always has the same manifest digest.

    img = busybox_image()                      # an OciImage value (blobs in memory)
    write_oci_archive(img, tmp_path / "bb.tar")     # `kata image import` input (OCI layout)
    write_docker_archive(img, tmp_path / "bb.tar")  # the docker-save format
    debian_image_archive()                     # mmdebstrap rootfs, cached under /var/cache/kata-test
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_REF = "kata.local/busybox:latest"
DEBIAN_REF = "kata.local/debian:bookworm"
BUSYBOX = "/bin/busybox"
CACHE_DIR = Path(os.environ.get("KATA_TEST_CACHE", "/var/cache/kata-test"))

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canon(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class OciImage:
    """An image as blobs: manifest, config and (compressed) layers, by digest."""

    ref: str
    manifest: bytes
    config: bytes
    layers: tuple[bytes, ...]  # as stored (gzip)
    diff_ids: tuple[str, ...]  # digests of the uncompressed layer tars
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes, all of the above

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(sha256(layer) for layer in self.layers)


class _TarBuilder:
    """A reproducible tar: fixed mtime/owner, entries in the order added."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
        info.uname = info.gname = "root"
        return info

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def busybox_layer() -> bytes:
    """The uncompressed tar of a busybox rootfs."""
    if not os.path.exists(BUSYBOX):
        raise RuntimeError("busybox-static is missing: apt install busybox-static")
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    t = _TarBuilder()
    for d in ("bin", "dev", "etc", "proc", "sys", "run", "root", "home", "usr", "usr/bin",
              "var", "var/tmp", "work"):
        t.dir(d + "/")
    t.dir("tmp/", 0o1777)
    t.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for name in sorted(set(applets) - {"busybox"}):
        t.symlink(f"bin/{name}", "busybox")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    t.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return t.bytes()


def files_layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar adding ``files`` (path -> content; parents created)."""
    t = _TarBuilder()
    seen: set[str] = set()
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                t.dir(d + "/")
        t.file(path.strip("/"), files[path], 0o755)
    return t.bytes()


def make_image(layer_tars: list[bytes], ref: str = BUSYBOX_REF, *,
               env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
               cmd: tuple[str, ...] = ("/bin/sh",), entrypoint: tuple[str, ...] = (),
               exposed_ports: tuple[str, ...] = (), user: str = "") -> OciImage:
    """An image from uncompressed layer tars (bottom first); ``user``: its USER."""
    extra: dict = {}
    if user:
        extra["User"] = user
    if entrypoint:
        extra["Entrypoint"] = list(entrypoint)
    if exposed_ports:
        extra["ExposedPorts"] = {p: {} for p in exposed_ports}
    layers = tuple(gzip.compress(t, compresslevel=6, mtime=0) for t in layer_tars)
    diff_ids = tuple(sha256(t) for t in layer_tars)
    config = _canon({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/", **extra},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": "kata tests"} for _ in layers],
    })
    manifest = _canon({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": MT_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers],
    })
    blobs = {sha256(b): b for b in (manifest, config, *layers)}
    return OciImage(ref=ref, manifest=manifest, config=config, layers=layers,
                    diff_ids=diff_ids, blobs=blobs)


_BUSYBOX_CACHE: list[OciImage] = []


def busybox_image(ref: str = BUSYBOX_REF) -> OciImage:
    """The busybox test image (built once per process)."""
    if not _BUSYBOX_CACHE:
        _BUSYBOX_CACHE.append(make_image([busybox_layer()], BUSYBOX_REF))
    img = _BUSYBOX_CACHE[0]
    return img if ref == img.ref else OciImage(ref=ref, manifest=img.manifest, config=img.config,
                                               layers=img.layers, diff_ids=img.diff_ids,
                                               blobs=img.blobs)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_oci_archive(img: OciImage, dest: Path) -> Path:
    """Write ``img`` as an OCI image-layout tar (what `kata image import` reads)."""
    index = _canon({"schemaVersion": 2, "manifests": [{
        "mediaType": MT_MANIFEST, "digest": img.digest, "size": len(img.manifest),
        "annotations": {"io.containerd.image.name": img.ref,
                        "org.opencontainers.image.ref.name": img.ref.rpartition(":")[2]},
    }]})
    with tarfile.open(dest, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index)
        for digest, data in sorted(img.blobs.items()):
            _add(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return dest


def write_docker_archive(img: OciImage, dest: Path) -> Path:
    """Write ``img`` in the `docker save` format (manifest.json, uncompressed layer dirs)."""
    layer_names = []
    with tarfile.open(dest, "w") as tar:
        cfg_name = img.config_digest.removeprefix("sha256:") + ".json"
        _add(tar, cfg_name, img.config)
        for blob, diff_id in zip(img.layers, img.diff_ids):
            name = diff_id.removeprefix("sha256:") + "/layer.tar"
            _add(tar, name, gzip.decompress(blob))
            layer_names.append(name)
        manifest = [{"Config": cfg_name, "RepoTags": [img.ref], "Layers": layer_names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return dest


def debian_image_archive(suite: str = "bookworm", *, include: tuple[str, ...] = (),
                         ref: str = DEBIAN_REF) -> Path:
    """A Debian minbase rootfs (mmdebstrap) as an OCI archive, cached: it is slow to make.
    ``include``: Debian packages added to the rootfs (a separate cached archive, named by
    them), e.g. ``("python3-pytest",)`` for ``DEBIAN_PYTEST_REF``."""
    import fcntl

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = f"debian-{suite}" + "".join(f"+{p}" for p in include)
    archive = CACHE_DIR / f"{name}.oci.tar"
    with open(CACHE_DIR / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one maker at a time (xdist workers)
        if not archive.exists():
            _make_debian_archive(suite, archive, include, ref)
    return archive


#: The Debian image with python3 and pytest (JUnit reports from a real test runner).
DEBIAN_PYTEST_REF = "kata.local/debian-pytest:bookworm"


def debian_pytest_image_archive() -> Path:
    return debian_image_archive(include=("python3-pytest",), ref=DEBIAN_PYTEST_REF)


def _make_debian_archive(suite: str, archive: Path, include: tuple[str, ...] = (),
                         ref: str = DEBIAN_REF) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap is missing: apt install mmdebstrap")
    rootfs_tar = archive.parent / f"{archive.name}.rootfs.partial.tar"  # mmdebstrap: .tar = a tarball
    extra = [f"--include={','.join(include)}"] if include else []
    subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet", *extra, suite,
                    str(rootfs_tar)], check=True)
    img = make_image([rootfs_tar.read_bytes()], ref)
    rootfs_tar.unlink()
    tmp = archive.with_suffix(".partial")
    write_oci_archive(img, tmp)
    tmp.rename(archive)


PROBE_REF = "kata.local/probe:latest"
PROBE_SOURCE = Path(__file__).with_name("sandbox_probe.c")


def probe_binary() -> bytes:
    """``sandbox_probe.c`` built static with the host's gcc (cached by source digest)."""
    source = PROBE_SOURCE.read_bytes()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out = CACHE_DIR / f"sandbox-probe-{hashlib.sha256(source).hexdigest()[:16]}"
    if not out.exists():
        if shutil.which("gcc") is None:
            raise RuntimeError("gcc is missing: apt install gcc libc6-dev")
        tmp = out.with_suffix(f".partial{os.getpid()}")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(PROBE_SOURCE)], check=True)
        tmp.rename(out)
    return out.read_bytes()


def probe_image(ref: str = PROBE_REF) -> OciImage:
    """busybox plus /bin/probe (tests/support/sandbox_probe.c): what a hostile step tries."""
    return make_image([busybox_layer(), files_layer({"bin/probe": probe_binary()})], ref)
