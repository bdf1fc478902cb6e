"""SQ-VAE, Gaussian case: stochastic quantization with a learned variance that self-anneals.

Takida et al., "SQ-VAE: Variational Bayes on Discrete Representation with Self-annealed Stochastic
Quantization", arXiv:2205.07547 (Sec. 3-4; reference code sony/sqvae, ``GaussianVectorQuantizer`` with
``param_var_q="gaussian_1"``: one learned scalar variance). With encoder output ``z`` (the paper's z-hat),
codebook ``b_k`` and variance ``sigma^2 = exp(log_var)`` (a learned parameter):

* stochastic quantization ``P(z_q = b_k | z) = softmax_k(-||z - b_k||^2 / (2 sigma^2))``;
* training: a Gumbel-softmax sample of it at temperature ``tau`` (Jang et al. 1611.01144),
  ``y = softmax((l + g) / tau)``, relaxed ``z_q = y @ B`` as in the reference code (``hard=True`` gives the
  straight-through sample instead); the index is ``argmax y``;
* eval: deterministic ``k* = argmin_k ||z - b_k||^2``, ``z_q = b_{k*}`` (the reference's ``flg_quant_det``);
* auxiliary loss (the quantization part of the Gaussian SQ-VAE ELBO, per latent vector, averaged over
  the ``N`` vectors of the batch), exactly::

      loss = weight * mean_n [ KL(P(.|z_n) || Uniform(K))  +  ||z_n - z_q,n||^2 / (2 sigma^2) ]
           = weight * mean_n [ sum_k p_nk log p_nk + log K  +  sum_d (z_nd - z_q,nd)^2 / (2 sigma^2) ]

  i.e. the discrete KL (the reference's ``kld_discrete``, plus the constant ``log K`` that makes it a true
  KL to the uniform prior) and the variance-weighted distortion between the two Gaussians
  ``N(z, sigma^2 I)`` and ``N(z_q, sigma^2 I)`` (``kld_continuous``), evaluated with the same sample that
  goes to the decoder. The decoder's likelihood term is the task's reconstruction loss, not part of it.
  ``sigma^2`` gets gradient from both terms (through the logits and the ``1 / (2 sigma^2)`` weight).
* temperature (reference trainer): ``tau = max(tau_init * exp(-tau_decay * step), tau_min)``, updated in
  ``on_step`` (training only); step and tau live in buffers (resume-safe).

Memory: the ``N x K`` assignment is evaluated in row chunks of at most ``SEARCH_CHUNK_ELEMENTS`` entries,
checkpointed in training (see :func:`vqbench.methods.gumbel.map_row_chunks`); eval-mode argmin is chunked likewise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from vqbench.methods.base import QuantizeOutput, Quantizer, check_last_dim
from vqbench.methods.gumbel import kl_to_uniform, map_row_chunks, neg_sq_distances, sample_codes
from vqbench.registry import register_method

MIN_VARIANCE = 1e-10  # the reference clamps the variance at this value before inverting it


@register_method("sqvae", version=1, paper="2205.07547", family="stochastic",
                 description="SQ-VAE (Gaussian): Gumbel-softmax over -||z-b||^2/(2 sigma^2) with a learned, "
                             "self-annealing variance; discrete KL + variance-weighted distortion",
                 log_var_init=0.0, weight=1.0, hard=False, tau_init=1.0, tau_decay=1e-5, tau_min=0.0)
class SQVAEQuantizer(Quantizer):
    """Gaussian SQ-VAE quantizer; codebook ``B`` (K, dim) initialised N(0, 1) as in the reference code.

    ``init_scale`` and ``init_offset`` are the restricted-initialisation knobs (``B = init_scale * N(0, 1) +
    init_offset``). In training with ``hard=False`` (the paper's relaxation) ``z_q`` is a convex combination
    of codes, so ``decode_indices(indices)`` equals ``z_q`` in eval mode (and with ``hard=True``).
    """

    def __init__(self, dim: int, codebook_size: int, log_var_init: float = 0.0, weight: float = 1.0,
                 hard: bool = False, tau_init: float = 1.0, tau_decay: float = 1e-5, tau_min: float = 0.0,
                 init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if tau_init <= 0 or tau_decay < 0 or tau_min < 0:
            raise ValueError("need tau_init > 0, tau_decay >= 0 and tau_min >= 0")
        self.dim, self.codebook_size = dim, codebook_size
        self.weight, self.hard = weight, hard
        self.tau_init, self.tau_decay, self.tau_min = tau_init, tau_decay, tau_min
        self.embedding = nn.Parameter(torch.randn(codebook_size, dim) * init_scale + init_offset)
        self.log_var = nn.Parameter(torch.tensor(float(log_var_init)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("tau", torch.tensor(float(tau_init)))

    def codebook(self) -> Tensor:
        return self.embedding

    def variance(self) -> Tensor:
        return self.log_var.float().exp().clamp_min(MIN_VARIANCE)

    def on_step(self, step: int, total_steps: int) -> None:
        if not self.training:
            return
        self.step.fill_(step)
        tau = max(self.tau_init * math.exp(-self.tau_decay * step), self.tau_min)
        self.tau.fill_(max(tau, 1e-8))

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        flat = z.reshape(-1, self.dim)
        tau, training = float(self.tau), self.training
        var = self.variance()

        def chunk(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            codes = self.embedding.float()
            logits = neg_sq_distances(x, codes) / (2 * var)
            kl = kl_to_uniform(logits)
            if training:
                z_q, index = sample_codes(logits, codes, tau, self.hard)
            else:
                index = logits.argmax(dim=-1)
                z_q = codes[index]
            distortion = (x - z_q).pow(2).sum() / (2 * var)
            return z_q, index, kl, distortion

        with torch.autocast(flat.device.type, enabled=False):
            z_q, indices, kl_sum, dist_sum = map_row_chunks(chunk, flat.float(), self.codebook_size,
                                                            ("cat", "cat", "sum", "sum"))
        n = max(flat.shape[0], 1)
        kl, distortion = kl_sum / n, dist_sum / n
        loss = self.weight * (kl + distortion)
        return QuantizeOutput(z_q.to(z.dtype).reshape(z.shape), indices.reshape(z.shape[:-1]), loss,
                              {"kl_discrete": kl.detach(), "distortion": distortion.detach(),
                               "variance": var.detach().clone(), "tau": self.tau.detach().clone()})
