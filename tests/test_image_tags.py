"""kata.runtimes.tags: the host's tag -> digest record (pure, a temp dir)."""

from __future__ import annotations

import json
import threading

from kata.runtimes.tags import FORMAT, ImageTags, tag_name

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_names_are_canonical_and_pinned_references_are_not_recorded():
    assert tag_name("busybox") == "docker.io/library/busybox:latest"
    assert tag_name("docker.io/library/busybox:latest") == "docker.io/library/busybox:latest"
    assert tag_name("host:5000/a/b:1") == "host:5000/a/b:1"
    assert tag_name(f"busybox@{A}") is None
    assert tag_name("Not A Ref") is None


def test_record_get_refresh_forget(tmp_path):
    path = tmp_path / "state" / "image-tags.json"
    tags = ImageTags(path)
    assert tags.get("busybox") is None  # no file yet
    tags.record({"busybox": A, "kata.local/x:1": B, f"busybox@{A}": A})
    assert json.loads(path.read_text()) == {"format": FORMAT, "tags": {
        "docker.io/library/busybox:latest": A, "kata.local/x:1": B}}
    fresh = ImageTags(path)
    assert fresh.get("docker.io/library/busybox") == A and fresh.get("kata.local/x:1") == B
    fresh.record({"busybox:latest": B})  # --pull: the tag moved
    assert ImageTags(path).get("busybox") == B
    fresh.forget(digests=[B])  # `kata image rm <digest>`: every tag on it
    assert ImageTags(path).all() == {}


def test_a_damaged_or_foreign_file_reads_as_empty(tmp_path):
    path = tmp_path / "image-tags.json"
    for text in ("{not json", "[]", '{"format": "other", "tags": {}}',
                 json.dumps({"format": FORMAT, "tags": {"busybox": "latest"}})):
        path.write_text(text)
        assert ImageTags(path).all() == {}
    ImageTags(path).record({"busybox": A})  # and is rewritten whole
    assert ImageTags(path).get("busybox") == A


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "image-tags.json"
    digest = "sha256:" + "c" * 64

    def write(i: int) -> None:
        ImageTags(path).record({f"kata.local/t{i}:1": digest})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ImageTags(path).all() == {f"kata.local/t{i}:1": digest for i in range(20)}
