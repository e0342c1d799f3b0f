"""Images on a real containerd: import, pull (real docker-registry and a fake one), ls, rm."""

from __future__ import annotations

import json
import os
import secrets
import threading

import pytest

from kata.errors import KataError
from kata.runtimes.base import StepSpec
from kata.runtimes.containerd import ContainerdRuntime
from kata.runtimes.containerd.config import RegistryConfig, RuntimeConfig
from support.fixtures import assert_clean
from support.images import (
    MT_INDEX, busybox_layer, files_layer, make_image, sha256, write_docker_archive,
    write_oci_archive,
)
from support.registry import FakeRegistry, docker_registry, push_image

pytestmark = pytest.mark.integration


def unique_image(ref: str):
    """busybox plus a layer only this test has, so tests never share blobs."""
    tag = secrets.token_hex(4)
    return make_image([busybox_layer(), files_layer({f"/etc/kata-test-{tag}": tag.encode()})], ref)


def output(rt, digest: str, *argv: str) -> tuple[int, list[bytes]]:
    lines: list[bytes] = []
    status = rt.run(StepSpec(image=digest, argv=argv), lambda s, line: lines.append(line),
                    threading.Event())
    return status, lines


@pytest.fixture
def connect(containerd_daemon):
    opened = []

    def make(**kw):
        rt = ContainerdRuntime.connect(address=containerd_daemon.address,
                                       state_dir=str(containerd_daemon.root.parent), **kw)
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        assert_clean(rt)
        rt.close()


def test_import_oci_archive_then_run_ls_rm(clean_runtime, tmp_path):
    rt = clean_runtime
    img = unique_image(f"kata.local/t{secrets.token_hex(3)}:v1")
    records = rt.import_image(write_oci_archive(img, tmp_path / "img.tar"))
    assert [(r.name, r.digest) for r in records] == [(img.ref, img.digest)]
    assert rt.resolve_image(img.ref) == img.digest
    assert (img.ref, img.digest) in [(r.name, r.digest) for r in rt.list_images()]
    status, lines = output(rt, img.digest, "sh", "-c", "cat /etc/kata-test-*")
    assert status == 0 and len(lines) == 1
    assert rt.remove_image(img.ref) == [img.ref]
    assert img.ref not in [r.name for r in rt.list_images()]
    assert not rt.images.has_blob(img.layer_digests[1])  # gc took what only it used
    with pytest.raises(KataError) as err:
        rt.remove_image(img.ref)
    assert err.value.reason == "image.not_found"


def test_import_docker_save_archive(clean_runtime, tmp_path):
    rt = clean_runtime
    img = unique_image(f"kata.local/d{secrets.token_hex(3)}:v1")
    records = rt.import_image(write_docker_archive(img, tmp_path / "docker.tar"))
    assert [r.name for r in records] == [img.ref]
    status, lines = output(rt, records[0].digest, "sh", "-c", "cat /etc/kata-test-*; echo; echo ok")
    assert status == 0 and lines[-1] == b"ok"
    rt.remove_image(img.ref)


def test_import_rejects_garbage(clean_runtime, tmp_path):
    import io
    import tarfile

    bad = tmp_path / "bad.tar"
    for content, what in ((b"not a tar", "not a tar archive"), (b"", "an empty file")):
        bad.write_bytes(content)
        with pytest.raises(KataError) as err:
            clean_runtime.import_image(bad)
        # the user's file: exit 2, one line (tarfile's message lists each decompressor tried)
        assert (err.value.reason, err.value.exit_code) == ("image.bad_archive", 2)
        assert what in err.value.message and "\n" not in err.value.message
        assert "docker save" in err.value.message
    with tarfile.open(bad, "w") as tar:
        data = b'[{"Config": "missing.json", "Layers": []}]'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(KataError) as err:
        clean_runtime.import_image(bad)
    assert (err.value.reason, err.value.exit_code) == ("image.bad_archive", 2)


def test_import_then_pull_from_docker_registry_gives_the_same_digest(connect, tmp_path):
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        ref = f"{host}/kata/busybox:1"
        img = unique_image(ref)
        push_image(url, "kata/busybox", "1", img)
        rt = connect(config=RuntimeConfig(registries={host: RegistryConfig(plain_http=True)}))
        imported = rt.import_image(write_oci_archive(img, tmp_path / "img.tar"))[0].digest
        rt.remove_image(ref)
        assert not rt.images.has_blob(img.digest)
        assert rt.resolve_image(ref) == img.digest  # from the registry now
        pulled = rt.pull_image(ref)
        assert pulled.digest == imported == img.digest
        assert rt.resolve_image(ref) == img.digest
        status, lines = output(rt, pulled.digest, "sh", "-c", "cat /etc/kata-test-*")
        assert status == 0 and len(lines) == 1
        rt.remove_image(ref)


def test_run_pulls_a_pinned_image_it_does_not_have(connect, tmp_path):
    with docker_registry(tmp_path) as url:
        host = url.removeprefix("http://")
        img = unique_image(f"{host}/kata/lazy:1")
        push_image(url, "kata/lazy", "1", img)
        rt = connect()  # 127.0.0.1 registries speak plain http without config
        status, _ = output(rt, f"{host}/kata/lazy@{img.digest}", "true")
        assert status == 0
        rt.remove_image(img.digest)
        offline = connect(offline=True)
        with pytest.raises(KataError) as err:
            output(offline, f"{host}/kata/lazy@{img.digest}", "true")
        assert err.value.reason == "image.not_found"
        with pytest.raises(KataError) as err:
            offline.resolve_image(f"{host}/kata/lazy:1")
        assert err.value.reason == "image.not_found"


def test_pull_multi_arch_index_with_bearer_auth(connect):
    img = unique_image("x")
    other = unique_image("y")
    index = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.digest,
         "size": len(other.manifest), "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.digest,
         "size": len(img.manifest), "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()
    manifests = {"multi": (MT_INDEX, index), img.digest: (
        "application/vnd.oci.image.manifest.v1+json", img.manifest)}
    with FakeRegistry(blobs=dict(img.blobs), manifests=manifests, bearer=True) as fake:
        rt = connect()
        ref = f"127.0.0.1:{fake.port}/kata/multi:multi"
        rec = rt.pull_image(ref)
        assert rec.digest == sha256(index)
        assert any(p.startswith("/token") for p in fake.requests)
        assert not any(other.digest in p for p in fake.requests)  # arm64 never fetched
        status, lines = output(rt, rec.digest, "sh", "-c", "cat /etc/kata-test-*")
        assert status == 0 and len(lines) == 1
        rt.remove_image(ref)


def test_credentials_from_docker_config(connect, tmp_path, monkeypatch):
    import base64

    img = unique_image("c")
    basic = "Basic " + base64.b64encode(b"kata:s3cret").decode()
    mt = "application/vnd.oci.image.manifest.v1+json"
    with FakeRegistry(blobs=dict(img.blobs), manifests={"1": (mt, img.manifest)}, bearer=True,
                      token_auth=basic) as fake:
        rt = connect()
        ref = f"127.0.0.1:{fake.port}/kata/c:1"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
        with pytest.raises(KataError) as err:
            rt.pull_image(ref)
        assert err.value.reason == "image.unauthorized"
        (tmp_path / "config.json").write_text(json.dumps(
            {"auths": {f"127.0.0.1:{fake.port}": {"auth": basic.removeprefix("Basic ")}}}))
        assert rt.pull_image(ref).digest == img.digest
        rt.remove_image(ref)


def test_mirror_is_tried_first(connect):
    img = unique_image("m")
    with FakeRegistry(blobs=dict(img.blobs), manifests={"1": (
            "application/vnd.oci.image.manifest.v1+json", img.manifest)}) as mirror:
        cfg = RuntimeConfig(registries={"registry.invalid": RegistryConfig(mirrors=(mirror.url,))})
        rt = connect(config=cfg)
        rec = rt.pull_image("registry.invalid/kata/m:1")
        assert rec.digest == img.digest
        rt.remove_image("registry.invalid/kata/m:1")


def test_a_blob_with_the_wrong_digest_is_refused_and_nothing_stored(connect):
    tag = secrets.token_hex(4)
    img = make_image([files_layer({f"/a-{tag}": b"good"}), files_layer({f"/b-{tag}": b"bad"})], "bad")
    good_layer, bad_layer = img.layer_digests
    blobs = dict(img.blobs)
    blobs[bad_layer] = blobs[bad_layer][:-10] + b"corrupted!"
    with FakeRegistry(blobs=blobs, manifests={"1": (
            "application/vnd.oci.image.manifest.v1+json", img.manifest)}) as fake:
        rt = connect()
        ref = f"127.0.0.1:{fake.port}/kata/bad:1"
        with pytest.raises(KataError) as err:
            rt.pull_image(ref)
        assert err.value.reason == "image.digest_mismatch"
        assert any(bad_layer in p for p in fake.requests)
        assert ref not in [r.name for r in rt.list_images()]
        # the good layer was written before the bad one arrived: the lease took it away
        for digest in (img.digest, img.config_digest, good_layer, bad_layer):
            assert not rt.images.has_blob(digest), digest


def test_a_manifest_with_the_wrong_digest_is_refused(connect):
    img, other = unique_image("a"), unique_image("b")
    mt = "application/vnd.oci.image.manifest.v1+json"
    with FakeRegistry(blobs=dict(img.blobs), manifests={img.digest: (mt, other.manifest)}) as fake:
        rt = connect()
        with pytest.raises(KataError) as err:
            rt.pull_image(f"127.0.0.1:{fake.port}/kata/a@{img.digest}")
        assert err.value.reason == "image.digest_mismatch"
        assert not rt.images.has_blob(other.digest)


def test_resolve_unknown_image_offline(connect):
    rt = connect(offline=True)
    with pytest.raises(KataError) as err:
        rt.resolve_image("kata.local/nothing-here:1")
    assert err.value.reason == "image.not_found"
    with pytest.raises(KataError) as err:
        rt.resolve_image("Not A Ref")
    assert err.value.reason == "image.bad_reference"


def test_an_image_removed_by_another_process_is_found_again(connect, tmp_path):
    img = unique_image(f"kata.local/gone{secrets.token_hex(3)}:1")
    archive = write_oci_archive(img, tmp_path / "img.tar")
    first, second = connect(), connect()
    first.import_image(archive)
    assert output(first, img.digest, "true")[0] == 0
    first.drain()  # the step's release (its lease on the image) is done
    second.remove_image(img.ref)  # first still has it cached as unpacked
    with pytest.raises(KataError) as err:
        output(first, img.digest, "true")
    assert err.value.reason == "image.not_found"
    second.import_image(archive)
    assert output(first, img.digest, "true")[0] == 0
    second.remove_image(img.ref)


def _helper(bin_dir, name: str, body: str) -> None:
    """A docker credential helper script ``docker-credential-<name>`` in ``bin_dir``."""
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_credential_helpers_from_docker_config(connect, tmp_path, monkeypatch):
    """credsStore and credHelpers are asked as docker asks them, against a real registry
    that demands htpasswd basic auth; without them the pull is refused."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    _helper(bin_dir, "kstore", f'read server; echo "$1 $server" >> {asked}\n'
            'echo \'{"ServerURL": "\'"$server"\'", "Username": "kata", "Secret": "s3cret-pw"}\'\n')
    _helper(bin_dir, "knone", 'echo "credentials not found in native keychain"; exit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config = tmp_path / "config.json"
    with docker_registry(tmp_path / "reg", users={"kata": "s3cret-pw"}) as url:
        host = url.removeprefix("http://")
        ref = f"{host}/kata/private:1"
        img = unique_image(ref)
        push_image(url, "kata/private", "1", img, auth=("kata", "s3cret-pw"))
        rt = connect(config=RuntimeConfig(registries={host: RegistryConfig(plain_http=True)}))
        config.write_text(json.dumps({"credsStore": "knone"}))  # the helper has nothing
        with pytest.raises(KataError) as err:
            rt.pull_image(ref)
        assert err.value.reason == "image.unauthorized"
        config.write_text(json.dumps({"credsStore": "knone", "credHelpers": {host: "kstore"}}))
        assert rt.pull_image(ref).digest == img.digest
        assert asked.read_text().splitlines() == [f"get {host}"]
        rt.remove_image(ref)
        # a new client (credentials are kept per client): credsStore alone
        config.write_text(json.dumps({"credsStore": "kstore"}))
        rt = connect(config=RuntimeConfig(registries={host: RegistryConfig(plain_http=True)}))
        assert rt.pull_image(ref).digest == img.digest
        assert asked.read_text().splitlines() == [f"get {host}"] * 2
        rt.remove_image(ref)
        config.write_text(json.dumps({"credsStore": "missing"}))
        rt = connect(config=RuntimeConfig(registries={host: RegistryConfig(plain_http=True)}))
        with pytest.raises(KataError) as err:
            rt.pull_image(ref)
        assert err.value.reason == "image.credential_helper"
        assert "docker-credential-missing is not on PATH" in err.value.message
