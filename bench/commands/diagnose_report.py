"""The self-contained HTML report of ``vqbench diagnose``: inline SVG (``vqbench.leaderboard.svg``), no network.

Sections: the verdicts; charts (usage histogram, normalised singular-value spectra of codes and latents,
histogram of code-to-nearest-code distances with the merge radius, PCA of codes over latents); every
number; the comparison with the results store; the remedies with links to their findings' figures.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vqbench.leaderboard.html import escape as esc
from vqbench.leaderboard.html import format_number as fmt
from vqbench.leaderboard.svg import PALETTE, _Frame, line_chart, usage_chart

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1180px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; border-bottom: 1px solid #ddd; }
.verdict { font-size: 1.05rem; padding: 0.35rem 0.6rem; margin: 0.25rem 0; border-left: 4px solid #999; }
.verdict.tokens-collapse, .verdict.embeddings-collapse { border-color: #d62728; background: #fdf0f0; }
.verdict.healthy { border-color: #2ca02c; background: #f0faf0; }
.charts { display: flex; flex-wrap: wrap; gap: 0.6rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
td, th { padding: 0.2rem 0.5rem; border-bottom: 1px solid #eee; }
th { text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.user { background: #fff7d6; }
.note { color: #666; font-size: 0.9rem; }
svg.chart { background: #fff; border: 1px solid #dde; max-width: 100%; height: auto; }
svg.chart text { font-family: system-ui, sans-serif; fill: #333; }
svg.chart text.title { font-size: 12px; font-weight: 600; } svg.chart text.tick { font-size: 9.5px; fill: #666; }
svg.chart text.label { font-size: 10.5px; fill: #444; } svg.chart text.legend { font-size: 10px; }
svg.chart text.empty { font-size: 12px; fill: #999; } svg.chart rect.plot { fill: #fcfcfd; stroke: #c9ced4; }
svg.chart line.grid { stroke: #eceff2; }
"""


def histogram_chart(values: list[float], title: str, xlabel: str, marker: float | None = None,
                    marker_label: str = "", bins: int = 40) -> str:
    """Bars of a histogram of ``values`` (equal-width bins), with an optional vertical marker."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return line_chart([], title, xlabel, "codes")
    lo, hi = min(finite), max(finite)
    if marker is not None and math.isfinite(marker):
        lo, hi = min(lo, marker), max(hi, marker)
    hi = hi if hi > lo else lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    frame = _Frame((lo, hi), (0, max(counts) * 1.08))
    body = frame.axes(title, xlabel, "codes")
    base = frame.py(0)
    for i, c in enumerate(counts):
        if c:
            x0, x1 = frame.px(lo + i * width), frame.px(lo + (i + 1) * width)
            body.append(f'<rect x="{x0:.1f}" y="{frame.py(c):.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                        f'height="{base - frame.py(c):.1f}" fill="{PALETTE[0]}" fill-opacity="0.7">'
                        f'<title>{c} codes in [{fmt(lo + i * width, 3)}, {fmt(lo + (i + 1) * width, 3)})'
                        '</title></rect>')
    if marker is not None and math.isfinite(marker):
        x = frame.px(marker)
        body.append(f'<line x1="{x:.1f}" y1="{frame.py(max(counts) * 1.08):.1f}" x2="{x:.1f}" y2="{base:.1f}" '
                    f'stroke="{PALETTE[1]}" stroke-dasharray="4 3"><title>{esc(marker_label)}</title></line>')
    return frame.svg(body, title)


def scatter_chart(layers: list[tuple[str, list[list[float]], str, float]], title: str) -> str:
    """2-D points in named layers ``(name, points, colour, radius)``, drawn in order, with a legend."""
    pts = [p for _, points, _, _ in layers for p in points if all(math.isfinite(v) for v in p[:2])]
    if not pts:
        return line_chart([], title, "PC 1", "PC 2")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.05 or 1.0, (max(ys) - min(ys)) * 0.05 or 1.0
    frame = _Frame((min(xs) - pad_x, max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y), width=460, height=380)
    body = frame.axes(title, "principal component 1 of the latents", "principal component 2")
    for i, (name, points, colour, radius) in enumerate(layers):
        opacity = "0.25" if name == "latents" else "0.85"
        body.extend(f'<circle cx="{frame.px(p[0]):.1f}" cy="{frame.py(p[1]):.1f}" r="{radius}" fill="{colour}" '
                    f'fill-opacity="{opacity}"/>' for p in points if math.isfinite(p[0]) and math.isfinite(p[1]))
        y = 26 + 12 + 13 * i
        body.append(f'<rect x="{frame.w - 130}" y="{y - 8}" width="9" height="9" fill="{colour}"/>'
                    f'<text class="legend" x="{frame.w - 117}" y="{y}">{esc(name)} ({len(points)})</text>')
    return frame.svg(body, title)


def _spectra(arrays: dict[str, list[float]]) -> str:
    series = []
    for name, key in (("codes", "codebook_spectrum"), ("latents", "embedding_spectrum")):
        s = [v for v in arrays.get(key, []) if math.isfinite(v)]
        total = sum(s)
        if total > 0:
            series.append((name, list(range(1, len(s) + 1)), [v / total for v in s]))
    return line_chart(series, "singular values (centred codes, latents)", "index",
                      "s_i / sum s (log)", logy=True)


def _table(rows: list[dict[str, Any]], columns: list[str], user: dict[str, Any] | None = None) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row, cls in ([(user, "user")] if user else []) + [(r, "") for r in rows]:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                cells.append(f'<td class="num">{esc(fmt(v))}</td>')
            elif isinstance(v, dict):
                cells.append(f"<td>{esc(', '.join(f'{k}={x}' for k, x in sorted(v.items())))}</td>")
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(diag: Any, advice: Any, out_dir: Path) -> str:
    """The report's HTML (``out_dir``: where it will be written, for relative links to figures)."""
    m, a, proj = diag.metrics, diag.arrays, diag.projection
    parts = [f"<h1>vqbench diagnose: K = {diag.codebook_size}, d = {esc(diag.dim)}</h1>"]
    parts += [f'<div class="verdict {esc(v.kind)}">{esc(v.line)}</div>' for v in diag.verdicts]
    parts += [f'<p class="note">{esc(n)}</p>' for n in diag.notes]
    parts.append("<h2>Charts</h2><div class=\"charts\">")
    parts.append(usage_chart(a.get("usage_histogram", []), "codebook usage (codes sorted by count)"))
    parts.append(_spectra(a))
    parts.append(histogram_chart(a.get("nearest_code_distance", []), "distance of each code to its nearest code",
                                 "distance", m.get("merge_radius"), "merge radius: 0.05 x the latents' RMS radius"))
    parts.append(scatter_chart([("latents", proj.get("latents", []), "#9aa3ad", 1.6),
                                ("used codes", proj.get("codes_used", []), PALETTE[0], 2.6),
                                ("dead codes", proj.get("codes_dead", []), PALETTE[1], 2.6)],
                               "codes over latents (PCA of the latents)"))
    parts.append("</div><h2>Numbers</h2>")
    parts.append(_table([{"metric": k, "value": float(v)} for k, v in sorted(m.items())], ["metric", "value"]))
    parts.append("<p class=\"note\">inputs: " + esc("; ".join(f"{k}: {v}" for k, v in diag.inputs.items())) + "</p>")
    parts.append("<h2>Beside the benchmark</h2>")
    if advice.comparison:
        main = advice.comparison[0]["main_metric"]
        columns = ["task", "method", "method_params", "seeds", "utilization", "perplexity", "dead_codes",
                   "tokens_collapse_index", "embedding_rank", "embeddings_collapse_index", main]
        user = {"task": "(yours)", "method": "(yours)", "seeds": "", **{c: m.get(c, math.nan) for c in columns[4:]}}
        parts.append(_table(advice.comparison, columns, user))
    parts.append("<h2>Remedies the benchmark's findings support</h2>")
    if advice.remedies:
        items = []
        for r in advice.remedies:
            href = os.path.relpath(r.figure, out_dir)
            items.append(f'<li>{esc(r.kind)}: <b>{esc(r.remedy)}</b>: {esc(r.line)} '
                         f'(<a href="{esc(href)}">figure of finding {esc(r.finding)}</a>)</li>')
        parts.append("<ul>" + "".join(items) + "</ul>")
    parts += [f'<p class="note">{esc(n)}</p>' for n in advice.notes]
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vqbench diagnose</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_report(diag: Any, advice: Any, path: Path) -> Path:
    """Write :func:`render` to ``path``; returns it."""
    path.write_text(render(diag, advice, path.parent), encoding="utf-8")
    return path
