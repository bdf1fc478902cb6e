"""HTML building blocks shared by every page and chart: escaping, URLs, number formats, table cells.

Every string that comes from a run or a plugin goes through :func:`escape` before it reaches a page
(text or quoted attribute). Numbers are written by :func:`format_number` (values) and
:func:`format_ci` (confidence-interval half-widths), on the pages and in the SVG charts alike.
"""

from __future__ import annotations

import html
import math
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import numpy as np

STATUS_ORDER = ("ok", "diverged", "failed", "timeout")
#: strings longer than this are escaped without the cache (names and labels, which repeat, are short)
_CACHED_LENGTH = 200


@lru_cache(maxsize=200_000)
def _escape_text(text: str) -> str:
    return html.escape(text, quote=True)


def escape(value: Any) -> str:
    """HTML-escape anything (``str(value)``) for text or a quoted attribute."""
    text = value if isinstance(value, str) else str(value)
    return _escape_text(text) if len(text) < _CACHED_LENGTH else html.escape(text, quote=True)


def url(path: str) -> str:
    """A relative URL (percent-encoded, fragment kept), escaped for an attribute."""
    base, sep, fragment = path.partition("#")
    return escape(quote(base, safe="/._-~") + (sep + quote(fragment, safe="._-~") if sep else ""))


def is_finite(value: Any) -> bool:
    """True for a real number (Python or NumPy) that is neither NaN nor infinite."""
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def format_number(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits; empty for a missing value.

    A number of 1,000 or more (below 1e12) that would need exponent notation at ``digits`` digits is
    written whole, thousands grouped (``12,345``; with 3 digits also ``1,500``); every other number
    is Python's ``g`` format (``0.0123``, ``2.5e-05``).
    """
    if not is_finite(value):
        return ""
    number = float(value)
    if number == 0:
        return "0"
    text = f"{number:.{digits}g}"
    if "e" in text and 1e3 <= abs(number) < 1e12:
        return f"{number:,.0f}"
    return text


def format_ci(value: Any) -> str:
    """Two significant digits, never in exponent form for values of 100 and more."""
    if not is_finite(value):
        return ""
    rounded = float(f"{float(value):.2g}")
    return f"{rounded:,.0f}" if 100 <= abs(rounded) < 1e12 else f"{rounded:.2g}"


def data_value(value: Any) -> str:
    """The exact value for a cell's ``data-v`` attribute (what the table sorts by); empty when missing."""
    return repr(float(value)) if is_finite(value) else ""


def direction_arrow(higher_is_better: bool | None) -> str:
    """An up/down arrow saying which way a metric is better (nothing when unknown)."""
    if higher_is_better is None:
        return ""
    return ('<span class="dir" title="higher is better">\u2191</span>' if higher_is_better else
            '<span class="dir" title="lower is better">\u2193</span>')


def status_badges(counts: dict[str, int], skip_ok: bool = True) -> str:
    """One coloured badge per status with a non-zero count (``ok`` left out unless ``skip_ok`` is False)."""
    out = []
    for status in STATUS_ORDER:
        count = int(counts.get(status, 0))
        if count and not (skip_ok and status == "ok"):
            out.append(f'<span class="badge st-{status}" title="{count} run(s) {status}">{count} {status}</span>')
    return "".join(out)


def stat_cell(mean: float, ci: float, n: int, *, href: str | None = None, show_n: bool = True,
              extra: str = "", n_expected: int | None = None) -> str:
    """A ``<td>``: the mean over seeds, its 95% CI half-width and the seed count (shown when ``show_n``, or
    when ``n`` differs from ``n_expected``); an em dash when there is no mean."""
    if not is_finite(mean):
        return f'<td class="num missing" data-v="">\u2014{extra}</td>'
    text = format_number(mean)
    if href:
        text = f'<a href="{url(href)}">{text}</a>'
    ci_html = (f'<span class="ci" title="95% confidence interval half-width over {n} seeds">\u00b1{format_ci(ci)}'
               '</span>' if is_finite(ci) else "")
    if show_n or (n_expected is not None and n != n_expected):
        n_html = f'<span class="n" title="{n} ok seed(s) with a finite value">n={n}</span>'
    else:
        n_html = ""
    return f'<td class="num" data-v="{data_value(mean)}">{text}{ci_html}{n_html}{extra}</td>'


def number_cell(value: Any) -> str:
    """A sortable numeric ``<td>`` holding one value."""
    return f'<td class="num" data-v="{data_value(value)}">{format_number(value)}</td>'


def filter_bar(table_id: str, choices: list[str], label: str = "family") -> str:
    """The select + search box above a table (site.js filters the rows of ``table_id``)."""
    options = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in choices)
    return (f'<div class="filters" data-table="{escape(table_id)}"><label>{escape(label.capitalize())} '
            f'<select aria-label="{escape(label)}"><option value="">all</option>{options}</select></label>'
            f'<label>Search <input type="search" placeholder="method, params, suite\u2026" '
            f'aria-label="search rows"></label><span class="count" aria-live="polite"></span></div>')


def paper_link(paper: str) -> str:
    """A link to the arXiv abstract of ``paper`` (an arXiv id); empty without one."""
    if not paper:
        return ""
    return (f'<a href="https://arxiv.org/abs/{escape(quote(paper, safe="./"))}" rel="noopener noreferrer">'
            f'arXiv:{escape(paper)}</a>')


def file_size(n_bytes: int) -> str:
    """``12.3 kB`` / ``4.5 MB``."""
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.1f} kB"
