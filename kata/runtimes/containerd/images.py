"""The image store on containerd: blobs, images, unpacking, archives.

Blobs go through Content.Write with their expected digest; images are named
records pointing at a manifest or an index; layers are unpacked into overlayfs
snapshots named by chain ID. Everything is written under a lease and labelled
the way containerd's garbage collector expects, so what an image references
stays and what nothing references goes when the lease is deleted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kata.errors import KataError

from .client import (
    SNAPSHOTTER, Client, ContainerdError, content_pb2, descriptor_pb2, diff_pb2, grpc,
    images_pb2, leases_pb2, snapshots_pb2,
)
from .reference import is_digest, parse_reference

CHUNK = 1 << 20
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
PLATFORM = ("linux", "amd64")


def sha256_hex(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def proto(self) -> Any:
        return descriptor_pb2.Descriptor(media_type=self.media_type, digest=self.digest,
                                         size=self.size)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        try:
            desc = cls(media_type=str(d.get("mediaType", "")), digest=str(d["digest"]),
                       size=int(d["size"]))
        except (KeyError, TypeError, ValueError) as err:
            raise KataError("image.bad_manifest", f"bad descriptor in a manifest: {d!r}") from err
        if not is_digest(desc.digest):
            raise KataError("image.bad_manifest", f"unsupported digest {desc.digest!r}")
        return desc


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    """An image in kata's namespace, as `kata image ls` shows it."""

    name: str
    digest: str
    media_type: str
    size: int  # manifest + config + compressed layers (of the linux/amd64 manifest)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunImage:
    """What running a step needs from an image."""

    manifest: str  # the platform manifest's digest
    chain_id: str  # top snapshot to prepare from
    env: tuple[str, ...]
    workdir: str
    user: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()  # "5432/tcp", in the config's order


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    chain: list[str] = []
    for d in diff_ids:
        chain.append(d if not chain else sha256_hex(f"{chain[-1]} {d}".encode()))
    return chain


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as err:
        raise KataError("image.bad_manifest", f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise KataError("image.bad_manifest", f"{what} is not a JSON object")
    return value


def select_platform(index: dict[str, Any]) -> Descriptor:
    """The linux/amd64 manifest of an index (docker's attestation entries skipped)."""
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) == PLATFORM:
            return Descriptor.from_json(entry)
    raise KataError("image.no_platform",
                    "the image index has no linux/amd64 manifest", exit_code=1)


class ImageStore:
    """Content, images and snapshots of kata's namespace, over a ``Client``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._guard = threading.Lock()  # guards the two dicts below
        self._locks: dict[str, threading.Lock] = {}  # one per image digest / chain ID
        self._run_cache: dict[str, RunImage] = {}

    def lock(self, key: str) -> threading.Lock:
        """The in-process lock of one image (by digest) or one snapshot chain (by chain ID).

        Steps starting at once on the same image wait on it, so this process unpacks or
        pulls an image once; other processes are met by ALREADY_EXISTS (see ``_apply``).
        """
        with self._guard:
            found = self._locks.get(key)
            if found is None:
                found = self._locks[key] = threading.Lock()
            return found

    # -- content ------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        try:
            self.client.call(self.client.content.Info, content_pb2.InfoRequest(digest=digest),
                             f"stat {digest}")
            return True
        except ContainerdError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def read_blob(self, digest: str) -> bytes:
        c = self.client
        try:
            parts = [r.data for r in c.content.Read(content_pb2.ReadContentRequest(digest=digest),
                                                      metadata=c.metadata(), timeout=120)]
        except grpc.RpcError as err:
            from .client import wrap

            error = wrap(err, f"read {digest}")
            if error.code == grpc.StatusCode.NOT_FOUND:
                raise KataError("image.not_found", f"blob {digest} is not in the image store",
                                obj=digest, exit_code=1) from None
            raise error from None
        data = b"".join(parts)
        if sha256_hex(data) != digest:
            raise KataError("image.corrupt", f"blob {digest} read back with another digest",
                            obj=digest, exit_code=1)
        return data

    def write_blob(self, lease: str, desc: Descriptor, chunks: Iterable[bytes],
                   labels: dict[str, str] | None = None) -> None:
        """Stream a blob into the content store; its digest is checked on the way in.

        A digest or size mismatch raises KataError(image.digest_mismatch) and leaves
        nothing behind (the partial write is aborted).
        """
        c = self.client
        ref = f"kata-{secrets.token_hex(8)}"
        labels = dict(labels or {})
        state: dict[str, Any] = {"error": None}

        def requests() -> Iterator[Any]:
            h, n = hashlib.sha256(), 0
            try:
                first = True
                for chunk in chunks:
                    if not chunk:
                        continue
                    h.update(chunk)
                    for i in range(0, len(chunk), 4 * CHUNK):
                        part = chunk[i:i + 4 * CHUNK]
                        yield content_pb2.WriteContentRequest(
                            action=content_pb2.WRITE, ref=ref, offset=n, data=part,
                            total=desc.size if first else 0,
                            expected=desc.digest if first else "")
                        first = False
                        n += len(part)
                if first:  # empty blob: one empty write so the writer exists
                    yield content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref,
                                                          total=0, expected=desc.digest)
            except BaseException as err:  # noqa: BLE001 - surfaced after the call
                state["error"] = err
                return
            got = "sha256:" + h.hexdigest()
            if got != desc.digest or n != desc.size:
                state["error"] = KataError(
                    "image.digest_mismatch",
                    f"blob {desc.digest} arrived with digest {got} and size {n} "
                    f"(expected {desc.size}): refused", obj=desc.digest, exit_code=1)
                return
            # offset 0 on a later message would truncate the write: say where we are
            yield content_pb2.WriteContentRequest(action=content_pb2.COMMIT, ref=ref, offset=n,
                                                  total=desc.size, expected=desc.digest,
                                                  labels=labels)

        try:
            for _ in c.content.Write(requests(), metadata=c.metadata(lease), timeout=3600):
                pass
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                if labels:
                    self.set_labels(desc.digest, labels)
                return
            self._abort(ref)
            if state["error"] is not None:
                raise state["error"] from None
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise KataError("image.digest_mismatch",
                                f"containerd refused blob {desc.digest}: {err.details()}",
                                obj=desc.digest, exit_code=1) from None
            from .client import wrap

            raise wrap(err, f"write {desc.digest}") from None
        if state["error"] is not None:
            self._abort(ref)
            raise state["error"]

    def _abort(self, ref: str) -> None:
        try:
            self.client.call(self.client.content.Abort, content_pb2.AbortRequest(ref=ref),
                             f"abort write {ref}")
        except ContainerdError:
            pass  # nothing was started, or it is gone already

    def set_labels(self, digest: str, labels: dict[str, str]) -> None:
        from google.protobuf import field_mask_pb2

        info = content_pb2.Info(digest=digest, labels=labels)
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        self.client.call(self.client.content.Update,
                         content_pb2.UpdateRequest(info=info, update_mask=mask),
                         f"label {digest}")

    def write_bytes(self, lease: str, media_type: str, data: bytes,
                    labels: dict[str, str] | None = None) -> Descriptor:
        desc = Descriptor(media_type=media_type, digest=sha256_hex(data), size=len(data))
        self.write_blob(lease, desc, [data], labels)
        return desc

    # -- images -------------------------------------------------------------------
    def put_image(self, name: str, target: Descriptor) -> None:
        c = self.client
        image = images_pb2.Image(name=name, target=target.proto())
        try:
            c.call(c.images.Create, images_pb2.CreateImageRequest(image=image),
                   f"create image {name}")
        except ContainerdError as err:
            if err.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
            c.call(c.images.Update, images_pb2.UpdateImageRequest(image=image),
                   f"update image {name}")

    def get_image(self, name: str) -> Descriptor | None:
        c = self.client
        try:
            resp = c.call(c.images.Get, images_pb2.GetImageRequest(name=name), f"image {name}")
        except ContainerdError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        t = resp.image.target
        return Descriptor(media_type=t.media_type, digest=t.digest, size=t.size)

    def list_images(self) -> list[ImageRecord]:
        c = self.client
        resp = c.call(c.images.List, images_pb2.ListImagesRequest(), "list images")
        out = []
        for img in sorted(resp.images, key=lambda i: i.name):
            out.append(ImageRecord(name=img.name, digest=img.target.digest,
                                   media_type=img.target.media_type,
                                   size=self._size(img.target.digest)))
        return out

    def _size(self, digest: str) -> int:
        try:
            manifest_digest, manifest = self.platform_manifest(digest)
        except KataError:
            return 0
        total = len(self.read_blob(manifest_digest))
        for d in [manifest.get("config") or {}, *(manifest.get("layers") or [])]:
            total += int(d.get("size", 0))
        return total

    def remove_image(self, ref: str) -> list[str]:
        """Delete the images ``ref`` names (a name, or a digest: every name on it)."""
        c = self.client
        if is_digest(ref):
            names = [i.name for i in self.list_images() if i.digest == ref]
        else:
            names = [parse_reference(ref).stored_name]
        removed = []
        for name in names:
            try:
                c.call(c.images.Delete, images_pb2.DeleteImageRequest(name=name, sync=True),
                       f"remove image {name}")
                removed.append(name)
            except ContainerdError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    raise
        if not removed:
            raise KataError("image.not_found", f"no image {ref} in kata's image store "
                            "(`kata image ls` lists them)", obj=ref)  # a name typed wrong: 2
        with self._guard:
            self._run_cache.clear()
        return removed

    # -- manifests ----------------------------------------------------------------
    def platform_manifest(self, digest: str) -> tuple[str, dict[str, Any]]:
        """The linux/amd64 manifest under ``digest`` (a manifest or an index)."""
        doc = load_json(self.read_blob(digest), f"manifest {digest}")
        if "manifests" in doc:
            digest = select_platform(doc).digest
            doc = load_json(self.read_blob(digest), f"manifest {digest}")
        if "layers" not in doc or "config" not in doc:
            raise KataError("image.bad_manifest", f"{digest} is not an image manifest",
                            obj=digest, exit_code=1)
        return digest, doc

    def known(self, digest: str) -> bool:
        """Whether this process has unpacked ``digest`` already (no call to containerd)."""
        return digest in self._run_cache

    def forget(self, digest: str) -> None:
        with self._guard:
            self._run_cache.pop(digest, None)

    def run_image(self, digest: str) -> RunImage:
        """Manifest, top chain ID and defaults of a stored image (unpacking it if needed)."""
        cached = self._run_cache.get(digest)
        if cached is not None:
            return cached
        with self.lock(digest):
            cached = self._run_cache.get(digest)
            if cached is not None:
                return cached
            manifest_digest, manifest = self.platform_manifest(digest)
            config_desc = Descriptor.from_json(manifest["config"])
            config = load_json(self.read_blob(config_desc.digest), "image config")
            diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
            chain = self.unpack(manifest, diff_ids)
            cfg = config.get("config") or {}
            info = RunImage(manifest=manifest_digest, chain_id=chain,
                            env=tuple(cfg.get("Env") or ()),
                            workdir=cfg.get("WorkingDir") or "/", user=cfg.get("User") or "",
                            entrypoint=tuple(cfg.get("Entrypoint") or ()),
                            cmd=tuple(cfg.get("Cmd") or ()),
                            exposed_ports=tuple(cfg.get("ExposedPorts") or {}))
            with self._guard:
                self._run_cache[digest] = info
            return info

    def snapshot_exists(self, key: str) -> bool:
        c = self.client
        try:
            c.call(c.snapshots.Stat, snapshots_pb2.StatSnapshotRequest(
                snapshotter=SNAPSHOTTER, key=key), f"stat snapshot {key}")
            return True
        except ContainerdError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def unpack(self, manifest: dict[str, Any], diff_ids: list[str]) -> str:
        """Unpack the manifest's layers into committed snapshots; return the top chain ID.

        Safe to call at once from many threads (they wait on the chain's lock) and from
        many processes (a layer another process committed first counts as done).
        """
        layers = [Descriptor.from_json(d) for d in manifest.get("layers") or []]
        if len(layers) != len(diff_ids) or not layers:
            raise KataError("image.bad_manifest",
                            "the image's layers do not match its config's diff_ids", exit_code=1)
        chain = chain_ids(diff_ids)
        if self.snapshot_exists(chain[-1]):
            return chain[-1]
        c = self.client
        with self.lock(chain[-1]), c.lease("unpack") as lease:
            parent = ""
            for layer, diff_id, chain_id in zip(layers, diff_ids, chain):
                if not self.snapshot_exists(chain_id):
                    self._apply(lease, layer, diff_id, chain_id, parent)
                parent = chain_id
        return chain[-1]

    def _apply(self, lease: str, layer: Descriptor, diff_id: str, chain_id: str,
               parent: str) -> None:
        c = self.client
        key = f"extract-{secrets.token_hex(8)} {chain_id}"
        resp = c.make_snapshot(c.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
            snapshotter=SNAPSHOTTER, key=key, parent=parent, labels=c.owner_labels()),
            f"prepare {key}", lease=lease)
        try:
            applied = c.call(c.diff.Apply, diff_pb2.ApplyRequest(
                diff=layer.proto(), mounts=list(resp.mounts)), f"apply layer {layer.digest}",
                lease=lease, timeout=3600).applied
            if applied.digest != diff_id:
                raise KataError("image.digest_mismatch",
                                f"layer {layer.digest} unpacked to {applied.digest}, but the "
                                f"image config says {diff_id}", obj=layer.digest, exit_code=1)
            try:
                c.call(c.snapshots.Commit, snapshots_pb2.CommitSnapshotRequest(
                    snapshotter=SNAPSHOTTER, name=chain_id, key=key), f"commit {chain_id}",
                    lease=lease)
            except ContainerdError as err:
                if err.code != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                # another process unpacked the same layer first: its snapshot is the same
                # content (named by chain ID), so ours is dropped and the layer is done
                self._remove_snapshot(key)
        except BaseException:
            self._remove_snapshot(key)
            raise

    def _remove_snapshot(self, key: str) -> None:
        c = self.client
        try:
            c.call(c.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
                snapshotter=SNAPSHOTTER, key=key), f"remove {key}")
        except ContainerdError:
            pass  # gone already; a leftover carries our owner label and is swept

    def _hold(self, lease: str, digest: str) -> None:
        """Put blob ``digest`` in ``lease`` before looking whether it is there: a blob
        found but held by nothing (a killed import's, whose lease the owner sweep just
        deleted) is otherwise collected by containerd's gc while this import relies on
        it ("label ...: not found", or an image naming a layer that is gone)."""
        c = self.client
        c.call(c.leases.AddResource, leases_pb2.AddResourceRequest(
            id=lease, resource=leases_pb2.Resource(id=digest, type="content")),
            f"hold {digest}")

    # -- storing a whole image ----------------------------------------------------
    def store_manifest(self, lease: str, manifest_bytes: bytes, media_type: str,
                       blob_source: Any) -> Descriptor:
        """Store a platform manifest and everything it references.

        blob_source(desc) -> iterable of bytes chunks for a blob not yet stored.
        Layers first, then the config, then the manifest (with gc labels), so an
        interrupted store leaves nothing that claims to be complete.
        """
        manifest = load_json(manifest_bytes, "manifest")
        config_desc = Descriptor.from_json(manifest.get("config") or {})
        layers = [Descriptor.from_json(d) for d in manifest.get("layers") or []]
        for layer in layers:
            self._hold(lease, layer.digest)
            if not self.has_blob(layer.digest):
                self.write_blob(lease, layer, blob_source(layer))
        self._hold(lease, config_desc.digest)
        config_bytes = (self.read_blob(config_desc.digest) if self.has_blob(config_desc.digest)
                        else b"".join(blob_source(config_desc)))
        if sha256_hex(config_bytes) != config_desc.digest:
            raise KataError("image.digest_mismatch",
                            f"image config {config_desc.digest} arrived with another digest: "
                            "refused", obj=config_desc.digest, exit_code=1)
        config = load_json(config_bytes, "image config")
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        chain = chain_ids(diff_ids)
        config_labels = {f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}": chain[-1]} if chain else {}
        self.write_blob(lease, config_desc, [config_bytes], config_labels)
        for layer, diff_id in zip(layers, diff_ids):
            self.set_labels(layer.digest, {"containerd.io/uncompressed": diff_id})
        labels = {"containerd.io/gc.ref.content.config": config_desc.digest}
        labels.update({f"containerd.io/gc.ref.content.l.{i}": layer.digest
                       for i, layer in enumerate(layers)})
        desc = Descriptor(media_type=media_type or manifest.get("mediaType") or MT_OCI_MANIFEST,
                          digest=sha256_hex(manifest_bytes), size=len(manifest_bytes))
        self.write_blob(lease, desc, [manifest_bytes], labels)
        self.unpack(manifest, diff_ids)
        return desc

    def store_index(self, lease: str, index_bytes: bytes, media_type: str,
                    manifests: dict[str, Descriptor]) -> Descriptor:
        """Store an index whose platform manifests (``manifests``) are stored already."""
        labels = {f"containerd.io/gc.ref.content.m.{i}": d.digest
                  for i, d in enumerate(manifests.values())}
        desc = Descriptor(media_type=media_type or MT_OCI_INDEX,
                          digest=sha256_hex(index_bytes), size=len(index_bytes))
        self.write_blob(lease, desc, [index_bytes], labels)
        return desc

    # -- archives -----------------------------------------------------------------
    def import_archive(self, path: str | Path, name: str | None = None) -> list[ImageRecord]:
        """Import an OCI image-layout tar or a `docker save` tar; return what was stored."""
        path = Path(path)
        try:
            tar = tarfile.open(path, "r:*")
        except OSError as err:
            raise KataError("image.bad_archive", f"cannot read image archive {path}: "
                            f"{err.strerror or err}", obj=str(path), exit_code=2) from None
        except tarfile.TarError:  # its message lists every decompressor tried, one a line
            what = "an empty file" if path.stat().st_size == 0 else \
                "not a tar archive (plain, gzip, bzip2 or xz)"
            raise KataError("image.bad_archive", f"cannot read image archive {path}: {what}; "
                            f"give a tar written by `docker save`, or an OCI image layout "
                            f"(`skopeo copy … oci-archive:FILE`)", obj=str(path),
                            exit_code=2) from None
        with tar:
            try:
                members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            except (OSError, tarfile.TarError) as err:
                raise KataError("image.bad_archive", f"cannot read image archive {path}: "
                                f"{' '.join(str(err).split())}", obj=str(path),
                                exit_code=2) from None
            # a failed import leaves nothing: the lease's content goes with it
            with self.client.lease("import", sync_delete=True) as lease:
                try:
                    if "index.json" in members:
                        stored = self._import_oci(tar, members, lease, name)
                    elif "manifest.json" in members:
                        stored = self._import_docker(tar, members, lease, name)
                    else:
                        raise KataError("image.bad_archive", f"{path} is neither an OCI layout "
                                        "nor a docker-save archive", obj=str(path), exit_code=2)
                except (KeyError, TypeError, ValueError, AttributeError, tarfile.TarError) as err:
                    raise KataError("image.bad_archive", f"{path}: malformed image archive "
                                    f"({type(err).__name__}: {err})", obj=str(path),
                                    exit_code=2) from None
        if not stored:
            raise KataError("image.bad_archive", f"{path} names no image", obj=str(path),
                            exit_code=2)
        return [ImageRecord(name=n, digest=d.digest, media_type=d.media_type,
                            size=self._size(d.digest)) for n, d in stored]

    @staticmethod
    def _member_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
        f = tar.extractfile(member)
        assert f is not None
        while chunk := f.read(CHUNK):
            yield chunk

    def _import_oci(self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                    lease: str, name: str | None) -> list[tuple[str, Descriptor]]:
        def blob_member(digest: str) -> tarfile.TarInfo:
            key = "blobs/" + digest.replace(":", "/")
            if key not in members:
                raise KataError("image.bad_archive", f"the archive lacks blob {digest}",
                                obj=digest, exit_code=2)
            return members[key]

        def blob(desc: Descriptor) -> Iterator[bytes]:
            return self._member_chunks(tar, blob_member(desc.digest))

        def read(digest: str) -> bytes:
            return b"".join(self._member_chunks(tar, blob_member(digest)))

        index = load_json(read_member(tar, members["index.json"]), "index.json")
        stored = []
        for entry in index.get("manifests") or []:
            desc = Descriptor.from_json(entry)
            ann = entry.get("annotations") or {}
            ref_name = name or ann.get("io.containerd.image.name") or ann.get(
                "org.opencontainers.image.ref.name")
            if not ref_name:
                raise KataError("image.bad_archive",
                                f"manifest {desc.digest} in the archive has no name: "
                                "pass one with --name", exit_code=2)
            target = self._store_target(lease, desc, read, blob)
            image_name = parse_reference(ref_name).stored_name
            self.put_image(image_name, target)
            stored.append((image_name, target))
        return stored

    def _store_target(self, lease: str, desc: Descriptor, read: Any, blob: Any) -> Descriptor:
        data = read(desc.digest)
        if sha256_hex(data) != desc.digest:
            raise KataError("image.digest_mismatch", f"{desc.digest} has another digest",
                            obj=desc.digest, exit_code=1)
        doc = load_json(data, f"manifest {desc.digest}")
        media_type = desc.media_type or doc.get("mediaType", "")
        if "manifests" in doc:
            chosen = select_platform(doc)
            mdesc = self.store_manifest(lease, read(chosen.digest), chosen.media_type, blob)
            return self.store_index(lease, data, media_type, {mdesc.digest: mdesc})
        return self.store_manifest(lease, data, media_type, blob)

    def _import_docker(self, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                       lease: str, name: str | None) -> list[tuple[str, Descriptor]]:
        entries = json.loads(read_member(tar, members["manifest.json"]))
        stored = []
        for entry in entries:
            config_bytes = read_member(tar, members[entry["Config"].lstrip("./")])
            layers = []
            sources: dict[str, tarfile.TarInfo] = {}
            for layer_name in entry["Layers"]:
                member = members[layer_name.lstrip("./")]
                h, n = hashlib.sha256(), 0
                for chunk in self._member_chunks(tar, member):
                    h.update(chunk)
                    n += len(chunk)
                digest = "sha256:" + h.hexdigest()
                sources[digest] = member
                layers.append({"mediaType": MT_DOCKER_LAYER, "digest": digest, "size": n})
            config_digest = sha256_hex(config_bytes)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST,
                "config": {"mediaType": MT_DOCKER_CONFIG, "digest": config_digest,
                           "size": len(config_bytes)},
                "layers": layers,
            }, separators=(",", ":")).encode()

            def blob(desc: Descriptor) -> Iterable[bytes]:
                if desc.digest == config_digest:
                    return [config_bytes]
                return self._member_chunks(tar, sources[desc.digest])

            target = self.store_manifest(lease, manifest, MT_DOCKER_MANIFEST, blob)
            tags = [name] if name else list(entry.get("RepoTags") or [])
            if not tags:
                raise KataError("image.bad_archive", "the archive's image has no tag: "
                                "pass one with --name", exit_code=2)
            for tag in tags:
                image_name = parse_reference(tag).stored_name
                self.put_image(image_name, target)
                stored.append((image_name, target))
        return stored


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


__all__ = ["ImageStore", "ImageRecord", "RunImage", "Descriptor", "chain_ids"]
