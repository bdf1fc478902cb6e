"""Hand-written inline SVG charts: line charts, a sorted-usage area chart, a scatter with a Pareto front and
a strip chart (points per category with their quartile box).

Why not matplotlib or a JS charting library: the site has one page per run (10,000+ pages) and must
build in well under a minute on two cores; a matplotlib figure costs ~50 ms, a string of SVG path
data costs ~0.1 ms. Inline SVG needs no network, no script and no extra file, scales crisply, prints,
and works from ``file://``. Every label that can come from a run goes through
:func:`vqbench.leaderboard.html.escape`; numbers through :func:`~vqbench.leaderboard.html.format_number`.
All styling is by presentation attributes and CSS classes (no ``style=`` attributes), so the
pages' Content-Security-Policy can forbid inline styles and scripts. The arithmetic is plain Python
on lists: the curves are short, and per-call NumPy overhead would dominate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqbench.leaderboard.html import escape, format_number

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")

W, H = 380, 230
ML, MR, MT, MB = 58, 12, 26, 40  # margins: left, right, top, bottom


def _floats(values: Any) -> list[float]:
    if values is None:
        return []
    if isinstance(values, np.ndarray):
        return values.astype(float, copy=False).ravel().tolist()
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (about ``count`` of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-12))
    k = math.ceil(lo / step - 1e-9)
    ticks = []
    while len(ticks) < 50:
        v = k * step
        if v > hi + step * 1e-9:
            break
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        k += 1
    return ticks


def _range(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        d = abs(lo) * 0.1 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


class _Frame:
    """Maps data to pixels and draws axes, ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], *, logy: bool = False,
                 flip_y: bool = False, width: int = W, height: int = H, right: int = MR, bottom: int = MB) -> None:
        self.w, self.h, self.logy, self.flip_y = width, height, logy, flip_y
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.pw, self.ph = width - ML - right, height - MT - bottom
        self._xs = self.pw / ((self.x1 - self.x0) or 1.0)
        lo, hi = (math.log10(self.y0), math.log10(self.y1)) if logy else (self.y0, self.y1)
        self._ylo, self._ys = lo, 1.0 / ((hi - lo) or 1.0)

    def px(self, x: float) -> float:
        return ML + (x - self.x0) * self._xs

    def py(self, y: float) -> float:
        if self.logy:
            if not y > 0:
                return math.nan
            y = math.log10(y)
        frac = (y - self._ylo) * self._ys
        if self.flip_y:
            frac = 1 - frac
        return MT + (1 - frac) * self.ph

    def axes(self, title: str, xlabel: str, ylabel: str, x_ticks: bool = True) -> list[str]:
        bottom = MT + self.ph
        out = [f'<text class="title" x="{ML}" y="15">{escape(title)}</text>',
               f'<rect class="plot" x="{ML}" y="{MT}" width="{self.pw}" height="{self.ph}"/>']
        for t in nice_ticks(self.x0, self.x1, 5) if x_ticks else []:
            x = self.px(t)
            out.append(f'<line class="grid" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{bottom}"/>'
                       f'<text class="tick" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
                       f'{format_number(t, 3)}</text>')
        if self.logy:
            lo, hi = math.floor(math.log10(self.y0)), math.ceil(math.log10(self.y1))
            step = max(1, (hi - lo) // 5)
            yticks = [10.0 ** k for k in range(lo, hi + 1, step) if self.y0 <= 10.0 ** k <= self.y1]
        else:
            yticks = nice_ticks(self.y0, self.y1, 5)
        for t in yticks:
            y = self.py(t)
            out.append(f'<line class="grid" x1="{ML}" y1="{y:.1f}" x2="{ML + self.pw}" y2="{y:.1f}"/>'
                       f'<text class="tick" x="{ML - 4}" y="{y + 4:.1f}" text-anchor="end">'
                       f'{format_number(t, 3)}</text>')
        out.append(f'<text class="label" x="{ML + self.pw / 2:.0f}" y="{self.h - 6}" text-anchor="middle">'
                   f'{escape(xlabel)}</text>')
        out.append(f'<text class="label" transform="translate(12 {MT + self.ph / 2:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        return out

    def svg(self, body: list[str], label: str) -> str:
        return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.w} {self.h}" '
                f'width="{self.w}" height="{self.h}" role="img" aria-label="{escape(label)}">' + "".join(body)
                + "</svg>")

    def empty(self, body: list[str], text: str) -> None:
        body.append(f'<text class="empty" x="{ML + self.pw / 2:.0f}" y="{MT + self.ph / 2:.0f}" '
                    f'text-anchor="middle">{escape(text)}</text>')


def _path(points: list[tuple[float, float]]) -> str:
    """Polyline path data; a non-finite point breaks the line."""
    parts, pen = [], False
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            parts.append(f"{'L' if pen else 'M'}{x:.1f} {y:.1f}")
            pen = True
        else:
            pen = False
    return "".join(parts)


def line_chart(series: Sequence[tuple[str, Any, Any]], title: str, xlabel: str, ylabel: str, *,
               logy: bool = False) -> str:
    """One or more named (x, y) series on shared axes; empty data gives a labelled empty frame."""
    data = []
    for name, xs, ys in series:
        x, y = _floats(xs), _floats(ys)
        if logy:
            y = [v if v > 0 else math.nan for v in y]
        data.append((name, x, y))
    pts = [(a, b) for _, x, y in data for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if not pts:
        frame = _Frame((0, 1), (0, 1))
        body = frame.axes(title, xlabel, ylabel)
        frame.empty(body, "not logged")
        return frame.svg(body, title)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    ys = [p[1] for p in pts]
    if logy:
        y_range = (10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys))))
        if y_range[0] == y_range[1]:
            y_range = (y_range[0] / 10, y_range[1] * 10)
    else:
        y_range = _range(ys)
    frame = _Frame((x0, x1), y_range, logy=logy)
    body = frame.axes(title, xlabel, ylabel)
    for i, (name, x, y) in enumerate(data):
        color = PALETTE[i % len(PALETTE)]
        pix = [(frame.px(a), frame.py(b)) for a, b in zip(x, y)]
        d = _path(pix)
        if d:
            body.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.6"><title>{escape(name)}</title>'
                        '</path>')
        good = [(a, b) for a, b in pix if math.isfinite(a) and math.isfinite(b)]
        if len(good) <= 30:
            body.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2" fill="{color}"/>' for a, b in good)
    if len(data) > 1:
        for i, (name, _, _) in enumerate(data):
            y = MT + 12 + 13 * i
            body.append(f'<rect x="{ML + frame.pw - 110}" y="{y - 8}" width="9" height="9" '
                        f'fill="{PALETTE[i % len(PALETTE)]}"/>'
                        f'<text class="legend" x="{ML + frame.pw - 97}" y="{y}">{escape(name)}</text>')
    return frame.svg(body, title)


def usage_chart(counts: Any, title: str = "codebook usage (last eval)", max_points: int = 160) -> str:
    """Codes sorted by usage (descending) as a filled area, with the first dead code marked.

    Long codebooks are drawn through ``max_points`` evenly spaced ranks; the curve is monotone, so
    this keeps its shape (every drawn point is a true value of the sorted counts)."""
    arr = np.asarray(counts if counts is not None else [], dtype=float).ravel()
    k = int(arr.size)
    if k == 0:
        return line_chart([], title, "code rank", "count")
    arr = np.sort(np.where(np.isfinite(arr), arr, 0.0))[::-1]
    used = int(np.count_nonzero(arr > 0))
    if k > max_points:
        idx = np.unique(np.linspace(0, k - 1, max_points).round().astype(int)).tolist()
    else:
        idx = list(range(k))
    c = dict(zip(idx, arr[idx].tolist()))
    c[0] = float(arr[0])
    top = c[0] * 1.05 or 1.0
    frame = _Frame((0, max(k - 1, 1)), (0, top))
    body = frame.axes(title, f"code rank (K = {k}, used = {used})", "count")
    base = MT + frame.ph
    pts = "".join(f"L{frame.px(i):.1f} {frame.py(c[i]):.1f}" for i in idx)
    body.append(f'<path d="M{frame.px(idx[0]):.1f} {base:.1f}{pts}L{frame.px(idx[-1]):.1f} {base:.1f}Z" '
                f'fill="{PALETTE[0]}" fill-opacity="0.35" stroke="{PALETTE[0]}" stroke-width="1.2"/>')
    if used < k:
        x = frame.px(max(used - 0.5, 0))
        body.append(f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{base:.1f}" stroke="{PALETTE[1]}" '
                    f'stroke-dasharray="4 3"><title>{k - used} dead codes to the right</title></line>')
    return frame.svg(body, title)


def pareto_front(x: Sequence[float], y: Sequence[float], higher_y: bool) -> list[bool]:
    """Mask of points not dominated when maximising x and maximising (or minimising) y.

    A point is dominated when another is at least as good in both coordinates and better in one.
    """
    xs, ys = _floats(x), [v if higher_y else -v for v in _floats(y)]
    ok = [math.isfinite(a) and math.isfinite(b) for a, b in zip(xs, ys)]
    idx = sorted((i for i in range(len(xs)) if ok[i]), key=lambda i: (-xs[i], -ys[i]))
    mask = [False] * len(xs)
    best = -math.inf
    front_points = set()
    for i in idx:
        if ys[i] > best or (xs[i], ys[i]) in front_points:
            mask[i] = True
            front_points.add((xs[i], ys[i]))
            best = max(best, ys[i])
    return mask


def pareto_chart(points: Sequence[dict], xlabel: str, ylabel: str, higher_y: bool, families: Sequence[str],
                 title: str) -> str:
    """Scatter of table rows (``x``, ``y``, ``label``, ``family``, ``href``, ``row``) with the front drawn.

    The y axis is oriented so that *better is up* whichever the metric's direction; the axis label says so.
    """
    xs = _floats([p["x"] for p in points])
    ys = _floats([p["y"] for p in points])
    ok = [math.isfinite(a) and math.isfinite(b) for a, b in zip(xs, ys)]
    width, height, right = 720, 380, 170
    if not any(ok):
        frame = _Frame((0, 1), (0, 1), width=width, height=height, right=right)
        body = frame.axes(title, xlabel, ylabel)
        frame.empty(body, "no row has both values")
        return frame.svg(body, title)
    fx = [a for a, g in zip(xs, ok) if g]
    fy = [b for b, g in zip(ys, ok) if g]
    x_range = (0.0, 1.0) if min(fx) >= 0 and max(fx) <= 1 else _range(fx, 0.04)
    frame = _Frame(x_range, _range(fy, 0.06), flip_y=not higher_y, width=width, height=height, right=right)
    arrow = "higher is better" if higher_y else "lower is better; axis reversed so better is up"
    body = frame.axes(title, xlabel + " (higher is better)", f"{ylabel} ({arrow})")
    front = pareto_front(xs, ys, higher_y)
    fi = sorted((i for i in range(len(xs)) if front[i]), key=lambda i: xs[i])
    if fi:
        d = _path([(frame.px(xs[i]), frame.py(ys[i])) for i in fi])
        body.append(f'<path d="{d}" fill="none" stroke="#444" stroke-width="1.2" stroke-dasharray="5 3">'
                    '<title>Pareto front</title></path>')
    fam_index = {f: i for i, f in enumerate(families)}
    for i, p in enumerate(points):
        if not ok[i]:
            continue
        color = PALETTE[fam_index.get(p["family"], 0) % len(PALETTE)]
        r, stroke = (5, ' stroke="#000" stroke-width="1.2"') if front[i] else (3.5, "")
        tip = f'{p["label"]}: {xlabel} {format_number(xs[i])}, {ylabel} {format_number(ys[i])}'
        tip += " (on the Pareto front)" if front[i] else ""
        body.append(f'<a href="{escape(p["href"])}" data-row="{escape(p["row"])}"><circle cx="{frame.px(xs[i]):.1f}" '
                    f'cy="{frame.py(ys[i]):.1f}" r="{r}" fill="{color}" fill-opacity="0.8"{stroke}/>'
                    f'<title>{escape(tip)}</title></a>')
    lx = ML + frame.pw + 12
    for i, fam in enumerate(families[:24]):
        yy = MT + 8 + 13 * i
        label = fam if len(fam) <= 22 else fam[:21] + "\u2026"
        body.append(f'<rect x="{lx}" y="{yy - 8}" width="9" height="9" fill="{PALETTE[i % len(PALETTE)]}"/>'
                    f'<text class="legend" x="{lx + 13}" y="{yy}">{escape(label)}<title>{escape(fam)}</title></text>')
    return frame.svg(body, title)


@dataclass(frozen=True)
class Strip:
    """One category of a strip chart: its points (value, tooltip) and which one is highlighted."""

    label: str
    points: list[tuple[float, str]]
    highlight: int | None = None  # index into ``points``


def strip_chart(strips: Sequence[Strip], ylabel: str, higher_is_better: bool, title: str) -> str:
    """Points per category with their quartile box and median, one category per column.

    Built for the spread of a method's tuning trials: the box spans the 25th-75th percentiles (the IQR),
    the line is the median, the highlighted point (the selected trial) is drawn larger and outlined. The
    y axis is oriented so that *better is up* whichever the metric's direction; the axis label says so.
    Points of one category are spread sideways by a fixed pattern (no randomness: same data, same SVG).
    """
    slot, bottom = 52, 72
    width = max(W, ML + MR + slot * max(len(strips), 1) + 8)
    values = [v for s in strips for v, _ in s.points if math.isfinite(v)]
    arrow = "higher is better" if higher_is_better else "lower is better: axis reversed"
    frame = _Frame((0.0, float(max(len(strips), 1))), _range(values, 0.06), flip_y=not higher_is_better,
                   width=width, height=310, bottom=bottom)
    body = frame.axes(title, "", f"{ylabel} ({arrow})", x_ticks=False)
    if not values:
        frame.empty(body, "no trial has a validation value")
        return frame.svg(body, title)
    base = MT + frame.ph
    for i, strip in enumerate(strips):
        center = frame.px(i + 0.5)
        label = strip.label if len(strip.label) <= 18 else strip.label[:17] + "\u2026"
        body.append(f'<text class="tick" transform="translate({center + 3:.1f} {base + 10}) rotate(-40)" '
                    f'text-anchor="end">{escape(label)}<title>{escape(strip.label)}</title></text>')
        finite = [v for v, _ in strip.points if math.isfinite(v)]
        if not finite:
            continue
        q25, median, q75 = (float(q) for q in np.percentile(finite, [25, 50, 75]))
        top, low = sorted((frame.py(q25), frame.py(q75)))
        color = PALETTE[i % len(PALETTE)]
        body.append(f'<rect x="{center - slot * 0.3:.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" '
                    f'height="{max(low - top, 0.8):.1f}" fill="{color}" fill-opacity="0.15" stroke="{color}">'
                    f'<title>{escape(strip.label)}: median {format_number(median)}, IQR {format_number(q75 - q25)} '
                    f'over {len(finite)} point(s)</title></rect>'
                    f'<line x1="{center - slot * 0.3:.1f}" y1="{frame.py(median):.1f}" x2="{center + slot * 0.3:.1f}" '
                    f'y2="{frame.py(median):.1f}" stroke="{color}" stroke-width="1.6"/>')
        for j, (value, tip) in enumerate(strip.points):
            if not math.isfinite(value):
                continue
            x = center + ((j * 0.618034) % 1.0 - 0.5) * slot * 0.5
            r, stroke = (4.5, ' stroke="#000" stroke-width="1.4"') if j == strip.highlight else (2.6, "")
            body.append(f'<circle cx="{x:.1f}" cy="{frame.py(value):.1f}" r="{r}" fill="{color}" '
                        f'fill-opacity="0.85"{stroke}><title>{escape(tip)}</title></circle>')
    return frame.svg(body, title)
