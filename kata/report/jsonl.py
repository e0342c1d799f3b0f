"""``--json``: one JSON object per event, one per line, for machines."""

from __future__ import annotations

from typing import TextIO

from kata.realise import events as ev
from kata.realise.wire import event_line  # noqa: F401 - the CLI writes its own events with it


class JsonReporter:
    """Each event as one JSON object on its own line, with ``version`` and ``time`` (the
    moment it was emitted); the fields are documented in docs/json.md."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ev.Event) -> None:
        self.stream.write(event_line(ev.to_dict(event)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def error_event(err) -> dict[str, object]:  # noqa: ANN001
    """The ``error`` event of a KataError or StoreError: ``reason``, ``message``,
    ``exit_code``, and ``file``/``line``/``column`` or ``object`` when it has them."""
    data: dict[str, object] = {"event": "error", "reason": err.reason, "message": err.message,
                               "exit_code": getattr(err, "exit_code", 1)}
    position = getattr(err, "position", None)
    if position is not None:
        data.update(file=position.file, line=position.line, column=position.column)
    if getattr(err, "obj", None):
        data["object"] = err.obj
    return data
