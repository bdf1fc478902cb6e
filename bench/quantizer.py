"""The Quantizer contract: what every method (built-in or plugin) is, and what ``forward`` returns.

A quantizer is an ``nn.Module`` whose ``forward(z)`` takes channel-last ``z`` of shape ``(..., dim)``
and returns a :class:`QuantizeOutput`. Everything a method does to its codebook (EMA, restarts,
k-means init, schedules) happens inside the module, so the runner stays generic. See ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class QuantizeOutput:
    """What ``Quantizer.forward`` returns.

    ``z_q``: same shape as ``z``, carrying the method's gradient path to ``z``;
    ``indices``: ``z.shape[:-1]`` long tensor in ``[0, codebook_size)``;
    ``loss``: scalar auxiliary loss, already weighted;
    ``stats``: scalar tensors the method wants logged.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class: subclasses set ``dim`` and ``codebook_size`` and implement ``forward``."""

    dim: int
    codebook_size: int
    #: What this method keeps identical across the ranks of a data-parallel run, one short sentence per
    #: mechanism (e.g. ``("EMA counts and sums: all-reduced before the update",)``); a class may list every
    #: option's sentence and an instance set its own (only its options'). ``()``: nothing to sync (stateless, or
    #: every state change follows from gradients, which the runner averages). ``None``: not declared: a method
    #: with buffers that declares nothing is refused for runs of more than one process (see
    #: :func:`uses_undeclared_state`).
    #:
    #: Declaring a sync promises: a training-mode forward on rank ``r`` with its shard of a global batch leaves every
    #: rank's state identical and equal to one process's with the whole batch (batch statistics summed over ranks
    #: and divided by the global row count, ``vqbench.distributed.differentiable_sum`` where the statistic is in a
    #: loss; buffers of vectors gathered in rank order; random choices from one stream shared by all ranks, indexing
    #: the global batch). Collectives run only in training-mode calls (``forward``, ``on_step``,
    #: ``observe_reconstruction``, ``init_from_feature_bank``), which every rank makes in the same order; eval-mode
    #: forwards make none.
    distributed_sync: tuple[str, ...] | None = None
    #: Where 2 ranks x batch B/2 cannot equal 1 rank x batch B up to float rounding, the largest absolute
    #: difference of losses, codebooks and states this method allows after a few dozen steps, and why in the class
    #: docstring (0: equal up to float rounding; the indices are then identical).
    distributed_tolerance: float = 0.0

    def forward(self, z: Tensor) -> QuantizeOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def codebook(self) -> Tensor | None:
        """The effective code vectors in z-space, ``(codebook_size, dim)``; ``None`` if not enumerable."""
        return None

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code vectors (in z-space) for ``indices`` of shape ``(...)`` -> ``(..., dim)``."""
        codes = self.codebook()
        if codes is None:
            raise ValueError(f"{type(self).__name__} cannot decode indices: its codebook is not enumerable")
        return codes[indices]

    def on_step(self, step: int, total_steps: int) -> None:
        """Called by the runner before each optimizer step (schedules, restarts, deferred switches)."""

    def init_from_feature_bank(self, features: Tensor) -> None:
        """Optional: initialise the codebook from the task's feature bank ``features`` of shape ``(M, F)``.

        A method that overrides this declares that it uses a bank (see :func:`uses_feature_bank`): the runner
        then calls it once, after the task's ``setup`` and before training, with the module already on the
        run's device, whenever the task has a bank (``Task.feature_bank()``). The default does nothing and
        is never called by the runner.
        """

    def observe_reconstruction(self, mse: Tensor, elements_per_token: float) -> None:
        """Optional: hear the task's reconstruction error after each training loss (the default ignores it).

        Tasks call it through :func:`vqbench.tasks.base.report_reconstruction` with the batch's per-element mean
        squared error (detached) and the number of data elements each token stands for, so that a method whose
        objective balances its latent terms against the reconstruction (SQ-VAE's ARELBO) can follow it.
        """


def uses_feature_bank(quantizer: nn.Module) -> bool:
    """Whether the runner hands ``quantizer`` the task's feature bank: it is a :class:`Quantizer` whose class
    overrides :meth:`Quantizer.init_from_feature_bank`."""
    return isinstance(quantizer, Quantizer) and \
        type(quantizer).init_from_feature_bank is not Quantizer.init_from_feature_bank


def uses_undeclared_state(quantizer: nn.Module) -> list[str]:
    """Names of the persistent buffers of ``quantizer`` (submodules included) when it declares no
    :attr:`Quantizer.distributed_sync` (``None``); ``[]`` when it declares one or keeps no buffers.

    The state a data-parallel run could let drift apart between ranks: the runner refuses such a method for more
    than one process. Non-persistent buffers (constants derived from the configuration, outside the state dict) do
    not count.
    """
    if getattr(quantizer, "distributed_sync", None) is not None:
        return []
    saved = set(quantizer.state_dict(keep_vars=True))
    return [name for name, _ in quantizer.named_buffers() if name in saved]


def check_last_dim(z: Tensor, dim: int) -> None:
    if z.shape[-1] != dim:
        raise ValueError(f"quantizer expects channel-last input with last dim {dim}, got shape {tuple(z.shape)}")


