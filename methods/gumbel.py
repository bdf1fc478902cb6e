"""Gumbel-softmax vector quantization with a KL-to-uniform term and an annealed temperature.

Jang, Gu and Poole, "Categorical Reparameterization with Gumbel-Softmax", arXiv:1611.01144, used as the
quantizer of DALL-E's discrete VAE (Ramesh et al., arXiv:2102.12092, Sec. 2.1 and App. A.2), which trains on the
*relaxed* sample (the decoder sees ``y @ E``; Ramesh, openai/DALL-E issue #1) and takes the argmax at eval:

* logits ``l = W z + b`` (a linear layer, ``logits="linear"``, DALL-E style) or ``l_k = -||z - e_k||^2``
  (``logits="distance"``);
* training: ``y = softmax((l + g) / tau)`` with ``g_k = -log(E_k)``, ``E_k ~ Exp(1)`` (Gumbel(0, 1) noise
  drawn exactly as ``torch.nn.functional.gumbel_softmax`` does), index ``k* = argmax y``; the default
  ``hard=False`` passes the relaxed ``z_q = y @ E`` on (DALL-E); ``hard=True`` is taming-transformers'
  straight-through ``GumbelQuantize``: ``z_q = (onehot(k*) - sg[y] + y) @ E``, forward value ``e_{k*}``,
  gradient to the logits through the soft ``y`` and to the codebook only through the chosen code;
* eval: ``k* = argmax l`` (no noise; with distance logits that is the nearest code), ``z_q = e_{k*}``;
* auxiliary loss ``kl_weight * mean_n KL(softmax(l_n) || Uniform(K)) = kl_weight * mean_n (log K - H(q_n))``
  (DALL-E's KL to the uniform prior, computed on the noise-free logits);
* temperature schedule (``on_step``): with progress ``t = min(1, step / max(1, total_steps - 1))``,
  ``schedule="cosine"`` (DALL-E): ``tau = tau_end + (tau_start - tau_end) (1 + cos(pi t)) / 2``;
  ``schedule="exponential"`` (Jang et al.'s exponential decay, written as a geometric interpolation so
  it ends at ``tau_end``): ``tau = tau_start (tau_end / tau_start)^t``. The current step and tau live in
  buffers (resume-safe); ``on_step`` changes nothing in eval mode.

Differences from DALL-E: the temperature reaches 1/16 at the end of the run (DALL-E: over its first 150,000
updates), and the KL weight is a constant 0.01 (DALL-E ramps its weight to 6.6 over 5,000 updates on a per-pixel
ELBO, about 0.034 of the reconstruction term). Version 2: ``hard=False`` by default (version 1 trained on the
straight-through hard sample, which collapses on vqbench's budgets as the temperature falls: on ``manifold`` at
the ``standard`` budget, seed 0, eval MSE 0.999 with 2 of 256 codes used, against 0.493 with 251 codes relaxed).

Memory: the soft assignment is ``N x K``. :func:`vqbench.methods.ops.map_row_chunks` evaluates it in row chunks
of at most ``SEARCH_CHUNK_ELEMENTS`` entries and, when the batch needs several chunks and gradients are on, under
activation checkpointing (each chunk is recomputed in backward with the same Gumbel noise, since the RNG
state is restored), so neither forward nor backward holds more than a few chunk-sized ``rows x K``
tensors (logits, noise, soft sample: measured ~0.6 GiB peak above the parameters for K = 2^20, N = 512 on
CPU, where one ``N x K`` float32 matrix alone is 2 GiB). Compute stays O(N K dim), twice in training.

Data-parallel runs (:attr:`GumbelQuantizer.distributed_sync`): the state is the step and tau, set by ``on_step``
identically on every rank; the parameters follow the averaged gradients. The Gumbel noise is the one thing to
share: in training each rank draws, from rank 0's generator (:func:`vqbench.methods.sync.shared_random_stream`),
the noise of every chunk of the *global* batch and keeps its own rows
(:func:`vqbench.methods.ops.map_global_row_chunks`), so R ranks at B/R rows draw exactly what one process at B
rows draws (each rank generates the whole batch's noise: O(B K) draws per rank). The KL term is a mean over rows,
whose rank average is the global mean: no collective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def anneal(start: float, end: float, step: int, total_steps: int, schedule: str) -> float:
    """The temperature at ``step`` of ``total_steps`` (see the module docstring for the two schedules)."""
    t = min(1.0, step / max(1, total_steps - 1))
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "exponential":
        return start * (end / start) ** t
    raise ValueError(f"unknown temperature schedule {schedule!r}: use 'cosine' or 'exponential'")


@register_method("gumbel", version=2,
                 search_space={"kl_weight": (0.001, 0.1, "log"), "tau_end": (0.01, 0.5, "log")},
                 paper="1611.01144", family="stochastic",
                 description="Gumbel-softmax VQ (DALL-E's dVAE): relaxed samples in training, argmax at eval, KL "
                             "to uniform, temperature annealed 1 -> 1/16 (cosine)",
                 differences="Against DALL-E: the temperature reaches 1/16 at the end of the run (DALL-E: after "
                             "150,000 updates) and the KL weight is a constant 0.01 (DALL-E ramps it up over 5,000 "
                             "updates). hard=True gives taming-transformers' straight-through GumbelQuantize (eval "
                             "still takes the noise-free argmax, where taming samples).",
                 logits="linear", hard=False, kl_weight=0.01, tau_start=1.0, tau_end=1.0 / 16,
                 schedule="cosine")
class GumbelQuantizer(Quantizer):
    """Gumbel-softmax quantizer; the codebook ``E`` (K, dim) is initialised N(0, 1) (``nn.Embedding``'s init).

    ``init_scale`` and ``init_offset`` are the restricted-initialisation knobs (``E = init_scale * N(0, 1) +
    init_offset``).
    """

    distributed_sync = ("Gumbel noise: drawn for the global batch from rank 0's random stream, each rank keeping "
                        "its rows",)

    def __init__(self, dim: int, codebook_size: int, logits: str = "linear", hard: bool = False,
                 kl_weight: float = 0.01, tau_start: float = 1.0, tau_end: float = 1.0 / 16,
                 schedule: str = "cosine", init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if logits not in ("linear", "distance"):
            raise ValueError(f"logits must be 'linear' or 'distance', got {logits!r}")
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError("temperatures must be > 0")
        anneal(tau_start, tau_end, 0, 1, schedule)  # validates the schedule name
        self.dim, self.codebook_size = dim, codebook_size
        self.logits_kind, self.hard, self.kl_weight = logits, hard, kl_weight
        self.tau_start, self.tau_end, self.schedule = tau_start, tau_end, schedule
        self.embedding = nn.Parameter(torch.randn(codebook_size, dim) * init_scale + init_offset)
        self.to_logits = nn.Linear(dim, codebook_size) if logits == "linear" else None
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("tau", torch.tensor(float(tau_start)))

    def codebook(self) -> Tensor:
        return self.embedding

    def on_step(self, step: int, total_steps: int) -> None:
        if not self.training:
            return
        self.step.fill_(step)
        self.tau.fill_(anneal(self.tau_start, self.tau_end, step, total_steps, self.schedule))

    def logits(self, x: Tensor) -> Tensor:
        if self.to_logits is not None:
            return F.linear(x, self.to_logits.weight.float(), self.to_logits.bias.float())
        return neg_sq_distances(x, self.embedding.float())

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        flat = z.reshape(-1, self.dim)
        tau, training = float(self.tau), self.training

        def chunk(x: Tensor, window: Window = (0, 0)) -> tuple[Tensor, Tensor, Tensor]:
            logits = self.logits(x)
            kl = kl_to_uniform(logits)
            if training:
                z_q, index = sample_codes(logits, self.embedding.float(), tau, self.hard, window)
            else:
                index = logits.argmax(dim=-1)
                z_q = self.embedding[index].float()
            return z_q, index, kl

        with torch.autocast(flat.device.type, enabled=False):
            if training:  # the noise of the global batch, drawn from one stream on every rank (module docstring)
                k, device = self.codebook_size, flat.device
                with shared_random_stream(device):
                    z_q, indices, kl_sum = map_global_row_chunks(
                        chunk, flat.float(), k, ("cat", "cat", "sum"),
                        skip=lambda rows: gumbel_noise_like(torch.empty(rows, k, device=device)))
            else:
                z_q, indices, kl_sum = map_row_chunks(chunk, flat.float(), self.codebook_size, ("cat", "cat", "sum"))
        kl = kl_sum / max(flat.shape[0], 1)
        return QuantizeOutput(z_q.to(z.dtype).reshape(z.shape), indices.reshape(z.shape[:-1]), self.kl_weight * kl,
                              {"kl_uniform": kl.detach(), "tau": self.tau.detach().clone()})
