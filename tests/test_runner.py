from pathlib import Path

import pandas as pd
import pytest

from vqbench.errors import UserError
from vqbench.registry import load_plugin
from vqbench.runner import run
from vqbench.store import ResultStore

NAN_PLUGIN = str(Path(__file__).parent / "plugins" / "nan_method.py")


def metrics_of(results, spec):
    df = ResultStore(results).load_metrics(spec.task)
    return df.sort_values(["split", "step", "metric"]).reset_index(drop=True)


def test_run_writes_rows_and_is_deterministic(tmp_path, tiny_spec):
    spec = tiny_spec()
    a = run(spec, tmp_path / "a", progress=False)
    b = run(spec, tmp_path / "b", progress=False)
    assert a.status == b.status == "ok"
    ma, mb = metrics_of(tmp_path / "a", spec), metrics_of(tmp_path / "b", spec)
    pd.testing.assert_frame_equal(ma, mb)
    eval_steps = sorted(ma[ma.split == "eval"].step.unique())
    assert eval_steps == [0, 8, 16, 24]
    assert {"mse", "utilization", "perplexity", "dead_codes", "embedding_rank"} <= set(ma.metric)
    runs = ResultStore(tmp_path / "a").load_runs()
    row = runs.iloc[0]
    assert row.run_id == spec.run_id and row.status == "ok" and row.steps_done == 24
    assert row.device == "cpu (1 threads)" and row.items_per_s > 0 and row.main_metric == "mse"
    assert "torch" in row.versions and row.method_paper == "1711.00937"
    arrays = ResultStore(tmp_path / "a").load_arrays()
    assert {"usage_histogram", "embedding_spectrum", "codebook_spectrum"} <= set(arrays.name)


def test_complete_run_is_not_run_again(tmp_path, tiny_spec):
    spec = tiny_spec()
    assert run(spec, tmp_path, progress=False).status == "ok"
    mtime = ResultStore(tmp_path).run_path(spec.run_id).stat().st_mtime_ns
    assert run(spec, tmp_path, progress=False).status == "skipped"
    assert ResultStore(tmp_path).run_path(spec.run_id).stat().st_mtime_ns == mtime
    assert run(spec, tmp_path, progress=False, force=True).status == "ok"


@pytest.mark.parametrize("stop_after", [0, 5, 8, 13])
def test_killed_then_resumed_run_matches_uninterrupted(tmp_path, tiny_spec, stop_after):
    spec = tiny_spec(method_params={"beta": 0.3})
    reference = run(spec, tmp_path / "ref", progress=False)
    partial = run(spec, tmp_path / "resumed", progress=False, stop_after_steps=stop_after)
    assert partial.status == "interrupted"
    store = ResultStore(tmp_path / "resumed")
    assert not store.is_complete(spec.run_id) and store.checkpoint_path(spec.run_id).exists()
    resumed = run(spec, tmp_path / "resumed", progress=False)
    assert resumed.status == reference.status == "ok"
    # (stop_after 0: the checkpoint holds the evaluation at step 0, which the resumed run must not repeat)
    pd.testing.assert_frame_equal(metrics_of(tmp_path / "ref", spec), metrics_of(tmp_path / "resumed", spec))


def test_nan_loss_ends_run_as_diverged_and_keeps_measurements(tmp_path, tiny_spec):
    load_plugin(NAN_PLUGIN)
    spec = tiny_spec("test-nan-vq")
    result = run(spec, tmp_path, progress=False)
    assert result.status == "diverged"
    assert "loss became nan at step 10" in result.error
    row = ResultStore(tmp_path).load_runs().iloc[0]
    assert row.status == "diverged" and row.error == result.error
    assert row.method_source.startswith("file:")
    m = metrics_of(tmp_path, spec)
    assert set(m[m.split == "eval"].step) == {0, 8}  # evals before the divergence are kept
    assert run(spec, tmp_path, progress=False).status == "skipped"  # deterministic outcome: complete


def test_exception_in_training_is_recorded_as_failed_and_rerun(tmp_path, tiny_spec):
    load_plugin(NAN_PLUGIN)
    spec = tiny_spec("test-crash-vq")
    result = run(spec, tmp_path, progress=False)
    assert result.status == "failed" and result.error == "RuntimeError: deliberate crash"
    store = ResultStore(tmp_path)
    assert store.run_status(spec.run_id) == "failed" and not store.is_complete(spec.run_id)


def test_bad_task_param_value_is_a_user_error(tmp_path, tiny_spec):
    spec = tiny_spec(task_params={"n_modes": 0})
    with pytest.raises(UserError, match="cannot build task .gmm.*n_modes must be >= 1"):
        run(spec, tmp_path, progress=False)


def test_version_mismatch_is_a_user_error(tmp_path, tiny_spec):
    import dataclasses

    spec = dataclasses.replace(tiny_spec(), method_version=99)
    with pytest.raises(UserError, match="rebuild the spec"):
        run(spec, tmp_path, progress=False)


def test_steps_that_train_nothing_are_skipped_not_failed(tmp_path):
    from vqbench.spec import make_spec

    # gmm-codebook has no encoder; vq-deferred is the identity during warm-up: nothing has a gradient there
    spec = make_spec("gmm-codebook", "vq-deferred", {"n_train": 512, "n_eval": 256}, {"warmup_fraction": 0.5},
                     budget={"steps": 20, "batch_size": 64, "eval_interval": 10})
    result = run(spec, tmp_path, progress=False)
    assert result.status == "ok", result.error
    assert result.final["utilization"] > 0


BANK_PLUGIN = """
import torch
from vqbench.methods.vq import VectorQuantizer
from vqbench.registry import register_method, register_task
from vqbench.tasks.synthetic import GaussianMixtureTask


@register_method("test-bank-vq", family="test", description="records the feature bank it is handed",
                 differences="none: a test method")
class BankVQ(VectorQuantizer):
    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__(dim, codebook_size)
        self.register_buffer("bank_sum", torch.zeros(()))

    def init_from_feature_bank(self, features: torch.Tensor) -> None:
        self.bank_sum.fill_(float(features.sum()))


@register_task("test-bank-gmm", kind="synthetic", main_metric="mse", higher_is_better=False,
               description="gmm whose task offers a feature bank", n_modes=4, data_dim=8, latent_dim=4,
               codebook_size=16, separation=2.0, hidden=16, depth=1, n_train=256, n_eval=128, data_seed=0)
class BankGMM(GaussianMixtureTask):
    def feature_bank(self) -> torch.Tensor:
        return torch.arange(24.0).reshape(6, 4)  # sums to 276
"""


def test_declared_feature_bank_hook_and_method_differences_reach_the_run(tmp_path):
    import torch

    from vqbench.quantizer import uses_feature_bank
    from vqbench.registry import METHODS, TASKS, create_method
    from vqbench.spec import make_spec

    assert uses_feature_bank(create_method("vq-lc", dim=4, codebook_size=8))
    assert not uses_feature_bank(create_method("vq", dim=4, codebook_size=8))  # inherits the default: not handed one
    plugin = tmp_path / "bank_plugin.py"
    plugin.write_text(BANK_PLUGIN)
    load_plugin(str(plugin))
    try:
        budget = {"steps": 2, "batch_size": 32, "eval_interval": 2}
        store = ResultStore(tmp_path / "results")
        for method, bank_sum in (("test-bank-vq", 276.0), ("vq", None)):
            spec = make_spec("test-bank-gmm", method, {}, {}, budget=budget)
            result = run(spec, store.root, progress=False)
            assert result.status == "ok", result.error
            assert result.main_metric == "mse"
            models = torch.load(store.checkpoint_path(spec.run_id), weights_only=False)["models"]
            assert models[0].get("quantizer.bank_sum") == (None if bank_sum is None else torch.tensor(bank_sum))
        runs = store.load_runs().set_index("method")
        assert runs.loc["test-bank-vq", "method_differences"] == "none: a test method"
    finally:
        METHODS.remove("test-bank-vq")
        TASKS.remove("test-bank-gmm")


def test_task_is_bound_to_its_spec_and_results_before_setup(tmp_path, tiny_spec, monkeypatch):
    from vqbench.tasks.base import Task

    seen = []
    original = Task.bind

    def spy(self, spec, results_root):
        original(self, spec, results_root)
        seen.append((self.run_spec, self.results_root, hasattr(self, "train_x")))

    monkeypatch.setattr(Task, "bind", spy)
    spec = tiny_spec()
    assert run(spec, tmp_path, progress=False).status == "ok"
    assert seen == [(spec, tmp_path, False)]  # bound once, before setup() generated the data


def test_validation_split_is_measured_without_changing_training_or_eval(tmp_path, tiny_spec, monkeypatch):
    """Validation rows sit at the eval steps; removing the validation pass leaves every other row identical."""
    from vqbench.tasks.synthetic import GaussianMixtureTask

    spec = tiny_spec("vq-restart")  # random restarts: any RNG draw by the validation pass would show
    run(spec, tmp_path / "with")
    with_rows = ResultStore(tmp_path / "with").load_metrics()
    original = GaussianMixtureTask.stages

    def without_validation(self, quantizer, budget):
        stages = original(self, quantizer, budget)
        for stage in stages:
            stage.validate = None
        return stages

    monkeypatch.setattr(GaussianMixtureTask, "stages", without_validation)
    run(spec, tmp_path / "without")
    without_rows = ResultStore(tmp_path / "without").load_metrics()
    key = ["split", "step", "metric"]
    validation = with_rows[with_rows["split"] == "validation"]
    evals = with_rows[with_rows["split"] == "eval"]
    assert set(validation["step"]) == set(evals["step"]) and set(validation["metric"]) == set(evals["metric"])
    rest = with_rows[with_rows["split"] != "validation"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(rest[key + ["value"]], without_rows.sort_values(key).reset_index(drop=True)[
        key + ["value"]])
    assert (validation.set_index(["step", "metric"])["value"]
            != evals.set_index(["step", "metric"])["value"]).any()  # another split, other numbers
