"""A remote cache that refuses this host's writes (a read-only client: SECURITY.md tells a
team to give write access only to machines that run trusted pipelines) stays in use for
reading. Real BuildGrid, its action cache with ``allow-updates: false``."""

from __future__ import annotations

from pathlib import Path

from kata.remote.cache import RemoteCache
from kata.remote.config import RemoteConfig, parse_url
from kata.remote.pending import DIR_NAME as PENDING_DIR, PendingUploads
from store import Realisation, Store
from support.buildgrid import BuildGridConfig, buildgrid, memory_cas


class ReadOnly(BuildGridConfig):
    def render(self, workdir: Path, port: int) -> str:
        text = super().render(workdir, port)
        assert "allow-updates: true" in text
        return text.replace("allow-updates: true", "allow-updates: false")


def test_a_remote_that_refuses_writes_is_still_read_and_queues_nothing(tmp_path):
    """It was left for the run after the first refused upload ("unavailable ... going on with
    the local store only"): every later lookup missed and a planned remote hit was rebuilt;
    the refused upload also stayed in the pending queue, so every later run began by sending
    it again, was refused, and left the remote before its own lookups."""
    with buildgrid(tmp_path / "bg", ReadOnly(storages=memory_cas("64M"))) as bg:
        warned: list[str] = []
        config = RemoteConfig(url=bg.url, target=parse_url(bg.url)[0], timeout=10)
        state = tmp_path / "state"
        with Store.open(tmp_path / "store") as store:
            log = store.put_blob(b"built it\n")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "f").write_text("x")
            outputs = store.put_tree(tmp_path / "out", paths=("f",))
            real = Realisation(outputs=outputs, log=log, exit_status=0, duration=1.0, host="h",
                               created=1.0, kind="step", run="r", pipeline="p", step="s",
                               stack=(outputs,))
            for _ in range(2):  # the second run: nothing queued by the first to send again
                remote = RemoteCache(config, warn=warned.append, state_dir=state)
                remote.resume(store)
                remote.prefetch(["a" * 64])
                remote.upload(store, ("b" * 64,), real)
                remote.flush()
                assert remote.enabled, remote.down_reason
                asked = remote.stats["asked"]
                assert remote.lookup("c" * 64) is None
                assert remote.stats["asked"] == asked + 1  # still asked
                remote.close()
        assert len(warned) == 2, warned  # one line per run that tried to write
        assert all(w.startswith(f"remote cache {bg.url} refuses this host's results (") and
                   "they stay local; lookups go on" in w for w in warned), warned
        queue = PendingUploads(state / PENDING_DIR)
        assert queue.names() == [], queue.names()  # nothing left to send again
