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


@pytest.mark.parametrize("stop_after", [5, 8, 13])
def test_killed_then_resumed_run_matches_uninterrupted(tmp_path, tiny_spec, stop_after):
    spec = tiny_spec(method_params={"beta": 0.3})
    reference = run(spec, tmp_path / "ref", progress=False)
    partial = run(spec, tmp_path / "resumed", progress=False, stop_after_steps=stop_after)
    assert partial.status == "interrupted"
    store = ResultStore(tmp_path / "resumed")
    assert not store.is_complete(spec.run_id) and store.checkpoint_path(spec.run_id).exists()
    resumed = run(spec, tmp_path / "resumed", progress=False)
    assert resumed.status == reference.status == "ok"
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
