"""Small contracts that sentinels and shared exception objects used to blur."""

from __future__ import annotations

from types import SimpleNamespace


def test_a_queued_steps_notice_is_said_once_and_keeps_when_it_was_queued(monkeypatch):
    """_LiveLog marked "notice said" by setting ``queued_since`` to -1.0: a time that was
    a flag, which anyone reading it (how long has it waited?) took for a time."""
    from kata.executor import client

    now = [100.0]
    monkeypatch.setattr(client.time, "monotonic", lambda: now[0])
    runtime = SimpleNamespace(instance="", url="grpc://scheduler:1", streaming=False)
    lines: list[bytes] = []
    live = client._LiveLog(runtime, lambda stream, line: lines.append(line))  # type: ignore[arg-type]
    live._queued(True)
    for t in (110.0, 100.0 + client.QUEUED_NOTICE, 100.0 + 3 * client.QUEUED_NOTICE):
        now[0] = t
        live._queued(True)
    assert len(lines) == 1 and b"queued for 20s" in lines[0], lines
    assert live.queued_since == 100.0  # still when it was queued
    live._queued(False)  # a worker took it
    assert live.queued_since is None
    live._queued(True)  # given back: a new wait, told again after QUEUED_NOTICE
    now[0] += client.QUEUED_NOTICE
    live._queued(True)
    assert len(lines) == 2, lines


def test_a_stopped_pulls_last_event_reads_as_stopped_not_pulled():
    """The plain view's [PULL] line for a pull's last event said "N layers, SIZE" as for a
    finished pull; a stopped one says so."""
    from kata.realise import events as ev
    from kata.report.plain import line

    done = dict(image="r/i:1", layers_done=1, layers_total=3, bytes_done=2 << 20,
                bytes_total=9 << 20, done=True)
    assert line(ev.ImagePull(**done)) == "[PULL] r/i:1: 3 layers, 2.1MB"
    assert line(ev.ImagePull(**done, stopped=True)) == \
        "[PULL] r/i:1: stopped after 1/3 layers, 2.1MB"
