"""SQ-VAE, Gaussian case: stochastic quantization with a learned variance that self-anneals.

Takida et al., "SQ-VAE: Variational Bayes on Discrete Representation with Self-annealed Stochastic
Quantization", arXiv:2205.07547 (Sec. 3-4; reference code sony/sqvae, ``vision/quantizer.py``
``GaussianVectorQuantizer`` and ``vision/model.py`` ``GaussianSQVAE`` with ``param_var_q="gaussian_1"`` and
``flags.arelbo=True``, its default). With encoder output ``z`` (the paper's z-hat), codebook ``b_k`` and variance
``sigma^2 = exp(log_var)`` (a learned parameter):

* stochastic quantization ``P(z_q = b_k | z) = softmax_k(-||z - b_k||^2 / (2 sigma^2))``;
* training: a Gumbel-softmax sample of it at temperature ``tau`` (Jang et al. 1611.01144),
  ``y = softmax((l + g) / tau)``, relaxed ``z_q = y @ B`` as in the reference code (``hard=True`` gives the
  straight-through sample instead); the index is ``argmax y``;
* eval: deterministic ``k* = argmin_k ||z - b_k||^2``, ``z_q = b_{k*}`` (the reference's ``flg_quant_det``);
* latent terms per token ``n`` (the reference's ``kld_discrete`` plus the constant ``log K`` that makes it a true
  KL to the uniform prior, and ``kld_continuous``, evaluated with the same sample that goes to the decoder)::

      latent_n = KL(P(.|z_n) || Uniform(K)) + ||z_n - z_q,n||^2 / (2 sigma^2)

* temperature (reference trainer): ``tau = max(tau_init * exp(-tau_decay * step), tau_min)``, updated in
  ``on_step`` (training only); step and tau live in buffers (resume-safe).

**Weighting against the reconstruction (version 2).** The reference minimises, per image,
``(D_x / 2) log(SSE) + sum_n latent_n`` (ARELBO: the decoder variance set to its maximum-likelihood value,
the mean squared error ``m``), i.e. the latent terms are summed over the ``n_tok`` tokens while the reconstruction
is summed over the ``D_x`` data elements and divided by ``2 m``. A vqbench task minimises the per-element mean
``m`` plus this module's loss, so the gradient of the reference's objective is reproduced (up to the positive
factor ``D_x / (2 m)``) by::

      loss = weight * scale * mean_n latent_n,     scale = 2 m / E

with ``E = D_x / n_tok`` the data elements per token. The task reports ``m`` (of the batch, detached) and ``E``
through :meth:`SQVAEQuantizer.observe_reconstruction` after each training loss (vqbench's ``gmm``,
``gmm-codebook``, ``manifold``, image and generation tasks do), so ``scale`` uses the previous batch's ``m``.
Before the first report, or under a task that never reports: ``scale = 1 / dim`` (a Gaussian decoder of
variance 1/2, which a plain MSE is, and as many data elements per token as latent dimensions). As the
reconstruction improves ``m`` falls, the latent terms weigh less and ``sigma^2`` is pulled down (the
self-annealing); version 1 used ``scale = 1``, which let the latent terms outweigh the reconstruction 20-100x
and made ``sigma^2`` grow instead.

Memory: the ``N x K`` assignment is evaluated in row chunks of at most ``SEARCH_CHUNK_ELEMENTS`` entries,
checkpointed in training (see :func:`vqbench.methods.ops.map_row_chunks`); eval-mode argmin is chunked likewise.

Data-parallel runs (:attr:`SQVAEQuantizer.distributed_sync`): the Gumbel noise is drawn as in
:mod:`vqbench.methods.gumbel` (the global batch's noise from rank 0's stream, each rank keeping its rows), and the
reconstruction report is averaged over ranks (each rank reports its shard's mean squared error; shards are equal,
so the average is the global batch's), so ``latent_scale`` is one value on every rank. The latent terms are means
over rows (their rank average is the global mean: no collective). Exact up to float rounding: the averaged report
sums per-rank means where one process takes one mean.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vqbench.distributed import all_reduce_mean_
from vqbench.methods.ops import (
    Window,
    gumbel_noise_like,
    kl_to_uniform,
    map_global_row_chunks,
    map_row_chunks,
    neg_sq_distances,
    sample_codes,
)
from vqbench.methods.sync import shared_random_stream
from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

MIN_VARIANCE = 1e-10  # the reference clamps the variance at this value before inverting it


@register_method("sqvae", version=2,
                 search_space={"weight": (0.1, 10.0, "log")},
                 paper="2205.07547", family="stochastic",
                 description="SQ-VAE (Gaussian): Gumbel-softmax over -||z-b||^2/(2 sigma^2) with a learned, "
                             "self-annealing variance; discrete KL + variance-weighted distortion, weighted "
                             "against the reconstruction as the reference's ARELBO",
                 differences="The reference's per-image ARELBO balance is applied as a loss scale 2*mse/(data "
                             "elements per token) taken from the previous batch's reconstruction error reported by "
                             "the task (1/dim when none is reported), and the variance is exp(log_var) initialised "
                             "at 1 instead of the reference's 1 + exp(s) with s = log 10-20.",
                 log_var_init=0.0, weight=1.0, hard=False, tau_init=1.0, tau_decay=1e-5, tau_min=0.0)
class SQVAEQuantizer(Quantizer):
    """Gaussian SQ-VAE quantizer; codebook ``B`` (K, dim) initialised N(0, 1) as in the reference code.

    ``init_scale`` and ``init_offset`` are the restricted-initialisation knobs (``B = init_scale * N(0, 1) +
    init_offset``). In training with ``hard=False`` (the paper's relaxation) ``z_q`` is a convex combination
    of codes, so ``decode_indices(indices)`` equals ``z_q`` in eval mode (and with ``hard=True``).
    Buffers ``rec_mse`` and ``elements_per_token`` hold the task's last report (``-1`` / ``0``: none yet).
    """

    distributed_sync = ("Gumbel noise: drawn for the global batch from rank 0's random stream, each rank keeping "
                        "its rows",
                        "reconstruction report (rec_mse): averaged over ranks, so the latent scale is global")

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
        self.register_buffer("rec_mse", torch.tensor(-1.0))
        self.register_buffer("elements_per_token", torch.tensor(0.0))

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

    @torch.no_grad()
    def observe_reconstruction(self, mse: Tensor | float, elements_per_token: float) -> None:
        """The task's per-element mean squared reconstruction error of the batch just trained on, and the data
        elements per token ``E = D_x / n_tok``: the next training forwards weigh the latent terms by ``2 m / E``.

        Ignored in eval mode. ``mse`` may be a tensor on the device (no host synchronisation).
        """
        if not self.training:
            return
        if elements_per_token <= 0:
            raise ValueError(f"elements_per_token must be > 0, got {elements_per_token}")
        self.rec_mse.copy_(torch.as_tensor(mse, dtype=torch.float32).detach().reshape(()))
        all_reduce_mean_(self.rec_mse)  # every rank reports its shard: the mean over ranks is the global batch's
        self.elements_per_token.fill_(float(elements_per_token))

    def latent_scale(self) -> Tensor:
        """``2 m / E`` after a report from the task, ``1 / dim`` before (see the module docstring)."""
        reported = (self.rec_mse >= 0) & (self.elements_per_token > 0)
        arelbo = 2 * self.rec_mse.clamp_min(0) / self.elements_per_token.clamp_min(1e-12)
        return torch.where(reported, arelbo, torch.full_like(arelbo, 1.0 / self.dim))

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        flat = z.reshape(-1, self.dim)
        tau, training = float(self.tau), self.training
        var = self.variance()

        def chunk(x: Tensor, window: Window = (0, 0)) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            codes = self.embedding.float()
            logits = neg_sq_distances(x, codes) / (2 * var)
            kl = kl_to_uniform(logits)
            if training:
                z_q, index = sample_codes(logits, codes, tau, self.hard, window)
            else:
                index = logits.argmax(dim=-1)
                z_q = codes[index]
            distortion = (x - z_q).pow(2).sum() / (2 * var)
            return z_q, index, kl, distortion

        reduce = ("cat", "cat", "sum", "sum")
        with torch.autocast(flat.device.type, enabled=False):
            if training:  # the noise of the global batch, drawn from one stream on every rank (module docstring)
                k, device = self.codebook_size, flat.device
                with shared_random_stream(device):
                    z_q, indices, kl_sum, dist_sum = map_global_row_chunks(
                        chunk, flat.float(), k, reduce,
                        skip=lambda rows: gumbel_noise_like(torch.empty(rows, k, device=device)))
            else:
                z_q, indices, kl_sum, dist_sum = map_row_chunks(chunk, flat.float(), self.codebook_size, reduce)
        n = max(flat.shape[0], 1)
        kl, distortion = kl_sum / n, dist_sum / n
        scale = self.latent_scale()
        loss = self.weight * scale * (kl + distortion)
        return QuantizeOutput(z_q.to(z.dtype).reshape(z.shape), indices.reshape(z.shape[:-1]), loss,
                              {"kl_discrete": kl.detach(), "distortion": distortion.detach(),
                               "variance": var.detach().clone(), "tau": self.tau.detach().clone(),
                               "latent_scale": scale.detach().clone()})
