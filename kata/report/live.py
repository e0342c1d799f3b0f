"""A live view on a terminal: the plain lines scroll, running steps stay at the bottom.

One line per running step with its elapsed time and its last output line, and
a progress count. Output is not scrolled (it is in ``kata logs``), except the
tail of a step that failed.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TextIO

from kata.realise import events as ev
from kata.report.plain import line

_TAIL = 20


class LiveReporter:
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream)
        self.total = 0
        self.finished = 0
        self.running: dict[str, float] = {}
        self.last: dict[str, str] = {}
        self.tails: dict[str, deque[str]] = {}
        self.live = Live(console=self.console, refresh_per_second=8, transient=True,
                         get_renderable=self._render)
        self.live.start()

    def _render(self):  # noqa: ANN202
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for name, started in list(self.running.items()):
            table.add_row(Text("⠿", style="cyan"), Text(name, style="bold"),
                          Text(f"{now - started:5.1f}s", style="dim"),
                          Text(self.last.get(name, "")[:100], style="dim", no_wrap=True))
        table.add_row("", Text(f"{self.finished}/{self.total} steps", style="dim"), "", "")
        return table

    def __call__(self, event: ev.Event) -> None:
        from rich.text import Text

        if isinstance(event, ev.Parsed):
            self.total = len(event.planned)
        elif isinstance(event, ev.StepStarted):
            self.running[event.step] = time.monotonic()
            self.tails[event.step] = deque(maxlen=_TAIL)
        elif isinstance(event, ev.OutputLine):
            self.last[event.step] = event.text
            self.tails.setdefault(event.step, deque(maxlen=_TAIL)).append(event.text)
            return
        elif isinstance(event, (ev.StepPassed, ev.StepFailed, ev.StepSkipped)):
            self.running.pop(event.step, None)
            self.finished += 1
        text = line(event)
        if text is not None:
            style = {"[PASS]": "green", "[FAIL]": "red", "[SKIP]": "yellow", "[WARN]": "yellow", "[RETRY]": "yellow",
                     "[CACHE]": "blue"}.get(text.split(" ", 1)[0], "")
            self.console.print(Text(text, style=style), highlight=False)
        if isinstance(event, ev.StepFailed):
            for out in self.tails.get(event.step, ()):
                self.console.print(Text(f"{event.step} | {out}", style="dim"), highlight=False)
        self.live.refresh()

    def close(self) -> None:
        self.live.stop()
