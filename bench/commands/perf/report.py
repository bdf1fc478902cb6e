"""Reading the perf rows: one printed line per row, ratio notes, and the two comparison tables (pandas only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vqbench.commands.perf.plan import VQP

if TYPE_CHECKING:
    import pandas as pd


def format_row(row: dict[str, Any]) -> str:
    """One fixed-width line for a perf row (printed as each cell finishes)."""
    time_s = f"{row['time_ms']:10.2f} ms" if row.get("time_ms") is not None else f"{'':13}"
    mem = f"{row['peak_memory_mb']:9.1f} MB" if row.get("peak_memory_mb") is not None else f"{'':12}"
    rate = f"{row['gflops']:8.1f} GFLOP/s" if row.get("gflops") is not None else ""
    return (f"{row['method']:<12} K={row['codebook_size']:<8} dim={row['dim']:<4} N={row['n']:<6} "
            f"{row['implementation']:<24} {row['measure']:<19} {row['status']:<13} {time_s} {mem} {rate} "
            f"{row['note']}").rstrip()


def annotate_ratios(rows: list[dict[str, Any]]) -> None:
    """Append to each vqbench row's note its ratio to the matching vector-quantize-pytorch / torch.mm row."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["device"], r["codebook_size"], r["dim"], r["n"]

    theirs = {(*key(r), r["method"]): r for r in rows
              if r["implementation"] == VQP and r["status"] == "ok"}
    mm = {key(r): r for r in rows if r["measure"] == "matmul" and r["status"] == "ok"}
    for r in rows:
        if r["implementation"] != "vqbench" or r["status"] != "ok":
            continue
        extra = ""
        if r["measure"] == "forward_backward" and (*key(r), r["method"]) in theirs:
            t = theirs[(*key(r), r["method"])]
            extra = f"time x{r['time_ms'] / t['time_ms']:.2f}"
            if r["peak_memory_mb"] and t["peak_memory_mb"]:
                extra += f", memory x{r['peak_memory_mb'] / t['peak_memory_mb']:.2f}"
            extra += f" of {VQP}"
        elif r["measure"] == "nearest_code_search" and key(r) in mm and mm[key(r)]["gflops"]:
            extra = f"{100 * r['gflops'] / mm[key(r)]['gflops']:.0f}% of torch.mm's rate"
        if extra and extra not in (r["note"] or ""):
            r["note"] = "; ".join(p for p in (r["note"], extra) if p)


# -- tables from stored rows ---------------------------------------------------------------------------------------
def _keys(rows: pd.DataFrame, keys: list[str]) -> list[str]:
    return (["perf_id"] if "perf_id" in rows.columns else []) + keys


def _numeric(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    table = table.copy()
    for c in columns:
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def ratio_table(rows: pd.DataFrame) -> pd.DataFrame:
    """vqbench vs vector-quantize-pytorch per cell: times, peaks, and ratios vqbench / theirs (< 1: vqbench wins)."""
    keys = _keys(rows, ["device", "method", "codebook_size", "dim", "n"])
    fb = _numeric(rows[rows["measure"] == "forward_backward"], ["time_ms", "peak_memory_mb"])
    cols = keys + ["time_ms", "peak_memory_mb", "status"]
    ours = fb[fb["implementation"] == "vqbench"][cols]
    theirs = fb[fb["implementation"] == VQP][cols]
    table = ours.merge(theirs, on=keys, how="left", suffixes=("", "_vqp"))
    table["time_ratio"] = table["time_ms"] / table["time_ms_vqp"]
    table["memory_ratio"] = table["peak_memory_mb"] / table["peak_memory_mb_vqp"]
    return table.sort_values(keys).reset_index(drop=True)


def search_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Nearest-code search rate vs torch.mm's on the same shapes: ``fraction`` = search GFLOP/s / mm GFLOP/s."""
    keys = _keys(rows, ["device", "codebook_size", "dim", "n"])
    rows = _numeric(rows, ["time_ms", "gflops"])
    search = rows[rows["measure"] == "nearest_code_search"][keys + ["time_ms", "gflops", "status"]]
    mm = rows[rows["measure"] == "matmul"][keys + ["time_ms", "gflops", "status"]]
    table = search.merge(mm, on=keys, how="left", suffixes=("", "_mm"))
    table["fraction"] = table["gflops"] / table["gflops_mm"]
    return table.sort_values(keys).reset_index(drop=True)


def summary_text(rows: pd.DataFrame) -> str:
    """The ratio and search tables as text (what ``vqbench perf`` prints at the end)."""
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 250, "display.float_format", "{:.3g}".format):
        parts = []
        ratios = ratio_table(rows)
        if not ratios.empty:
            parts.append("forward+backward, vqbench vs vector-quantize-pytorch (ratio < 1: vqbench faster/smaller)\n"
                         + ratios.drop(columns=["device", "perf_id"], errors="ignore").to_string(index=False))
        search = search_table(rows)
        if not search.empty:
            parts.append("nearest-code search vs torch.mm on the same shapes\n"
                         + search.drop(columns=["device", "perf_id"], errors="ignore").to_string(index=False))
    return "\n\n".join(parts)
