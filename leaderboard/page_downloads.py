"""``downloads.html`` and ``data/``: every table shown on the site as CSV and Parquet (written last)."""

from __future__ import annotations

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import tag_list
from vqbench.leaderboard.html import escape, file_size, url

#: columns the build adds to the runs table for its own bookkeeping (not offered for download)
INTERNAL_COLUMNS = ("suites", "variant_key", "config_key", "row_id", "main_value", "default_suites", "tuned_suites",
                    "trial_of", "suite_labels", "track")


def write_downloads(site: SiteContext) -> None:
    """Add the runs table, write every kept table under ``data/``, and write ``downloads.html`` listing them."""
    runs = site.data.runs
    frame = runs[[c for c in runs.columns if c not in INTERNAL_COLUMNS]].copy()
    frame.insert(1, "suites", [", ".join(s) for s in runs["suite_labels"]])
    frame["tags"] = [", ".join(tag_list(t)) for t in frame["tags"]]
    for column in ("started_at", "finished_at"):
        frame[column] = frame[column].astype(str)
    site.tables.add("runs", "All runs (one row per run: spec, status, provenance, final metrics as shown "
                    "on the run pages)", "index.html", frame, "")
    rows = "".join(
        f'<tr><td>{escape(t.title)}</td><td><a href="{url(t.page)}">page</a></td>'
        f'<td><a href="{url("data/" + t.stem + ".csv")}">{escape(t.stem)}.csv</a> '
        f'<small>({file_size(t.csv_bytes)})</small></td>'
        f'<td><a href="{url("data/" + t.stem + ".parquet")}">{escape(t.stem)}.parquet</a> '
        f'<small>({file_size(t.parquet_bytes)})</small></td></tr>' for t in site.tables.write(site.out))
    body = ('<h1>Downloads</h1><p class="lead">Every table shown on this site as CSV and Parquet. Numeric cells '
            'are split into <code>mean</code>, <code>ci95</code> (half-width of the 95% t interval) and '
            '<code>n</code> columns. The raw store (one Parquet file per run) is the source of all of them.</p>'
            '<div class="scroll"><table class="sortable" id="downloads-table"><thead><tr><th>Table</th>'
            '<th class="nosort">Shown on</th><th class="nosort">CSV</th><th class="nosort">Parquet</th></tr>'
            f'</thead><tbody>{rows}</tbody></table></div>')
    site.write("downloads.html", site.page("Downloads", body, ""))
