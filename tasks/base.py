"""The Task contract: a task supplies pieces, the runner owns the one training loop.

A task (registered with ``@register_task``) is built with its params, then the runner calls
``bind(spec, results_root)``, ``setup(device, seed)``, ``feature_bank()`` (handed to a quantizer that
declares it uses one) and ``stages(quantizer, budget)``. Each :class:`Stage` is trained by the same
loop: ``batch(step)`` must be a pure function of ``step`` (so a resumed run sees the same batches),
``loss(batch)`` returns the scalar to minimise plus scalar logs, and ``evaluate()`` measures the
whole eval split. A generation task returns two stages (tokenizer, then prior).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqbench.distributed import shard
from vqbench.metrics import Evaluation
from vqbench.quantizer import Quantizer
from vqbench.spec import RunSpec


@dataclass
class Stage:
    name: str
    model: nn.Module  # every trainable parameter of this stage (frozen ones have requires_grad=False)
    batch: Callable[[int], Any]  # step -> batch on the device; deterministic in step
    loss: Callable[[Any], tuple[Tensor, dict[str, Tensor]]]
    evaluate: Callable[[], Evaluation]  # the whole eval split (what the board reports)
    steps: int | None = None  # None: the budget's steps
    lr: float | None = None  # None: the budget's lr
    quantizer: nn.Module | None = None  # whose on_step the runner calls
    items_per_batch: int = 0  # for the throughput figure (items/s)
    # the whole validation split (what tuning selects on), evaluated at the same steps as ``evaluate``
    validate: Callable[[], Evaluation] | None = None


class Task:
    """Base class of tasks. Subclasses set ``latent_dim`` and ``codebook_size`` in ``__init__``."""

    latent_dim: int
    codebook_size: int
    device: torch.device = torch.device("cpu")
    # set through bind() by the runner before setup(): the RunSpec being run and the results folder
    # (a generation task looks there for a finished tokenizer run to reuse); None outside the runner
    run_spec: RunSpec | None = None
    results_root: Path | None = None

    def bind(self, spec: RunSpec, results_root: str | os.PathLike[str]) -> None:
        """Called by the runner before :meth:`setup`: the RunSpec this task runs for and the results folder."""
        self.run_spec, self.results_root = spec, Path(results_root)

    def setup(self, device: torch.device, seed: int) -> None:
        """Load or generate data (must be deterministic); called once before ``stages``."""
        self.device = device

    def stages(self, quantizer: nn.Module, budget: Any) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def feature_bank(self) -> Tensor | None:
        """Features a method may initialise a large codebook from (VQGAN-LC); None if the task has none."""
        return None


class EpochSampler:
    """Deterministic mini-batch indices: batch ``step`` of a fresh permutation per epoch.

    ``indices(step)`` depends only on (n, batch_size, seed, step), which makes resumed runs see the
    same batches as uninterrupted ones. It is the *global* batch of a data-parallel run: each rank trains
    on its contiguous shard, :meth:`local_indices` (the whole batch in a single process).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n <= 0:
            raise ValueError("cannot sample batches from an empty training split")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = max(1, n // batch_size)
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            size = self.per_epoch * self.batch_size
            reps = -(-size // self.n)
            self._perm = torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])[:size]
            self._epoch = epoch
        return self._perm[position * self.batch_size:(position + 1) * self.batch_size]

    def local_indices(self, step: int) -> Tensor:
        """This rank's contiguous shard of :meth:`indices` (:func:`vqbench.distributed.shard`)."""
        return shard(self.indices(step))


def report_reconstruction(quantizer: nn.Module, mse: Tensor, elements_per_token: float) -> None:
    """Tell the quantizer the batch's per-element reconstruction MSE and the data elements per token
    (:meth:`vqbench.quantizer.Quantizer.observe_reconstruction`); a module that is not a Quantizer hears nothing."""
    if isinstance(quantizer, Quantizer):
        quantizer.observe_reconstruction(mse.detach(), elements_per_token)
