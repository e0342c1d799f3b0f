"""kata.remote.cas and kata.remote.trees against a real BuildGrid (cache-only): blobs in
batches and over ByteStream, Kata trees as REAPI Directory/Tree messages and back, and
BuildGrid's own CLI reading what Kata uploaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kata.remote import trees
from kata.remote.cas import Digest, RemoteError, connect, digest_of
from kata.remote.config import RemoteConfig, parse_url
from store import Store
from support.buildgrid import buildgrid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bg(tmp_path_factory):
    with buildgrid(tmp_path_factory.mktemp("bgd")) as server:
        yield server


def remote_for(server, timeout: float = 10):
    target, tls = parse_url(server.url)
    return connect(RemoteConfig(url=server.url, target=target, tls=tls, timeout=timeout))


def _sample(root: Path) -> None:
    (root / "dist" / "empty").mkdir(parents=True)
    (root / "dist" / "a.txt").write_text("hello\n")
    (root / "dist" / "same.txt").write_text("hello\n")  # duplicate content: one blob
    (root / "dist" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "dist" / "run.sh", 0o755)
    (root / "dist" / "sub" / "deeper").mkdir(parents=True)
    (root / "dist" / "sub" / "deeper" / "x").write_bytes(b"\0\1\2" * 1000)
    os.symlink("../a.txt", root / "dist" / "sub" / "link")
    (root / "dist" / "big.bin").write_bytes(os.urandom(5 << 20))  # over the 4 MiB batch limit
    (root / "dist" / "zero").write_bytes(b"")
    (root / "dist" / "ünï").write_text("utf-8 name\n")


def test_blobs_batch_and_bytestream(bg):
    with remote_for(bg) as r:
        caps = r.cas.capabilities()
        assert caps.cache_capabilities.max_batch_total_size_bytes > 0
        small = b"small blob"
        big = os.urandom(r.cas.batch_limit + 1000)
        blobs = {(d.hash, d.size_bytes): (d, data) for data in (small, big)
                 for d in [digest_of(data)]}
        missing = r.cas.find_missing([d for d, _ in blobs.values()])
        assert len(missing) == 2
        r.cas.upload(blobs)
        assert r.cas.find_missing([d for d, _ in blobs.values()]) == []
        got = r.cas.read_many([d for d, _ in blobs.values()])
        assert got[digest_of(small).hash] == small and got[digest_of(big).hash] == big
        assert b"".join(r.cas.read(digest_of(big))) == big


def test_batches_hold_at_most_max_batch_blobs_each_way(bg):
    """Small blobs go and come 500 a call at most (BuildGrid spends less CPU per blob on
    such batches than on ones filled to its byte limit), and all of them arrive."""
    with remote_for(bg) as r:
        r.cas.capabilities()
        datas = [os.urandom(64) + i.to_bytes(4, "big") for i in range(1200)]
        blobs = {(d.hash, d.size_bytes): (d, data) for data in datas for d in [digest_of(data)]}
        sizes: list[int] = []
        for name in ("BatchUpdateBlobs", "BatchReadBlobs"):
            real = getattr(r.cas._cas, name)

            def counted(req, *a, real=real, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
                sizes.append(len(getattr(req, "requests", None) or req.digests))
                return real(req, *a, **kw)

            setattr(r.cas._cas, name, counted)
        r.cas.upload(blobs)
        assert sizes == [500, 500, 200]
        got = r.cas.read_many([d for d, _ in blobs.values()])
        assert sizes[3:] == [500, 500, 200]
        assert sorted(got.values()) == sorted(datas)


def test_a_bytestream_write_cut_across_odd_chunks_arrives_whole(bg):
    """Pieces that are not whole messages are carried over (several messages per piece,
    a remainder joined to the next piece, an empty last message)."""
    from kata.remote import cas as cas_mod

    step = cas_mod._STREAM_CHUNK
    with remote_for(bg) as r:
        for data in (os.urandom(3 * step + 12_345), os.urandom(2 * step)):
            d = digest_of(data)
            cuts = [0, 1, step + 7, 2 * step + 1, len(data)]
            r.cas.write(d, lambda data=data, cuts=cuts: iter(
                data[a:b] for a, b in zip(cuts, cuts[1:])))
            assert r.cas.find_missing([d]) == []
            assert b"".join(r.cas.read(d)) == data


def test_tree_round_trip_and_bgd_reads_it(bg, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _sample(src)
    a = Store.open(tmp_path / "a")
    b = Store.open(tmp_path / "b")
    tree = a.put_tree(src, paths=("dist",))
    with remote_for(bg) as r:
        r.cas.capabilities()
        up = trees.upload_tree(r.cas, a, tree)
        again = trees.upload_tree(r.cas, a, tree)  # nothing missing the second time
        assert again == up
        trees.download_tree(r.cas, b, tree, up.tree_digest)
    assert b.has_blob(tree)
    out = tmp_path / "out"
    b.extract_tree(tree, out)
    assert (out / "dist" / "sub" / "link").readlink() == Path("../a.txt")
    assert os.stat(out / "dist" / "run.sh").st_mode & 0o111
    assert (out / "dist" / "empty").is_dir()
    # a second REAPI client (BuildGrid's CLI) reads the Directory tree Kata uploaded
    dest = tmp_path / "bgd-out"
    res = bg.bgd("cas", "download-dir", f"{up.root_digest.hash}/{up.root_digest.size_bytes}",
                 str(dest))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (dest / "dist" / "a.txt").read_text() == "hello\n"
    assert (dest / "dist" / "big.bin").read_bytes() == (src / "dist" / "big.bin").read_bytes()
    assert os.stat(dest / "dist" / "run.sh").st_mode & 0o111
    assert (dest / "dist" / "ünï").read_text() == "utf-8 name\n"
    a.close()
    b.close()


def test_a_tree_that_does_not_match_is_refused(bg, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    a = Store.open(tmp_path / "a")
    tree = a.put_tree(src, paths=("f",))
    with remote_for(bg) as r:
        up = trees.upload_tree(r.cas, a, tree)
        with pytest.raises(RemoteError) as err:
            trees.download_tree(r.cas, a, "sha256:" + "0" * 64, up.tree_digest)
        assert err.value.reason == "remote.bad_answer"
    a.close()


def test_unreachable_remote_is_a_remote_error():
    from support.buildgrid import _free_port

    url = f"grpc://127.0.0.1:{_free_port()}"
    target, tls = parse_url(url)
    with connect(RemoteConfig(url=url, target=target, tls=tls, timeout=2)) as r:
        with pytest.raises(RemoteError) as err:
            r.cas.find_missing([Digest(hash="a" * 64, size_bytes=1)])
        assert err.value.reason in ("remote.unavailable", "remote.deadline")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import subprocess

    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def _jwt(secret: str) -> str:
    """An HS256 token BuildGrid accepts, made with the PyJWT of BuildGrid's virtualenv."""
    import subprocess

    from support.buildgrid import VENV

    code = ("import jwt, sys, time; print(jwt.encode({'sub': 'kata-test', "
            "'exp': int(time.time()) + 3600}, sys.argv[1], algorithm='HS256'))")
    return subprocess.run([str(VENV / "bin" / "python"), "-c", code, secret], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_tls_and_bearer_token(tmp_path):
    """grpcs:// with the server's CA, and a bearer token from a file; without the token
    the remote refuses (a RemoteError the cache turns into one warning)."""
    from support.buildgrid import BuildGridConfig

    key, cert = _self_signed(tmp_path)
    secret = tmp_path / "jwt.secret"
    secret.write_text("a-shared-hs256-secret-for-the-test")
    token = tmp_path / "token"
    token.write_text(_jwt(secret.read_text()) + "\n")
    config = BuildGridConfig(tls_key=key, tls_cert=cert, auth_secret=secret)
    with buildgrid(tmp_path / "bgd", config) as server:
        target, tls = parse_url(server.url)
        assert tls
        ok = RemoteConfig(url=server.url, target=target, tls=True, ca=cert, token_file=token)
        with connect(ok) as r:
            r.cas.capabilities()
            r.cas.upload({(d.hash, d.size_bytes): (d, b"over tls") for d in [digest_of(b"over tls")]})
            assert r.cas.read_many([digest_of(b"over tls")]) == {digest_of(b"over tls").hash: b"over tls"}
        anonymous = RemoteConfig(url=server.url, target=target, tls=True, ca=cert)
        with connect(anonymous) as r:
            with pytest.raises(RemoteError) as err:
                r.cas.find_missing([digest_of(b"over tls")])
            assert "UNAUTHENTICATED" in err.value.message


class _Unreadable:
    """A store whose blobs must not be read (the memo must answer instead)."""

    def __init__(self, store: Store) -> None:
        self.state_dir = store.state_dir

    def open_blob(self, digest: str):  # noqa: ANN201
        raise AssertionError(f"read {digest} again")


def test_a_tree_is_hashed_once_per_host(tmp_path):
    """The memo (trees.memo_path): a tree uploaded (or downloaded) once is not read nor
    hashed again while the remote holds all of it; a remote that lost it gets it again
    from the content; a memo that does not match its checksum is ignored."""
    src = tmp_path / "src"
    src.mkdir()
    _sample(src)
    a = Store.open(tmp_path / "a")
    b = Store.open(tmp_path / "b")
    tree = a.put_tree(src, paths=("dist",))
    with buildgrid(tmp_path / "bgd1") as one:
        with remote_for(one) as r:
            r.cas.capabilities()
            up = trees.upload_tree(r.cas, a, tree, memo=True)
            assert Path(trees.memo_path(a, tree)).is_file()
            assert trees.upload_tree(r.cas, _Unreadable(a), tree, memo=True) == up
            trees.download_tree(r.cas, b, tree, up.tree_digest, memo=True)
            assert trees.upload_tree(r.cas, _Unreadable(b), tree, memo=True) == up
    with buildgrid(tmp_path / "bgd2") as two:  # a new, empty remote: sent from the content
        with remote_for(two) as r:
            r.cas.capabilities()
            with pytest.raises(AssertionError, match="read"):
                trees.upload_tree(r.cas, _Unreadable(a), tree, memo=True)
            assert trees.upload_tree(r.cas, a, tree, memo=True) == up
            memo = Path(trees.memo_path(a, tree))
            memo.write_bytes(memo.read_bytes()[:-1] + b"\0")  # torn or tampered
            with pytest.raises(AssertionError, match="read"):
                trees.upload_tree(r.cas, _Unreadable(a), tree, memo=True)
    a.close()
    b.close()


def test_get_tree_answers_every_directory_in_one_call(bg, tmp_path):
    from kata.executor import files

    _sample(tmp_path)
    packed = files.pack_dir(tmp_path / "dist")
    with remote_for(bg) as r:
        r.cas.capabilities()
        files.upload(r.cas, packed.directories, packed.files)
        got = r.cas.get_tree(packed.root)
        assert {h: files.message_bytes(d) for h, d in got.items()} == packed.directories
        # the worker's path: the same answer through files.directories
        assert files.directories(r.cas, packed.root) == got


def test_blobs_known_present_are_neither_asked_about_nor_sent(bg, tmp_path):
    from kata.executor import files

    (tmp_path / "d").mkdir()
    for i in range(30):
        (tmp_path / "d" / f"f{i}").write_bytes(os.urandom(4096))  # over the no-ask limit
    packed = files.pack_dir(tmp_path / "d")
    with remote_for(bg) as r:
        r.cas.capabilities()
        present: set[str] = set()
        assert files.upload(r.cas, packed.directories, packed.files, present) == 31
        assert set(packed.files) | set(packed.directories) <= present
        calls = []
        r.cas.find_missing = lambda ds: calls.append(list(ds)) or []  # type: ignore[method-assign]
        assert files.upload(r.cas, packed.directories, packed.files, present) == 0
        assert calls == [] or calls == [[]]

def _prefetch_warnings(url: str) -> list[str]:
    """The warnings a run's remote cache at ``url`` gives when it prefetches one key."""
    from kata.remote.cache import RemoteCache

    target, tls = parse_url(url)
    lines: list[str] = []
    cache = RemoteCache(RemoteConfig(url=url, target=target, tls=tls, timeout=5),
                        warn=lines.append)
    try:
        cache.prefetch(["sha256:" + "a" * 64])
    finally:
        cache.close()
    return lines



def test_grpcs_against_a_plaintext_server_warns_whole_with_the_fix(bg):
    """The warning is not cut mid-word, and it says what the handshake failure means."""
    lines = _prefetch_warnings(bg.url.replace("grpc://", "grpcs://"))
    assert len(lines) == 1, lines
    assert "use grpc:// instead of grpcs://" in lines[0]
    assert re.search(r"going on with the local store only; `kata doctor --remote-cache "
                     r"grpcs?://127\.0\.0\.1:\d+` says what to fix$", lines[0]), lines[0]


def test_an_absolute_symlink_goes_through_buildgrid_unchanged(bg, tmp_path):
    """BuildGrid's capabilities say ``symlink_absolute_path_strategy: DISALLOWED``, which
    REAPI defines for what a server *produces* in outputs; it takes and serves a Directory
    naming an absolute target as any other. A Kata tree with one comes back on a second
    store byte for byte, and BuildGrid's own CLI lays the link down as it is."""
    src = tmp_path / "src"
    (src / "dist").mkdir(parents=True)
    (src / "dist" / "f").write_text("x\n")
    os.symlink("/usr/bin/env", src / "dist" / "abs")
    a = Store.open(tmp_path / "a")
    b = Store.open(tmp_path / "b")
    tree = a.put_tree(src, paths=("dist",))
    with remote_for(bg) as r:
        caps = r.cas.capabilities()
        assert caps.cache_capabilities.symlink_absolute_path_strategy == 1  # DISALLOWED
        up = trees.upload_tree(r.cas, a, tree)
        trees.download_tree(r.cas, b, tree, up.tree_digest)
    out = tmp_path / "out"
    b.extract_tree(tree, out)
    assert (out / "dist" / "abs").readlink() == Path("/usr/bin/env")
    dest = tmp_path / "bgd-out"
    res = bg.bgd("cas", "download-dir", f"{up.root_digest.hash}/{up.root_digest.size_bytes}",
                 str(dest))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (dest / "dist" / "abs").readlink() == Path("/usr/bin/env")
    a.close()
    b.close()


def _spy_reads(cas) -> list[int]:
    """Count the digests ``cas.read_many`` is asked for, call by call (the real call runs)."""
    calls: list[int] = []
    real = cas.read_many

    def read_many(digests):
        digests = list(digests)
        calls.append(len(digests))
        return real(digests)

    cas.read_many = read_many
    return calls


def test_a_large_tree_also_travels_as_its_archive(bg, tmp_path, monkeypatch):
    # PACK_FILES and PACK_MEAN_BYTES are a size policy; the behaviour is the same for any
    monkeypatch.setattr(trees, "PACK_FILES", 3)
    monkeypatch.setattr(trees, "PACK_MEAN_BYTES", 1 << 30)
    src = tmp_path / "src"
    src.mkdir()
    _sample(src)
    a, b = Store.open(tmp_path / "a"), Store.open(tmp_path / "b")
    tree = a.put_tree(src, paths=("dist",))
    with remote_for(bg) as r:
        r.cas.capabilities()
        up = trees.upload_tree(r.cas, a, tree)
        with a.open_blob(tree) as blob:
            size = len(blob.read())
        archive = Digest(hash=tree.partition(":")[2], size_bytes=size)
        assert r.cas.find_missing([archive]) == []  # the archive blob is in CAS...
        calls = _spy_reads(r.cas)
        trees.download_tree(r.cas, b, tree, up.tree_digest)
        assert calls == [1]  # ...and B reads the Tree, then that one blob, no file blobs
    assert b.read_blob(tree) == a.read_blob(tree)
    # the Directory tree is complete without it: BuildGrid's own client reads it
    dest = tmp_path / "bgd-out"
    res = bg.bgd("cas", "download-dir", f"{up.root_digest.hash}/{up.root_digest.size_bytes}",
                 str(dest))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (dest / "dist" / "big.bin").read_bytes() == (src / "dist" / "big.bin").read_bytes()
    assert (dest / "dist" / "sub" / "link").readlink() == Path("../a.txt")
    a.close()
    b.close()


def test_without_the_archive_the_files_come_one_by_one(bg, tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(8):
        (src / "d" / f"f{i}").write_text(f"file {i} of a tree uploaded unpacked\n")
    a, b = Store.open(tmp_path / "a"), Store.open(tmp_path / "b")
    tree = a.put_tree(src, paths=("d",))
    with remote_for(bg) as r:
        r.cas.capabilities()
        monkeypatch.setattr(trees, "PACK_FILES", 1000)  # an uploader that does not pack
        up = trees.upload_tree(r.cas, a, tree)
        monkeypatch.setattr(trees, "PACK_FILES", 3)  # a downloader that would use it
        calls = _spy_reads(r.cas)
        trees.download_tree(r.cas, b, tree, up.tree_digest)
        assert calls == [1, 8]  # the Tree, then the files
    assert b.read_blob(tree) == a.read_blob(tree)
    a.close()
    b.close()


def test_a_packed_tree_named_with_another_trees_tree_gets_its_own_bytes(bg, tmp_path,
                                                                        monkeypatch):
    """A record pairing Kata tree X with the REAPI Tree of Y (a buggy or hostile writer)
    can only ever bring X's own bytes (the archive is read by X's digest and checked), and
    the pairing is not remembered: the memo would later upload Y's Tree in X's name."""
    monkeypatch.setattr(trees, "PACK_FILES", 1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    (src / "g").write_text("two\n")
    a = Store.open(tmp_path / "a")
    tree = a.put_tree(src, paths=("f",))
    other = a.put_tree(src, paths=("g",))  # same shape, other content: same archive size
    b = Store.open(tmp_path / "b")
    with remote_for(bg) as r:
        up = trees.upload_tree(r.cas, a, tree)
        trees.upload_tree(r.cas, a, other)
        trees.download_tree(r.cas, b, other, up.tree_digest, memo=True)
        assert b.read_blob(other) == a.read_blob(other)
        assert not os.path.exists(trees.memo_path(b, other))
        monkeypatch.setattr(trees, "PACK_FILES", 1000)  # the files one by one: refused
        c = Store.open(tmp_path / "c")
        with pytest.raises(RemoteError) as err:
            trees.download_tree(r.cas, c, other, up.tree_digest, memo=True)
        assert err.value.reason == "remote.bad_answer"
        assert not c.has_blob(other)
        assert not os.path.exists(trees.memo_path(c, other))
    a.close()
    b.close()
    c.close()


def test_read_ahead_hands_on_every_chunk_an_error_and_an_early_stop():
    import threading
    import time as _time

    assert list(trees._ahead(iter([b"a", b"b", b"c"]), 1)) == [b"a", b"b", b"c"]

    def failing():
        yield b"x"
        raise RemoteError("remote.bad_answer", "blob does not match its digest")

    got = []
    with pytest.raises(RemoteError) as err:
        for c in trees._ahead(failing(), 4):
            got.append(c)
    assert got == [b"x"] and err.value.reason == "remote.bad_answer"

    closed = threading.Event()

    def endless():
        try:
            while True:
                yield b"y"
        finally:
            closed.set()

    it = trees._ahead(endless(), 2)
    assert next(it) == b"y"
    it.close()  # the caller gives up: the reader stops and closes its source
    assert closed.wait(5)
    deadline = _time.monotonic() + 5
    while any(t.name == "kata-cas-read" for t in threading.enumerate()):
        assert _time.monotonic() < deadline, "the read-ahead thread did not stop"
        _time.sleep(0.01)


def test_a_blob_the_disk_cas_lost_to_a_power_loss_is_refused(bg):
    """BuildGrid's disk CAS does not fsync: a power loss can leave a blob's file empty,
    and BuildGrid then serves it as b"" (docs/remote.md). A batch read must refuse it by
    its digest's size, as ByteStream reads do, not hand b"" on as its contents."""
    data = b"a record file that the power loss truncated\n"
    d = digest_of(data)
    with remote_for(bg) as r:
        r.cas.upload({(d.hash, d.size_bytes): (d, data)})
        [path] = [p for p in (bg.workdir / "cas").rglob("*") if p.is_file() and d.hash[2:] in p.name]
        path.write_bytes(b"")
        with pytest.raises(RemoteError) as err:
            r.cas.read_many([d])
    assert err.value.reason == "remote.bad_answer", err.value


def test_grpc_against_a_tls_server_warns_with_the_fix(tmp_path):
    """The other mismatch: a grpc:// URL to a server that speaks TLS closes the connection
    ('Socket closed'); the run's one warning says to use grpcs://, as the handshake
    failure's says the reverse."""
    from support.buildgrid import BuildGridConfig

    key, cert = _self_signed(tmp_path)
    with buildgrid(tmp_path / "tls", BuildGridConfig(tls_key=key, tls_cert=cert)) as server:
        lines = _prefetch_warnings(server.url.replace("grpcs://", "grpc://"))
    assert len(lines) == 1, lines
    assert "use grpcs://" in lines[0], lines
    assert re.search(r"going on with the local store only; `kata doctor --remote-cache "
                     r"grpcs?://127\.0\.0\.1:\d+` says what to fix$", lines[0]), lines[0]
