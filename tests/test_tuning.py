"""Equal tuning budgets (vqbench.tuning): spaces, Sobol trials, and a selection that reads validation only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vqbench.errors import UserError
from vqbench.tuning import LR_KNOB, Knob, parse_space, select_trials, split_trial, trial_points


@pytest.mark.parametrize(("space", "message"), [
    ({"nope": (0.1, 1.0)}, "no such parameter"),
    ({"beta": (1.0, 1.0)}, "is empty"),
    ({"beta": (2.0, 1.0, "log")}, "is empty"),
    ({"beta": (-1.0, 1.0, "log")}, "above zero"),
    ({"beta": (0.0, 1.0, "log")}, "above zero"),
    ({"beta": (0.1, 1.0, "cubic")}, "unknown scale"),
    ({"beta": (0.5, 2.5, "int")}, "integer bounds"),
    ({"beta": "wide"}, "give a range"),
])
def test_bad_spaces_are_one_line_errors_naming_method_and_parameter(space, message):
    with pytest.raises(UserError, match=message) as info:
        parse_space("vq", space, {"beta", "decay"})
    name = next(iter(space))
    assert "'vq'" in str(info.value) and repr(name) in str(info.value) and "\n" not in str(info.value)


def test_zero_trials_is_an_error():
    with pytest.raises(UserError, match="--trials"):
        trial_points((), 0, name="t", task="gmm", method="vq")


def test_trials_are_inside_bounds_deterministic_and_spread():
    knobs = parse_space("vq", {"beta": (0.05, 2.0, "log"), "decay": (0.8, 0.999), "k": (2, 5, "int")})
    points = trial_points(knobs, 16, name="tuned", task="gmm", method="vq")
    assert len(points) == 16 and points == trial_points(knobs, 16, name="tuned", task="gmm", method="vq")
    assert points != trial_points(knobs, 16, name="tuned", task="gmm", method="vq-ema")
    for p in points:
        assert set(p) == {LR_KNOB, "beta", "decay", "k"}
        assert 0.25 <= p[LR_KNOB] <= 4.0 and 0.05 <= p["beta"] <= 2.0 and 0.8 <= p["decay"] <= 0.999
        assert p["k"] in (2, 3, 4, 5)
    # a Sobol sample covers each half of every axis in balance (log axes in log space)
    betas = np.log([p["beta"] for p in points])
    assert (betas < np.log(0.05 * math.sqrt(2.0 / 0.05))).sum() == 8
    assert sorted({p["k"] for p in points}) == [2, 3, 4, 5]


def test_split_trial_scales_the_task_lr():
    params, lr = split_trial({LR_KNOB: 2.0, "beta": 0.3}, 1e-3)
    assert params == {"beta": 0.3} and lr == 2e-3


def test_knob_values_round_to_four_digits():
    exact = math.exp(math.log(0.1) + 0.123456 * math.log(10))
    assert Knob("x", 0.1, 1.0, "log").value(0.123456) == float(f"{exact:.4g}") != exact


def _store(values: dict[str, list[float]], *, higher: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, metrics = [], []
    for method, trial_values in values.items():
        for i, v in enumerate(trial_values):
            rid = f"{method}-{i}"
            runs.append({"run_id": rid, "task": "gmm", "method": method, "status": "ok" if v is not None else "failed",
                         "tags": ["tune:tuned", f"trial:{i}"], "main_metric": "mse", "higher_is_better": higher})
            if v is not None:
                metrics += [{"run_id": rid, "split": "validation", "step": 10, "metric": "mse", "value": v},
                            {"run_id": rid, "split": "validation", "step": 5, "metric": "mse", "value": -99.0},
                            {"run_id": rid, "split": "eval", "step": 10, "metric": "mse", "value": 1.0 + i}]
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_selection_picks_the_best_final_validation_value_with_lowest_trial_on_ties():
    runs, metrics = _store({"vq": [0.5, 0.2, None, 0.2], "fsq": [0.9, 0.8]})
    selected = select_trials(runs, metrics, "tuned").set_index("method")
    assert selected.loc["vq", "trial"] == 1 and selected.loc["vq", "value"] == 0.2  # tie 1 vs 3: lower index
    assert selected.loc["vq", "trials"] == 4 and selected.loc["vq", "trials_ok"] == 3
    assert selected.loc["fsq", "trial"] == 1
    assert selected.loc["vq", "spread"] == pytest.approx(np.percentile([0.5, 0.2, 0.2], 75) - 0.2)


def test_selection_never_reads_eval_metrics():
    runs, metrics = _store({"vq": [0.5, 0.2, 0.3], "fsq": [0.9, 0.8]})
    before = select_trials(runs, metrics, "tuned")
    poisoned = metrics.copy()
    eval_rows = poisoned["split"] == "eval"
    poisoned.loc[eval_rows, "value"] = np.random.default_rng(0).normal(size=int(eval_rows.sum())) * 1e6
    pd.testing.assert_frame_equal(before, select_trials(runs, poisoned, "tuned"))
    assert select_trials(runs, metrics[metrics["split"] == "validation"], "tuned").equals(before)


def test_selection_of_another_tuning_or_an_empty_store_is_empty():
    runs, metrics = _store({"vq": [0.5]})
    assert select_trials(runs, metrics, "other").empty
    assert select_trials(pd.DataFrame(), pd.DataFrame(), "tuned").empty
