"""SimVQ: a frozen random basis reparameterised by one learnable linear layer.

Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer",
arXiv:2411.02038 (reference: youngsheen/SimVQ, ``taming/modules/vqvae/quantize.py``).

* codes ``q_k = W c_k + b`` (``Q = C W^T + b``), ``C`` (K x dim) frozen, drawn N(0, 1/dim); ``W``, ``b`` an
  ``nn.Linear(dim, dim)`` (bias as in the reference; ``bias=False`` gives vector-quantize-pytorch's layer);
* index ``k = argmin_k ||z - q_k||^2`` over the *projected* codebook, ``z_q = z + sg[q_k - z]``;
* ``L = ||sg[z] - q_k||^2 + beta ||z - sg[q_k]||^2``, ``beta = 0.25``: only ``W``, ``b`` (and the encoder) learn,
  and a gradient step on ``W`` moves every code at once.

``decode_indices`` uses the projected codebook ``W c_k + b``.
"""

from __future__ import annotations

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


@register_method("simvq", version=1, paper="2411.02038", family="reparameterised-codebook",
                 description="SimVQ: frozen Gaussian basis times one learnable linear layer; nearest projected code",
                 beta=0.25, bias=True, init="normal")
class SimVQ(Quantizer):
    """SimVQ with frozen basis buffer ``basis`` (K, dim) and learnable ``proj`` (dim -> dim).

    Restricted-init knob (on the frozen basis): ``init="normal"`` draws N(0, 1/dim), ``"uniform"`` U(-1/K, 1/K),
    both times ``init_scale`` plus ``init_offset``; ``"data"`` draws the basis with
    :func:`vqbench.methods.base.data_relative_codes` from the first training batch and sets ``proj`` to the identity
    (``W = I``, ``b = 0``) so that the initial codes are exactly those draws (flag buffer ``data_initialised``).
    """

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, bias: bool = True, init: str = "normal",
                 init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in ("normal", "uniform", "data"):
            raise ValueError(f"init must be 'normal', 'uniform' or 'data', got {init!r}")
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        self.init_scale, self.init_offset = init_scale, init_offset
        if init == "uniform":
            basis = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        else:
            basis = torch.randn(codebook_size, dim) * dim ** -0.5
        if init != "data":
            basis = basis * init_scale + init_offset
        self.register_buffer("basis", basis)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.register_buffer("data_initialised", torch.tensor(init != "data"))

    def codebook(self) -> Tensor:
        return self.proj(self.basis)

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.proj(self.basis[indices])

    @torch.no_grad()
    def _init_from_data(self, flat: Tensor) -> None:
        self.basis.copy_(data_relative_codes(flat, self.codebook_size, self.init_scale, self.init_offset))
        self.proj.weight.copy_(torch.eye(self.dim, device=flat.device))
        if self.proj.bias is not None:
            self.proj.bias.zero_()
        self.data_initialised.fill_(True)

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            if self.training and not bool(self.data_initialised):
                self._init_from_data(flat)
            with torch.no_grad():
                indices = nearest_code(flat, self.codebook())
            codes = self.decode_indices(indices)  # W c_k + b, gradient to W and b only
            codebook_loss = F.mse_loss(codes, flat.detach())
            commitment_loss = F.mse_loss(flat, codes.detach())
            loss = codebook_loss + self.beta * commitment_loss
            z_q = straight_through(flat, codes)
        return QuantizeOutput(z_q.reshape(z.shape), indices.reshape(z.shape[:-1]), loss,
                              {"codebook_loss": codebook_loss.detach(), "commitment_loss": commitment_loss.detach()})
