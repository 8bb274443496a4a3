"""A line chart as inline SVG, drawn on the server: it shows without any JavaScript."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

MONTHS_FR = (
    "janv.",
    "févr.",
    "mars",
    "avr.",
    "mai",
    "juin",
    "juil.",
    "août",
    "sept.",
    "oct.",
    "nov.",
    "déc.",
)


def french_date(moment: datetime) -> str:
    return f"{moment.day} {MONTHS_FR[moment.month - 1]} {moment.year}"


def line_chart(
    points: Sequence[tuple[datetime, float]],
    *,
    title: str,
    unit: str,
    band: tuple[float, float] | None = None,
    width: int = 680,
    height: int = 300,
) -> str:
    """``points`` sorted by time; ``band`` is the reference range, shaded."""
    if not points:
        return ""
    left, right, top, bottom = 56, 16, 16, 40
    values = [v for _, v in points] + (list(band) if band else [])
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 1.0
    low, high = low - pad, high + pad
    start, end = points[0][0].timestamp(), points[-1][0].timestamp()
    span = (end - start) or 1.0

    def x(moment: datetime) -> float:
        return left + (moment.timestamp() - start) / span * (width - left - right)

    def y(value: float) -> float:
        return top + (high - value) / (high - low) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" style="max-width:{width}px">',
        f"<title>{escape(title)}</title>",
    ]
    if band:
        parts.append(
            f'<rect x="{left}" y="{y(band[1]):.1f}" width="{width - left - right}" '
            f'height="{y(band[0]) - y(band[1]):.1f}" fill="#e3f4e8"><title>Valeurs de référence : '
            f"{band[0]} à {band[1]} {escape(unit)}</title></rect>"
        )
    steps = 5
    for i in range(steps + 1):
        value = low + (high - low) * i / steps
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end">{value:.1f}</text>'
        )
    parts.append(
        f'<text x="12" y="{top + 4}" font-size="11" transform="rotate(-90 12 {top + 4})" '
        f'text-anchor="end">{escape(unit)}</text>'
    )
    firsts: dict[tuple[int, int], datetime] = {}
    for moment, _ in points:
        firsts.setdefault((moment.year, moment.month), moment)
    every = 1 if len(firsts) <= 8 else 2  # one label per month, or every other month
    for n, moment in enumerate(firsts.values()):
        if n % every:
            continue
        parts.append(
            f'<text x="{x(moment):.1f}" y="{height - bottom + 18}" font-size="11" text-anchor="middle">'
            f"{MONTHS_FR[moment.month - 1]} {str(moment.year)[2:]}</text>"
        )
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(m):.1f},{y(v):.1f}" for i, (m, v) in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="#000091" stroke-width="2"/>')
    for moment, value in points:
        parts.append(
            f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="4" fill="#000091">'
            f"<title>{french_date(moment)} : {value} {escape(unit)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
