import dataclasses

import pytest

from vqbench.errors import UserError
from vqbench.spec import Budget, RunSpec, make_spec


def test_same_spec_same_id_and_json_round_trip():
    a = make_spec("gmm", "vq", {"n_modes": 8}, {"beta": 0.5}, seed=3)
    b = make_spec("gmm", "vq", {"n_modes": 8}, {"beta": 0.5}, seed=3)
    assert a.run_id == b.run_id and len(a.run_id) == 16
    assert RunSpec.from_json(a.to_json()) == a
    assert RunSpec.from_json(a.to_json()).run_id == a.run_id


def test_explicit_default_equals_implicit_default():
    assert make_spec("gmm", "vq", method_params={"beta": 0.25}).run_id == make_spec("gmm", "vq").run_id


@pytest.mark.parametrize("change", [
    {"seed": 1},
    {"task_params": {"n_modes": 9}},
    {"method_params": {"beta": 0.3}},
    {"budget": {"steps": 7}},
    {"task_version": "next"},
    {"method_version": "next"},
])
def test_any_change_changes_the_id(change):
    base = make_spec("gmm", "vq")
    fields = {}
    for key, value in change.items():
        if key == "budget":
            fields[key] = dataclasses.replace(base.budget, **value)
        elif key in ("task_params", "method_params"):
            fields[key] = {**getattr(base, key), **value}
        elif value == "next":  # whatever version the registry has now, the next one
            fields[key] = getattr(base, key) + 1
        else:
            fields[key] = value
    assert dataclasses.replace(base, **fields).run_id != base.run_id


def test_tags_do_not_change_the_id():
    base = make_spec("gmm", "vq")
    assert dataclasses.replace(base, tags=("suite:x",)).run_id == base.run_id


def test_param_order_does_not_matter():
    a = RunSpec("t", "m", {"a": 1, "b": 2}, {})
    b = RunSpec("t", "m", {"b": 2, "a": 1}, {})
    assert a.run_id == b.run_id


def test_bad_values_fail_early():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        Budget(steps=0)
    with pytest.raises(TypeError, match="not JSON-like"):
        RunSpec("t", "m", {"x": object()})
    with pytest.raises(UserError, match="no budget named"):
        make_spec("gmm", "vq", budget="huge")
    with pytest.raises(UserError, match="'dim' is set by the task"):
        make_spec("gmm", "vq", method_params={"dim": 3})
    with pytest.raises(UserError, match="bad budget"):
        make_spec("gmm", "vq", budget={"stepz": 3})
