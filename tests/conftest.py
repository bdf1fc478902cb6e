"""Shared fixtures: tiny specs that run in about a second on a CPU."""

from __future__ import annotations

import pytest
import torch

#: fixtures of the browser suites (a headless Chromium driver), defined next to their helpers
pytest_plugins = ["browser_helpers"]

TINY_GMM = {"n_train": 512, "n_eval": 256, "n_modes": 8, "hidden": 32, "codebook_size": 32}
TINY_BUDGET = {"steps": 24, "batch_size": 64, "eval_interval": 8}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches the tests fill (the digits classifier of gen-digits) go to a temporary folder, not ~/.cache."""
    import os

    previous = os.environ.get("VQBENCH_CACHE")
    os.environ["VQBENCH_CACHE"] = str(tmp_path_factory.mktemp("vqbench-cache"))
    yield
    if previous is None:
        os.environ.pop("VQBENCH_CACHE", None)
    else:
        os.environ["VQBENCH_CACHE"] = previous


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores; one intra-op thread keeps timings stable and results identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_spec():
    from vqbench.spec import make_spec

    def make(method: str = "vq", seed: int = 0, task: str = "gmm", task_params=None, method_params=None,
             budget=None):
        return make_spec(task, method, {**TINY_GMM, **(task_params or {})} if task == "gmm" else task_params,
                         method_params, seed=seed, budget={**TINY_BUDGET, **(budget or {})})

    return make
