"""``--json``: one JSON object per event, one per line, for machines."""

from __future__ import annotations

import json
from typing import TextIO

from kata.realise import events as ev


class JsonReporter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: ev.Event) -> None:
        self.stream.write(json.dumps(ev.to_dict(event), ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass
