"""The main job, `vqbench quick`, end to end on a tiny budget (the smoke variant of the quick suite)."""

from vqbench.commands.cli import main
from vqbench.store import ResultStore


def test_quick_smoke_runs_stores_builds_site_and_reruns_nothing(tmp_path, capsys):
    results, site = tmp_path / "results", tmp_path / "site"
    args = ["quick", "--smoke", "--methods", "vq,fsq", "--tasks", "gmm,digits,gen-digits",
            "--results", str(results), "--out", str(site), "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "leaderboard:" in out
    runs = ResultStore(results).load_runs()
    assert len(runs) == 6 and set(runs.status) == {"ok"}
    assert all("suite:quick-smoke" in list(t) for t in runs.tags)
    index = (site / "index.html").read_text()
    assert "quick-smoke" in index and "fsq" in index and "gen-digits" in index
    assert main(args) == 0  # everything complete: nothing runs again
    assert "6 complete (skipped)" in capsys.readouterr().out


def test_quick_rejects_unknown_method(tmp_path, capsys):
    assert main(["quick", "--methods", "nope", "--results", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "nope" in capsys.readouterr().err
