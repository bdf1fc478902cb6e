"""Helpers shared by the task tests (test_images.py, test_tasks_synthetic.py); not a test module."""

from __future__ import annotations

from typing import Any

import torch

from vqbench.registry import create_method, create_task
from vqbench.spec import Budget


def evaluate_with_nine_codes(task_name: str, params: dict[str, Any], batch_size: int) -> tuple[Any, Any, int]:
    """Build ``task_name`` with ``params`` and FSQ with levels [3, 3] (9 codes, whatever the task's codebook size),
    evaluate the untrained model once: (the task, its evaluation, how many of the 9 codes it used)."""
    task = create_task(task_name, **params)
    task.setup(torch.device("cpu"), 0)
    q = create_method("fsq", dim=task.latent_dim, codebook_size=task.codebook_size, levels=[3, 3])
    stage = task.stages(q, Budget(steps=1, batch_size=batch_size, eval_interval=1))[0]
    stage.model.eval()
    evaluation = stage.evaluate()
    used = sum(1 for c in evaluation.arrays["usage_histogram"] if c > 0)
    return task, evaluation, used
