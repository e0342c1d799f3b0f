"""``--json``: one JSON object per event, one per line, for machines."""

from __future__ import annotations

import json
from typing import TextIO

from kata.realise import events as ev


class JsonReporter:
    """Each event as one JSON object on its own line, with ``version`` and ``time`` (the
    moment it was emitted); the fields are documented in docs/json.md."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ev.Event) -> None:
        self.stream.write(json.dumps(ev.stamped(ev.to_dict(event)), ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def event_line(data: dict[str, object]) -> str:
    """A JSON line for an event the CLI writes itself (``plan``, ``skip``, ``error``),
    stamped like the realiser's."""
    return json.dumps(ev.stamped(data), ensure_ascii=False)
