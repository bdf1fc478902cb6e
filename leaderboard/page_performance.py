"""``performance.html``: ``vqbench perf`` measurements (``results/perf/``), with the ratios they are read for."""

from __future__ import annotations

import math

import pandas as pd

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.html import escape, filter_bar, is_finite, number_cell
from vqbench.leaderboard.load import read_tables, store_files

REFERENCE = "vector-quantize-pytorch"
SHAPE = ["perf_id", "device", "codebook_size", "dim", "n"]
NUMBER_COLUMNS = (("codebook_size", "K"), ("dim", "dim"), ("n", "N"), ("time_ms", "time ms \u2193"),
                  ("peak_memory_mb", "peak MB \u2193"), ("gflops", "GFLOP/s \u2191"),
                  ("ratio_to_vqp", "ratio to vqp \u2193"), ("fraction_of_mm", "fraction of mm \u2191"))


def write_performance(site: SiteContext) -> None:
    """Write ``performance.html``: every measurement row, newest first, with the derived ratios."""
    perf = read_tables(store_files(site.data.store, "perf"), "perf")
    body = ['<h1>Performance</h1><p class="lead">Speed and memory of the quantizers as measured by '
            '<code>vqbench perf</code> (forward + backward on N input vectors, next to vector-quantize-pytorch '
            'where it has an equivalent; nearest-code search next to <code>torch.mm</code> on the same shapes, '
            'the practical limit). Ratio = our time / vector-quantize-pytorch\'s time (below 1: we are faster); '
            'fraction of mm = achieved GFLOP/s of the search / GFLOP/s of torch.mm.</p>']
    if perf.empty:
        body.append('<p>No measurements in this results folder: run <code>vqbench perf</code>.</p>')
    else:
        perf = with_ratios(perf)
        rows = []
        for r in perf.itertuples(index=False):
            when = r.created_at.strftime("%Y-%m-%d %H:%M") if hasattr(r.created_at, "strftime") else r.created_at
            rows.append(f'<tr data-family="{escape(r.implementation)}"><td>{escape(when)}</td>'
                        f'<td>{escape(r.device)}</td><td>{escape(r.implementation)}</td><td>{escape(r.method)}</td>'
                        f'<td>{escape(r.measure)}</td>'
                        + "".join(number_cell(getattr(r, column)) for column, _ in NUMBER_COLUMNS)
                        + f'<td class="st-{escape(r.status)}">{escape(r.status)}</td><td>{escape(r.note or "")}</td>'
                        '</tr>')
        implementations = sorted({str(i) for i in perf["implementation"]})
        frame = perf.copy()
        frame["created_at"] = frame["created_at"].astype(str)
        download = site.tables.add("performance", "Performance measurements", "performance.html", frame, "")
        body.append(f'{filter_bar("perf-table", implementations, "implementation")}<div class="scroll">'
                    '<table class="sortable" id="perf-table"><thead><tr><th>Measured</th><th>Device</th>'
                    '<th>Implementation</th><th>Method</th><th>Measure</th>'
                    + "".join(f'<th class="num" data-type="num">{title}</th>' for _, title in NUMBER_COLUMNS)
                    + f'<th>Status</th><th>Note</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
                    f'{download}')
    site.write("performance.html", site.page("Performance", "".join(body), ""))


def with_ratios(perf: pd.DataFrame) -> pd.DataFrame:
    """``perf`` sorted newest first, plus ``ratio_to_vqp`` (our forward+backward time / the reference's on the
    same shape) and ``fraction_of_mm`` (nearest-code search GFLOP/s / torch.mm's on the same shape)."""
    perf = perf.copy()
    key = ["perf_id", "device", "method", "codebook_size", "dim", "n"]
    forward_backward = perf[perf["measure"] == "forward_backward"]
    reference_ms = forward_backward[forward_backward["implementation"] == REFERENCE].set_index(key)["time_ms"]
    matmul = perf[perf["measure"] == "matmul"].drop_duplicates(SHAPE).set_index(SHAPE)["gflops"]
    ratios, fractions = [], []
    for r in perf.itertuples(index=False):
        run_key = (r.perf_id, r.device, r.method, r.codebook_size, r.dim, r.n)
        ok = r.status == "ok"
        ratios.append(r.time_ms / reference_ms[run_key] if ok and r.measure == "forward_backward" and
                      r.implementation == "vqbench" and run_key in reference_ms.index
                      and is_finite(reference_ms[run_key]) else math.nan)
        shape = (r.perf_id, r.device, r.codebook_size, r.dim, r.n)
        fractions.append(r.gflops / matmul[shape] if ok and r.measure == "nearest_code_search"
                         and shape in matmul.index and is_finite(matmul[shape]) and matmul[shape] > 0 else math.nan)
    perf["ratio_to_vqp"], perf["fraction_of_mm"] = ratios, fractions
    return perf.sort_values(["created_at", "perf_id", "measure", "method", "codebook_size", "dim",
                             "implementation"], ascending=[False, True, True, True, True, True, True])
