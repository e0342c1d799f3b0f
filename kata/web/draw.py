"""Pictures as server-rendered SVG: a run's DAG and timeline, the cache page's charts.

Pure functions from the dashboard's values to SVG text (every string escaped). No script
and no chart library: the browser draws what the server sends, tests read the elements
(``class``/``data-*`` attributes name what each shape stands for).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from kata.web.data import RunView, StepView

NODE_W, NODE_H, COL_W, ROW_H, PAD = 190, 38, 250, 52, 16


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def levels(steps: Sequence[StepView]) -> dict[str, int]:
    """Each step's column: 0 without dependencies, else one past its deepest one."""
    by_name = {s.name: s for s in steps}
    out: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in out:
            deps = [d for d in by_name[name].needs if d in by_name and d not in seen]
            out[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return out[name]

    for s in steps:
        level(s.name)
    return out


def dag_svg(view: RunView) -> str:
    """The run's DAG, left to right: one box per step coloured by status (class
    ``status-<status>``), a cache hit marked (class ``hit``, dashed, "cached"), matrix
    instances of one step boxed together under its name (class ``matrix-group``), an
    arrow per dependency (class ``edge``, ``data-from``/``data-to``)."""
    steps = view.steps
    if not steps:
        return '<svg class="dag" width="200" height="40"><text x="8" y="24">no steps</text></svg>'
    col = levels(steps)
    columns: dict[int, list[StepView]] = {}
    for s in steps:  # record order is pipeline order: instances of a matrix stay together
        columns.setdefault(col[s.name], []).append(s)
    pos: dict[str, tuple[float, float]] = {}
    groups: list[tuple[str, float, float, float]] = []  # name, x, y top, y bottom
    height = 0.0
    for c, members in sorted(columns.items()):
        y = PAD + 18.0
        i = 0
        while i < len(members):
            group = members[i].group
            j = i
            while j < len(members) and members[j].group == group:
                j += 1
            block = members[i:j]
            boxed = len(block) > 1 and any(m.name != m.group for m in block)
            if boxed:
                y += 16  # room for the group's label
            top = y
            for m in block:
                pos[m.name] = (PAD + c * COL_W, y)
                y += ROW_H
            if boxed:
                groups.append((group, PAD + c * COL_W, top, y - ROW_H + NODE_H))
                y += 10
            i = j
        height = max(height, y)
    width = PAD * 2 + max(columns) * COL_W + NODE_W + 8
    out = [f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height + PAD:.0f}" viewBox="0 0 {width:.0f} {height + PAD:.0f}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
           'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#7a8699"/></marker></defs>']
    for name, x, top, bottom in groups:
        out.append(f'<g class="matrix-group" data-group="{escape(name)}">'
                   f'<rect x="{x - 7}" y="{top - 20}" width="{NODE_W + 14}" '
                   f'height="{bottom - top + 27}" rx="8"/>'
                   f'<text x="{x}" y="{top - 7}">{escape(_short(name, 26))} (matrix)</text></g>')
    for s in steps:
        x2, y2 = pos[s.name]
        for d in s.needs:
            if d not in pos:
                continue
            x1, y1 = pos[d]
            x1, y1, y2m = x1 + NODE_W, y1 + NODE_H / 2, y2 + NODE_H / 2
            mid = (x1 + x2) / 2
            crit = " critical" if s.critical and view.step(d) and view.step(d).critical else ""  # type: ignore[union-attr]
            out.append(f'<path class="edge{crit}" data-from="{escape(d)}" '
                       f'data-to="{escape(s.name)}" d="M{x1},{y1} C{mid},{y1} {mid},{y2m} '
                       f'{x2 - 2},{y2m}" marker-end="url(#arrow)"/>')
    for s in steps:
        x, y = pos[s.name]
        r = s.record
        classes = f"node status-{escape(r.status)}" + (" hit" if s.hit else "") + \
            (" critical" if s.critical else "")
        detail = "cached" if s.hit else r.status if r.status == "skipped" else \
            f"{r.status} · {_fmt_seconds(r.duration)}"
        label = s.name if s.name == s.group else s.name[len(s.group):].strip()
        out.append(f'<g class="{classes}" data-step="{escape(s.name)}">'
                   f'<title>{escape(s.name)}: {escape(r.status)}'
                   f'{" (cache hit)" if s.hit else ""}</title>'
                   f'<a href="#step-{escape(_anchor(s.name))}">'
                   f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
                   f'<text class="name" x="{x + 9}" y="{y + 16}">{escape(_short(label, 27))}</text>'
                   f'<text class="detail" x="{x + 9}" y="{y + 30}">{escape(detail)}</text></a></g>')
    out.append("</svg>")
    return "".join(out)


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def timeline_svg(view: RunView) -> str:
    """One row per step that has phase times: a bar per phase on a time axis from the
    run's start (class ``bar phase-queued``/``phase-pulling``/``phase-running``), a hit as
    a marker (class ``bar phase-hit``); the critical path's rows carry class
    ``critical``. Empty (a note) for records without phase times."""
    rows = [s for s in view.steps if s.record.phases is not None]
    if not rows:
        return ('<p class="note">This run\'s record has no phase times (recorded by kata '
                'since the dashboard; older runs show durations only).</p>')
    t0 = min(view.run.started, *(s.record.phases.ready for s in rows))  # type: ignore[union-attr]
    t1 = max(s.record.phases.ended for s in rows)  # type: ignore[union-attr]
    span = max(t1 - t0, 0.001)
    label_w, width, row_h = 230, 900, 24
    plot = width - label_w - PAD
    height = PAD + 24 + len(rows) * row_h + 10

    def x(t: float) -> float:
        return label_w + (t - t0) / span * plot

    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">']
    for k in range(6):  # the axis: seconds since the run began
        t = t0 + span * k / 5
        anchor = "end" if k == 5 else "start"
        out.append(f'<line class="tick" x1="{x(t):.1f}" y1="{PAD}" x2="{x(t):.1f}" '
                   f'y2="{height - 6}"/><text class="tick-label" x="{x(t):.1f}" y="{PAD - 3}" '
                   f'text-anchor="{anchor}">'
                   f'{_fmt_seconds(t - t0)}</text>')
    y = PAD + 12
    for s in rows:
        p = s.record.phases
        assert p is not None
        crit = " critical" if s.critical else ""
        out.append(f'<g class="row{crit}" data-step="{escape(s.name)}">'
                   f'<text class="row-label" x="4" y="{y + 15}">{escape(_short(s.name, 30))}</text>')
        if s.hit:
            cx = x(p.ended)
            out.append(f'<path class="bar phase-hit" d="M{cx:.1f},{y + 4} l7,8 l-7,8 l-7,-8 z">'
                       f'<title>{escape(s.name)}: cache hit</title></path>')
        else:
            for phase, a, b in (("queued", p.ready, p.started), ("pulling", p.started, p.running),
                                ("running", p.running, p.ended)):
                w = max(x(b) - x(a), 1.5 if phase == "running" else 0)
                if w <= 0:
                    continue
                status = f" status-{escape(s.record.status)}" if phase == "running" else ""
                out.append(f'<rect class="bar phase-{phase}{status}" data-phase="{phase}" '
                           f'x="{x(a):.1f}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}">'
                           f'<title>{escape(s.name)}: {phase} {_fmt_seconds(b - a)}</title></rect>')
        out.append("</g>")
        y += row_h
    out.append("</svg>")
    return "".join(out)


def rate_chart_svg(days: Sequence[str], hits: Sequence[int], misses: Sequence[int],
                   *, css_class: str = "hit-rate", height: int = 200) -> str:
    """Hit rate per day as bars (class ``hit-bar``, ``data-day``, ``data-rate`` 0..1 or
    "" for a day without steps), 0–100 % axis; ``height`` in pixels."""
    width, left, bottom = 900, 40, 24
    plot_w, plot_h = width - left - 10, height - bottom - 14
    bw = plot_w / max(len(days), 1)
    out = [f'<svg class="chart {css_class}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">']
    for pct in (0, 50, 100):
        yy = 14 + plot_h * (1 - pct / 100)
        out.append(f'<line class="grid" x1="{left}" y1="{yy}" x2="{width - 10}" y2="{yy}"/>'
                   f'<text class="tick-label" x="{left - 4}" y="{yy + 4}" '
                   f'text-anchor="end">{pct}%</text>')
    for i, (day, h, m) in enumerate(zip(days, hits, misses)):
        bx = left + i * bw + 1
        if h + m:
            rate = h / (h + m)
            bh = max(plot_h * rate, 1)
            out.append(f'<rect class="hit-bar" data-day="{day}" data-rate="{rate:.3f}" '
                       f'x="{bx:.1f}" y="{14 + plot_h - bh:.1f}" width="{bw - 2:.1f}" '
                       f'height="{bh:.1f}"><title>{day}: {rate:.0%} ({h} cached, {m} ran)'
                       f'</title></rect>')
        else:
            out.append(f'<rect class="hit-bar empty" data-day="{day}" data-rate="" '
                       f'x="{bx:.1f}" y="{14 + plot_h - 1}" width="{bw - 2:.1f}" height="1">'
                       f'<title>{day}: no steps</title></rect>')
        if i % 5 == 0 or i == len(days) - 1:
            out.append(f'<text class="tick-label" x="{bx + bw / 2:.1f}" y="{height - 6}" '
                       f'text-anchor="middle">{day[5:]}</text>')
    out.append("</svg>")
    return "".join(out)


def size_chart_svg(days: Sequence[str], sizes: Sequence[int]) -> str:
    """Store bytes at each day's end as an area (class ``size-line``, points in
    ``data-bytes``)."""
    width, height, left, bottom = 900, 160, 70, 24
    plot_w, plot_h = width - left - 10, height - bottom - 14
    top = max(max(sizes, default=0), 1)
    n = max(len(sizes) - 1, 1)
    pts = [(left + plot_w * i / n, 14 + plot_h * (1 - v / top)) for i, v in enumerate(sizes)]
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
    area = f"{left},{14 + plot_h} {line} {left + plot_w},{14 + plot_h}"
    out = [f'<svg class="chart store-size" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}">',
           f'<text class="tick-label" x="{left - 4}" y="18" text-anchor="end">{human(top)}</text>',
           f'<text class="tick-label" x="{left - 4}" y="{14 + plot_h}" text-anchor="end">0</text>',
           f'<polygon class="size-area" points="{area}"/>',
           f'<polyline class="size-line" data-bytes="{",".join(map(str, sizes))}" '
           f'points="{line}"/>']
    for i, day in enumerate(days):
        if i % 5 == 0 or i == len(days) - 1:
            out.append(f'<text class="tick-label" x="{pts[i][0]:.1f}" y="{height - 6}" '
                       f'text-anchor="middle">{day[5:]}</text>')
    out.append("</svg>")
    return "".join(out)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
