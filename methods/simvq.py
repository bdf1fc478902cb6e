"""SimVQ: a frozen random basis reparameterised by one learnable linear layer.

Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer",
arXiv:2411.02038 (reference: youngsheen/SimVQ, ``taming/modules/vqvae/quantize.py``).

* codes ``q_k = W c_k + b`` (``Q = C W^T + b``), ``C`` (K x dim) frozen, drawn N(0, 1/dim); ``W``, ``b`` an
  ``nn.Linear(dim, dim)`` (bias as in the reference; ``bias=False`` gives vector-quantize-pytorch's layer);
* index ``k = argmin_k ||z - q_k||^2`` over the *projected* codebook, ``z_q = z + sg[q_k - z]``;
* ``L = ||sg[z] - q_k||^2 + beta ||z - sg[q_k]||^2``, ``beta = 0.25``: only ``W``, ``b`` (and the encoder) learn,
  and a gradient step on ``W`` moves every code at once.

``decode_indices`` uses the projected codebook ``W c_k + b``. The loss weights are those of the reference configs
(``legacy: false``: weight 1 on the codebook side, ``beta`` on the commitment side); the reference module's own
default (``legacy=True``) swaps them. Differences from the reference: no index remapping (``remap``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.methods.base import DATA_INIT_SYNC, CodebookQuantizer, nearest_code, straight_through
from vqbench.quantizer import QuantizeOutput
from vqbench.registry import register_method


# version 2: the nearest-code search is centred on the codebook mean (issue 13): near-tie indices, and so runs, change
@register_method("simvq", version=2,
                 search_space={"beta": (0.05, 1.0, "log")},
                 paper="2411.02038", family="reparameterised-codebook",
                 description="SimVQ: frozen Gaussian basis times one learnable linear layer; nearest projected code",
                 differences="none in the quantizer (the reference configs' legacy=false loss weights); no index "
                             "remap",
                 beta=0.25, bias=True, init="normal")
class SimVQ(CodebookQuantizer):
    """SimVQ with frozen basis buffer ``basis`` (K, dim) and learnable ``proj`` (dim -> dim).

    Restricted-init knob (on the frozen basis, :class:`vqbench.methods.base.CodebookQuantizer`): ``init="normal"``
    draws N(0, 1/dim), ``"uniform"`` U(-1/K, 1/K), both times ``init_scale`` plus ``init_offset``; ``"data"`` draws
    the basis with :func:`vqbench.methods.base.data_relative_codes` from the first training batch and sets ``proj``
    to the identity (``W = I``, ``b = 0``) so that the initial codes are exactly those draws.

    Data-parallel runs: the frozen basis never changes and ``proj`` follows the averaged gradients; only
    ``init="data"`` needs the global batch (``distributed_sync`` of an instance: ``()`` otherwise).
    """

    distributed_sync = (DATA_INIT_SYNC,)

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, bias: bool = True, init: str = "normal",
                 init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__(dim, codebook_size, init, init_scale, init_offset)
        self.beta = beta
        self.distributed_sync = (DATA_INIT_SYNC,) if init == "data" else ()
        self.register_buffer("basis", self.initial_codes(normal_std=dim ** -0.5))
        self.proj = nn.Linear(dim, dim, bias=bias)

    def codebook(self) -> Tensor:
        return self.proj(self.basis)

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.proj(self.basis[indices])

    def raw_codes(self) -> Tensor:
        return self.basis

    @torch.no_grad()
    def init_from_data(self, flat: Tensor) -> None:
        super().init_from_data(flat)
        self.proj.weight.copy_(torch.eye(self.dim, device=flat.device))
        if self.proj.bias is not None:
            self.proj.bias.zero_()

    def quantize(self, flat: Tensor) -> QuantizeOutput:
        with torch.no_grad():
            indices = nearest_code(flat, self.codebook())
        codes = self.decode_indices(indices)  # W c_k + b, gradient to W and b only
        codebook_loss = F.mse_loss(codes, flat.detach())
        commitment_loss = F.mse_loss(flat, codes.detach())
        loss = codebook_loss + self.beta * commitment_loss
        return QuantizeOutput(straight_through(flat, codes), indices, loss,
                              {"codebook_loss": codebook_loss.detach(), "commitment_loss": commitment_loss.detach()})
