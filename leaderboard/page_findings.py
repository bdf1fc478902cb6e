"""``findings.html``: the figures of the collapse reproductions (``results/findings/<name>/``), copied in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vqbench.leaderboard.context import SiteContext
from vqbench.leaderboard.data import slug
from vqbench.leaderboard.html import escape, url


def write_findings(site: SiteContext, results: Path) -> None:
    """Write ``findings.html`` and copy each finding's ``figure.png`` and ``data.csv`` under ``findings/``."""
    base = results / "findings"
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    items = [_finding_section(site, folder) for folder in folders]
    body = ['<h1>Findings</h1><p class="lead">The benchmark\'s reproductions of the two collapses (tokens '
            'collapse and embeddings collapse) and of their cures. Each figure comes with the data it plots '
            'and the command that regenerates it.</p>']
    body += items or ['<p>No findings yet: run <code>vqbench reproduce tokens-collapse</code> or '
                      '<code>vqbench reproduce embeddings-collapse</code>, then build the site again.</p>']
    site.write("findings.html", site.page("Findings", "".join(body), ""))


def _read_meta(folder: Path) -> dict[str, Any]:
    """The finding's ``meta.json`` (title, caption, command); a caption saying so when it cannot be read."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return {}
    try:
        loaded = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"caption": "meta.json could not be read"}
    return loaded if isinstance(loaded, dict) else {}


def _finding_section(site: SiteContext, folder: Path) -> str:
    """One finding: its figure, caption, reproduce command and data link (files copied into the site)."""
    meta = _read_meta(folder)
    name = folder.name
    finding_slug = slug(name)
    target = site.out / "findings" / finding_slug
    target.mkdir(parents=True, exist_ok=True)
    if (folder / "figure.png").is_file():
        shutil.copyfile(folder / "figure.png", target / "figure.png")
        figure = (f'<img src="{url("findings/" + finding_slug + "/figure.png")}" '
                  f'alt="{escape(meta.get("title") or name)}">')
    else:
        figure = '<p class="missing">figure.png is missing in this findings folder.</p>'
    data_link = ""
    if (folder / "data.csv").is_file():
        shutil.copyfile(folder / "data.csv", target / "data.csv")
        data_link = f'<a href="{url("findings/" + finding_slug + "/data.csv")}">data (CSV)</a>'
    title = meta.get("title") or name
    command = meta.get("command")
    return (f'<section id="{escape(finding_slug)}"><h2>{escape(title)}</h2><figure>{figure}<figcaption>'
            f'{escape(meta.get("caption") or "")}</figcaption></figure>'
            + (f'<p>Reproduce: <code>{escape(command)}</code></p>' if command else "")
            + (f'<p class="downloads">{data_link}</p>' if data_link else "") + '</section>')
