"""Synthetic tasks: usage metrics over the method's real codebook size, and the reconstruction report."""

from __future__ import annotations

import pytest
import torch
from task_helpers import evaluate_with_nine_codes

from vqbench.registry import create_method, create_task
from vqbench.spec import Budget

SMALL = {"n_train": 512, "n_eval": 256}


@pytest.mark.parametrize("task_name", ["gmm", "gmm-codebook", "manifold"])
def test_usage_is_over_the_methods_real_codebook_size(task_name):
    """FSQ with levels [3, 3] has 9 codes on a 256-code task: utilization and the histogram are over 9."""
    task, ev, used = evaluate_with_nine_codes(task_name, SMALL, batch_size=64)
    assert task.codebook_size == 256 and ev.metrics["codebook_size"] == 9
    assert len(ev.arrays["usage_histogram"]) == 9 and ev.metrics["utilization"] == pytest.approx(used / 9)


def test_training_loss_reports_the_reconstruction_to_a_listening_quantizer():
    """sqvae hears the batch's mse and the data elements per token (gmm: data_dim, one token per vector)."""
    task = create_task("gmm", **SMALL)
    task.setup(torch.device("cpu"), 0)
    q = create_method("sqvae", dim=task.latent_dim, codebook_size=task.codebook_size)
    stage = task.stages(q, Budget(steps=1, batch_size=64, eval_interval=1))[0]
    _, logs = stage.loss(stage.batch(0))
    assert float(q.rec_mse) == pytest.approx(float(logs["rec_loss"]))
    assert float(q.elements_per_token) == task.data_dim == 32
    assert float(q.latent_scale()) == pytest.approx(2 * float(logs["rec_loss"]) / 32)
