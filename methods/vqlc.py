"""VQGAN-LC: a large frozen codebook of feature-bank cluster centres, projected into z-space by a linear layer.

Zhu et al., "Scaling the Codebook Size of VQGAN to 100,000 with a Utilization Rate of 99%", arXiv:2406.11837
(reference: zh460045050/VQGAN-LC, ``vqgan-gpt-lc/models/models_vq.py`` with ``tuning_codebook=0``,
``use_cblinear=1``).

* frozen codes ``C`` (K x F): k-means centres of a feature bank (M x F) the task supplies through
  :meth:`VQGANLC.init_from_feature_bank` (the paper clusters pretrained CLIP features; here: Lloyd's k-means,
  ``kmeans_iters`` rounds from K distinct random bank rows, empty clusters keep their centre);
* trainable projector ``P(c) = W c + b``, ``nn.Linear(F, dim)`` with ``W ~ N(0, 1/dim)`` (the reference init);
* index ``k = argmin_k ||z - P(c_k)||^2``, ``z_q = z + sg[P(c_k) - z]``;
* ``L = ||z - sg[P(c_k)]||^2 + codebook_weight ||sg[z] - P(c_k)||^2`` with the reference's
  ``codebook_weight = 0.33`` (weight 1 on the encoder side).

Without a feature bank (the task has none) the fallback is stated and recorded: on the first training forward the
frozen codes become k-means centres of that batch's latents (F = dim), and the projector starts at the identity
(``W = I``, ``b = 0``) so the initial codes are those centres. With ``init="data"`` the frozen codes are instead
drawn by :func:`vqbench.methods.base.data_relative_codes` from the first batch (the restricted-init knob: ``init_scale``,
``init_offset``; identity projector too). Buffer ``init_source`` (also logged as ``stats["init_source"]``): 0 not
yet initialised, 1 feature-bank k-means, 2 first-batch k-means (fallback), 3 first-batch data-relative draws.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vqbench.methods.base import (
    QuantizeOutput,
    Quantizer,
    check_last_dim,
    data_relative_codes,
    nearest_code,
    straight_through,
)
from vqbench.registry import register_method

UNINITIALISED, FROM_BANK, FROM_BATCH_KMEANS, FROM_BATCH_DATA = 0, 1, 2, 3


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """Lloyd's k-means centres (k, F) of ``x`` (M, F); assignment by the chunked :func:`nearest_code`.

    Starts from ``k`` distinct random rows (with replacement, plus a 1e-3 x std jitter, when M < k); a cluster
    that empties keeps its previous centre.
    """
    x = x.detach().float()
    m = x.shape[0]
    if m == 0:
        raise ValueError("k-means needs at least one point")
    if m >= k:
        centres = x[torch.randperm(m, device=x.device)[:k]].clone()
    else:
        centres = x[torch.randint(0, m, (k,), device=x.device)].clone()
        centres += 1e-3 * x.std(dim=0, unbiased=False).clamp_min(1e-6) * torch.randn_like(centres)
    for _ in range(iters):
        assign = nearest_code(x, centres)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


@register_method("vq-lc", version=1, paper="2406.11837", family="reparameterised-codebook",
                 description="VQGAN-LC: large frozen codebook of feature-bank k-means centres plus a trainable "
                             "linear projector into z-space",
                 codebook_weight=0.33, kmeans_iters=10, init="kmeans")
class VQGANLC(Quantizer):
    """VQGAN-LC: frozen ``frozen_codes`` (K, F) buffer and trainable ``projector`` (F -> dim)."""

    def __init__(self, dim: int, codebook_size: int, codebook_weight: float = 0.33, kmeans_iters: int = 10,
                 init: str = "kmeans", init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in ("kmeans", "data"):
            raise ValueError(f"init must be 'kmeans' (bank, else first batch) or 'data', got {init!r}")
        self.dim, self.codebook_size = dim, codebook_size
        self.codebook_weight, self.kmeans_iters = codebook_weight, kmeans_iters
        self.init, self.init_scale, self.init_offset = init, init_scale, init_offset
        self.register_buffer("frozen_codes", torch.zeros(codebook_size, dim))
        self.projector = self._new_projector(dim)
        self.register_buffer("init_source", torch.tensor(UNINITIALISED))

    def _new_projector(self, features: int) -> nn.Linear:
        layer = nn.Linear(features, self.dim)
        nn.init.normal_(layer.weight, std=self.dim ** -0.5)
        return layer

    @torch.no_grad()
    def init_from_feature_bank(self, features: Tensor) -> None:
        """Frozen codes = k-means centres of ``features`` (M, F); projector ``F -> dim`` re-created."""
        if self.init == "data":
            return  # the restricted-init experiment draws its codes from the first batch instead
        if features.dim() != 2 or features.shape[0] < self.codebook_size:
            raise ValueError(f"vq-lc needs a feature bank (M, F) with M >= K = {self.codebook_size} rows, "
                             f"got shape {tuple(features.shape)}")
        centres = kmeans(features, self.codebook_size, self.kmeans_iters)
        device = self.frozen_codes.device
        self.frozen_codes = centres.to(device)
        self.projector = self._new_projector(centres.shape[1]).to(device)
        self.init_source.fill_(FROM_BANK)

    @torch.no_grad()
    def _init_from_batch(self, flat: Tensor) -> None:
        if self.init == "data":
            codes, source = data_relative_codes(flat, self.codebook_size, self.init_scale, self.init_offset), \
                FROM_BATCH_DATA
        else:
            codes, source = kmeans(flat, self.codebook_size, self.kmeans_iters), FROM_BATCH_KMEANS
        # in place: the runner's optimizer already holds these parameters (shapes are (K, dim) and dim -> dim)
        self.frozen_codes.copy_(codes)
        self.projector.weight.copy_(torch.eye(self.dim, device=flat.device))
        self.projector.bias.zero_()
        self.init_source.fill_(source)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Adopt the saved codebook width F (a bank's features may differ from ``dim``) before loading."""
        saved = state_dict.get(prefix + "frozen_codes")
        if saved is not None and saved.shape != self.frozen_codes.shape:
            device = self.frozen_codes.device
            self.frozen_codes = torch.empty(saved.shape, device=device)
            self.projector = self._new_projector(saved.shape[1]).to(device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def codebook(self) -> Tensor:
        return self.projector(self.frozen_codes)

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.projector(self.frozen_codes[indices])

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            if self.training and int(self.init_source) == UNINITIALISED:
                self._init_from_batch(flat)
            with torch.no_grad():
                indices = nearest_code(flat, self.codebook())
            codes = self.decode_indices(indices)
            commitment_loss = F.mse_loss(flat, codes.detach())
            codebook_loss = F.mse_loss(codes, flat.detach())
            loss = commitment_loss + self.codebook_weight * codebook_loss
            z_q = straight_through(flat, codes)
        return QuantizeOutput(z_q.reshape(z.shape), indices.reshape(z.shape[:-1]), loss,
                              {"codebook_loss": codebook_loss.detach(), "commitment_loss": commitment_loss.detach(),
                               "init_source": self.init_source.detach().float()})
