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
