import subprocess
import sys

import pytest

from vqbench.commands.cli import main, parse_assignments
from vqbench.errors import UserError
from vqbench.store import ResultStore

TINY = ["--set", "task.n_train=512", "--set", "task.n_eval=256", "--set", "task.hidden=32",
        "--set", "budget.steps=16", "--set", "budget.eval_interval=8", "--set", "budget.batch_size=64"]


def test_parse_assignments_scopes_and_types():
    task, method, budget = parse_assignments(["beta=0.5", "task.levels=[8,5,5]", "budget.steps=10",
                                              "method.init=data", "task.flag=true"])
    assert method == {"beta": 0.5, "init": "data"}
    assert task == {"levels": [8, 5, 5], "flag": True} and budget == {"steps": 10}
    with pytest.raises(UserError, match="use --set key=value"):
        parse_assignments(["beta"])
    with pytest.raises(UserError, match="prefix it with"):
        parse_assignments(["foo.beta=1"])
    with pytest.raises(UserError, match="does not parse"):
        parse_assignments(["x=[1,2"])


def test_run_twice_runs_once(tmp_path, capsys):
    args = ["run", "--task", "gmm", "--method", "vq", "--results", str(tmp_path), *TINY]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    # vqbench.store.format_run_summary: the task's main metric first, then the collapse metrics, then the wall time
    assert ": ok | mse=" in line and ", utilization=" in line and ", perplexity=" in line and line.endswith("s)")
    assert main(args) == 0
    assert "already complete: skipped" in capsys.readouterr().out
    assert len(ResultStore(tmp_path).load_runs()) == 1
    assert main(["results", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vq" in out and "mse=" in out


@pytest.mark.parametrize("args, message", [
    (["run", "--task", "gmm", "--method", "vqq"], "unknown method 'vqq': did you mean vq"),
    (["run", "--task", "gmmm", "--method", "vq"], "unknown task 'gmmm': did you mean gmm"),
    (["run", "--task", "gmm", "--method", "vq", "--set", "bta=1"], "has no parameter 'bta'"),
    (["run", "--task", "gmm", "--method", "vq", "--set", "budget.steps=0"], "steps must be a positive integer"),
    (["run", "--task", "gmm", "--method", "vq", "--budget", "nope"], "has no budget named 'nope'"),
    (["run", "--task", "gmm", "--method", "vq", "--results", "/proc/vqbench"], "is not writable"),
    (["run", "--task", "gmm", "--method", "vq", "--plugin", "/nonexistent.py"], "does not exist"),
    (["run", "--task", "gmm", "--method", "vq", "--device", "cuda:7"], "CUDA is not available"),
])
def test_user_errors_are_one_line_without_traceback(args, message, capsys, tmp_path):
    if "--results" not in args:
        args = [*args, "--results", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_list_methods_and_tasks(capsys):
    assert main(["list", "methods", "vq"]) == 0
    assert "arXiv:1711.00937" in capsys.readouterr().out
    assert main(["list", "tasks"]) == 0
    assert "gmm" in capsys.readouterr().out
    assert main(["list", "methods", "zzz*"]) == 1


def test_results_on_empty_folder(tmp_path, capsys):
    assert main(["results", "--results", str(tmp_path)]) == 1
    assert "no runs" in capsys.readouterr().out


def test_parser_imports_no_heavy_command_module():
    """Building the parser for one command loads neither torch nor a heavy command's module (diagnose)."""
    code = ("import sys; from vqbench.commands.cli import build_parser; "
            "build_parser(['list', 'methods']).parse_args(['list', 'methods']); "
            "print(sorted(m for m in ('torch', 'vqbench.commands.diagnose') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_diagnose_is_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["diagnose", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vqbench diagnose") and "--codebook" in out and "--plugin" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "diagnose" in capsys.readouterr().out
