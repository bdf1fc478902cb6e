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


def check_last_dim(z: Tensor, dim: int) -> None:
    if z.shape[-1] != dim:
        raise ValueError(f"quantizer expects channel-last input with last dim {dim}, got shape {tuple(z.shape)}")


