"""Charts drawn on the server as SVG: no script, nothing fetched from anywhere."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

# One colour per action, the same on every chart and in the legend.
COLOURS: Mapping[str, str] = {
    "deliver": "#4c9a2a",
    "flag": "#d9a400",
    "spam_folder": "#e0702a",
    "quarantine": "#b8322a",
    "reject": "#7a1f5c",
    "tempfail": "#5470c6",
    "discard": "#666666",
    "none": "#999999",
}
ORDER = ("deliver", "flag", "spam_folder", "quarantine", "reject", "discard", "tempfail", "none")


def colour(action: str) -> str:
    return COLOURS.get(action, "#333333")


def stacked_bars(
    actions: Mapping[str, Sequence[int]],
    start: float,
    width_seconds: int,
    title: str,
    label_every: int,
    label_format: str,
    width: int = 720,
    height: int = 180,
) -> Markup:
    """Counts per time slot, stacked by action, as one <svg> element."""
    slots = max((len(v) for v in actions.values()), default=0)
    totals = [sum(series[i] for series in actions.values() if i < len(series)) for i in range(slots)]
    top = max(totals, default=0) or 1
    left, bottom, right, upper = 40, 20, 8, 10
    plot_w, plot_h = width - left - right, height - bottom - upper
    bar = plot_w / slots if slots else plot_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{upper + plot_h}" x2="{width - right}" y2="{upper + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{upper + 8}" text-anchor="end" class="axis">{top}</text>',
        f'<text x="{left - 4}" y="{upper + plot_h}" text-anchor="end" class="axis">0</text>',
    ]
    names = [a for a in ORDER if a in actions] + sorted(a for a in actions if a not in ORDER)
    for i in range(slots):
        y = float(upper + plot_h)
        for name in names:
            count = actions[name][i] if i < len(actions[name]) else 0
            if not count:
                continue
            h = plot_h * count / top
            y -= h
            parts.append(
                f'<rect x="{left + i * bar + 0.5:.1f}" y="{y:.1f}" width="{max(bar - 1, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{colour(name)}"><title>{escape(name)}: {count}</title></rect>'
            )
        if i % label_every == 0:
            when = time.strftime(label_format, time.gmtime(start + i * width_seconds))
            parts.append(
                f'<text x="{left + i * bar:.1f}" y="{height - 5}" class="axis">{escape(when)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(actions: Sequence[str]) -> Markup:
    names = [a for a in ORDER if a in actions] + sorted(a for a in actions if a not in ORDER)
    items = "".join(
        f'<span class="legend"><svg width="10" height="10"><rect width="10" height="10" '
        f'fill="{colour(a)}"/></svg> {escape(a)}</span>'
        for a in names
    )
    return Markup(items)
