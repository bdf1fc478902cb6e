"""LFQ (MAGVIT-v2) and BSQ: sign quantization of a low-dimensional projection, index = bits, entropy loss.

**LFQ**, Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation",
arXiv:2310.05737, Sec. 3.1. With ``b = log2(K)`` bits and codes ``C = {-s, +s}^b`` (``s`` = ``scale``):
``u = W_in z + b_in`` (``dim -> b``, identity when ``dim == b``), ``q_i = s * sign(u_i)`` (``u_i > 0 -> +s``,
else ``-s``), ``index = sum_i 1[u_i > 0] 2^(b - 1 - i)`` (first bit most significant, as in
vector-quantize-pytorch and the BSQ reference code), ``z_q = W_out (u + sg[q - u]) + b_out`` (straight-through).
Entropy penalty (eq. 5): ``L_ent = E_n[H(p(c | u_n))] - gamma * H(E_n[p(c | u_n)])`` over the soft assignment
``p(c | u) = softmax_c(-tau ||u - c||^2) = softmax_c(2 tau u.c)`` (``tau`` = ``inv_temperature``; MAGVIT's
temperature 0.01 is ``tau = 100``). Loss ``= entropy_weight * L_ent + commitment_weight * mean((u - sg[q])^2)``.

**BSQ**, Zhao, Xiong and Kraehenbuehl, "Image and Video Tokenization with Binary Spherical Quantization",
arXiv:2406.07548, Sec. 3: ``u = W_in z / ||W_in z||`` (l2-normalised), ``q = sign(u) / sqrt(b)``
(codes on the unit sphere, ``s = 1 / sqrt(b)``), the same straight-through, index and entropy penalty
with ``sample_entropy_weight`` (the reference's gamma0) on the per-sample term. Its loss is
``entropy_weight * (gamma0 E[H] - gamma H(E[p])) + commitment_weight * mean((u - sg[q])^2)``; the reference
code (zhaoyue-zephyrus/bsq-vit) also divides the entropy term by ``inv_temperature`` (1 by default) and
scales the straight-through gradient by ``1/sqrt(b)``; here the gradient to ``u`` is the identity.

How the entropies are computed (memory bounded, no ``N x K`` matrix beyond a chunk):

* Per-sample entropy, exact and factorised: ``p(c | u) = prod_i p(c_i | u_i)`` because ``u.c`` is a sum over
  bits, with ``p(c_i = +s | u_i) = sigmoid(a_i)``, ``a_i = 4 tau s u_i``; so ``H(p(c | u)) = sum_i h(a_i)``
  with ``h(a) = softplus(a) - a sigmoid(a)`` (the binary entropy, in nats). O(N b).
* Codebook (batch) entropy ``H(E_n[p(c | u_n)])`` does not factorise. The bits are split into consecutive
  groups of ``entropy_group_size`` bits; per group ``G`` the averaged soft assignment over its ``2^|G|``
  sub-codes is exact and the penalty uses ``sum_G H(E_n[p(c_G | u_G)])`` (an upper bound of the joint
  entropy, equal to it when there is one group). ``entropy_group_size=None`` (LFQ default) is one group:
  the exact entropy over all ``2^b`` codes, as in vector-quantize-pytorch's LFQ. ``entropy_group_size=1``
  (BSQ default) is BSQ's factorised approximation ``sum_i H(E_n[p(c_i | u_i)])``; the BSQ reference code's
  ``group_size`` (e.g. 9 of 18 bits) is the general case. The group averages are accumulated over row
  chunks, checkpointed in training. A group of 11 bits or more is averaged through the factorisation over its
  two halves of bits, ``sum_n p(c | u_n) = P_A^T P_B`` (one matrix product, ``2 N 2^|G|`` flops; see
  ``_soft_assignment_sum``), a smaller group directly (``N 2^|G|`` exponentials); memory is
  O(chunk + 2^|G|) whatever ``N``, so the exact LFQ entropy runs at K = 2^20. (Version 2 of lfq and bsq: the
  factorised average; version 1 exponentiated all ``2^|G|`` logits per row, the same value up to float rounding.)

``codebook_size`` becomes the largest power of two not above the task's (``b = floor(log2 K)``).
Entropies are computed in eval mode too (same formula; nothing is updated); no state besides projections.

Data-parallel runs: in training the codebook entropy is the global batch's (each group's summed soft assignment
summed over ranks by a differentiable all-reduce, one collective per group, divided by the global row count; with
the runner's gradient average the gradient is the single-process one); the per-sample entropy and the commitment
are means over rows. In eval mode each rank's entropy is its own batch's (no collective). Exact up to float rounding,
which LFQ's sharp default (``inv_temperature = 100``) amplifies during training like any change of reduction order
(thread count, device): in tests/test_distributed_methods.py at SGD learning rate 0.05 two runs drift apart from
step ~10 (at 0.01 they stay within 1e-5 for 30 steps; at ``inv_temperature = 1`` within 1e-6 at either rate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import differentiable_sum, global_rows
from vqbench.methods.ops import map_row_chunks
from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

MAX_ENUMERATED = 2**16
SPLIT_MIN_BITS = 11  # bit groups this wide or wider average their soft assignment through two halves
LOG_EPS = 1e-12  # p log p with p clamped here inside the log (0 log 0 = 0)


def binary_entropy_from_logit(a: Tensor) -> Tensor:
    """``H(Bernoulli(sigmoid(a)))`` in nats, stable for any ``a``: ``softplus(a) - a sigmoid(a)``."""
    return F.softplus(a) - a * torch.sigmoid(a)


def entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(LOG_EPS).log()).sum(-1)


def sign_codes(n_bits: int, scale: float, device: torch.device | None = None) -> Tensor:
    """All ``2^n_bits`` codes in index order (MSB first): row ``k`` has ``+scale`` where bit ``k`` is set."""
    dtype = torch.int32 if n_bits < 31 else torch.long
    k = torch.arange(2**n_bits, device=device, dtype=dtype)
    bits = (k.unsqueeze(-1) >> torch.arange(n_bits - 1, -1, -1, device=device, dtype=dtype)) & 1
    return (bits.float() * 2 - 1) * scale


def _soft_assignment_sum(u: Tensor, scale: float, inv_temperature: float) -> Tensor:
    """``sum_n softmax_c(2 tau u_n.c)`` over all ``2^g`` codes of ``u`` (N, g), in index order (MSB first).

    Up to ``SPLIT_MIN_BITS - 1`` bits: directly, over row chunks of at most ``SEARCH_CHUNK_ELEMENTS`` entries. From
    ``SPLIT_MIN_BITS`` bits on, through the factorisation over bits: ``p(c | u) = p(c_A | u_A) p(c_B | u_B)`` for
    the split of the bits into a high half ``A`` and a low half ``B``, so that (index ``k = k_A 2^|B| + k_B``)
    ``sum_n p(c | u_n) = P_A^T P_B`` with ``P_A`` (N, 2^|A|) and ``P_B`` (N, 2^|B|) the halves' soft assignments:
    one matrix product of ``2 N 2^g`` flops instead of ``N 2^g`` exponentials, same value (e.g. 18 bits at
    N = 16384: 0.1 s instead of 75 s on one CPU core).
    """
    g = u.shape[1]
    if g < SPLIT_MIN_BITS:
        codes = sign_codes(g, scale, u.device)

        def direct(x: Tensor) -> tuple[Tensor]:
            return (F.softmax(2 * inv_temperature * (x @ codes.t()), dim=-1).sum(0),)

        return map_row_chunks(direct, u, codes.shape[0], ("sum",))[0]
    high = g // 2
    codes_a, codes_b = sign_codes(high, scale, u.device), sign_codes(g - high, scale, u.device)

    def outer(x: Tensor) -> tuple[Tensor]:
        p_a = F.softmax(2 * inv_temperature * (x[:, :high] @ codes_a.t()), dim=-1)
        p_b = F.softmax(2 * inv_temperature * (x[:, high:] @ codes_b.t()), dim=-1)
        return ((p_a.t() @ p_b).reshape(-1),)

    # a chunk holds its rows' two halves plus one 2^g product: rows are bounded by the halves' widths
    return map_row_chunks(outer, u, codes_a.shape[0] + codes_b.shape[0], ("sum",))[0]


def codebook_entropy(u: Tensor, scale: float, inv_temperature: float, group_size: int | None,
                     across_ranks: bool = False) -> Tensor:
    """``sum_G H(mean_n softmax_c(2 tau u_{n,G}.c))`` over bit groups ``G`` (one group when ``group_size`` is None).

    ``across_ranks``: ``u`` is this rank's part of a data-parallel batch; the means are over the global batch (sums
    over ranks by a differentiable all-reduce, over the global row count).
    """
    n, b = u.shape
    if across_ranks:
        n = global_rows(n, u.device)
    g = b if group_size is None else group_size
    total = u.new_zeros(())
    for start in range(0, b, g):
        prob_sum = _soft_assignment_sum(u[:, start:start + g], scale, inv_temperature)
        if across_ranks:
            prob_sum = differentiable_sum(prob_sum)
        total = total + entropy(prob_sum / max(n, 1))
    return total


@register_method("lfq", version=2,
                 search_space={"entropy_weight": (0.01, 1.0, "log"), "commitment_weight": (0.05, 1.0, "log")},
                 paper="2310.05737", family="implicit",
                 description="LFQ (MAGVIT-v2): sign of a log2(K)-dim projection, index = bits, per-sample minus "
                             "batch entropy (exact) + commitment",
                 differences="The per-sample entropy is the exact factorised binary entropy where vector-quantize-"
                             "pytorch takes log(clamp(p, 1e-5)) of the full softmax (equal while every probability "
                             "exceeds 1e-5); the codebook entropy is exact over all 2^b codes, as in "
                             "vector-quantize-pytorch.",
                 entropy_weight=0.1, diversity_gamma=1.0, commitment_weight=0.25, inv_temperature=100.0,
                 scale=1.0, entropy_group_size=None)
class LookupFreeQuantizer(Quantizer):
    """LFQ; ``spherical=True`` (used by :class:`BinarySphericalQuantizer`) turns it into BSQ."""

    spherical = False
    distributed_sync = ("codebook (batch) entropy: the batch-averaged soft assignment of each bit group summed over "
                        "ranks (differentiable all-reduce) over the global row count",)

    def __init__(self, dim: int, codebook_size: int, entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
                 commitment_weight: float = 0.25, inv_temperature: float = 100.0, scale: float = 1.0,
                 entropy_group_size: int | None = None, sample_entropy_weight: float = 1.0) -> None:
        super().__init__()
        if dim < 1 or codebook_size < 2:
            raise ValueError("need dim >= 1 and codebook_size >= 2")
        if entropy_group_size is not None and entropy_group_size < 1:
            raise ValueError("entropy_group_size must be >= 1 or None")
        self.bits = int(math.floor(math.log2(codebook_size) + 1e-9))
        self.dim, self.codebook_size = dim, 2**self.bits
        self.entropy_weight, self.diversity_gamma = entropy_weight, diversity_gamma
        self.commitment_weight, self.inv_temperature = commitment_weight, inv_temperature
        self.sample_entropy_weight, self.entropy_group_size = sample_entropy_weight, entropy_group_size
        self.scale = 1.0 / math.sqrt(self.bits) if self.spherical else float(scale)
        self.project_in: nn.Module = nn.Linear(dim, self.bits) if dim != self.bits else nn.Identity()
        self.project_out: nn.Module = nn.Linear(self.bits, dim) if dim != self.bits else nn.Identity()
        self.register_buffer("_basis", 2 ** torch.arange(self.bits - 1, -1, -1), persistent=False)

    def codebook(self) -> Tensor | None:
        if self.codebook_size > MAX_ENUMERATED:
            return None
        return self.decode_indices(torch.arange(self.codebook_size, device=self._basis.device))

    def decode_indices(self, indices: Tensor) -> Tensor:
        bits = (indices.long().unsqueeze(-1) // self._basis) % 2
        return self.project_out((bits.float() * 2 - 1) * self.scale)

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            u = self.project_in(z.float()).reshape(-1, self.bits)
            if self.spherical:
                u = F.normalize(u, dim=-1)
            positive = u > 0
            q = torch.where(positive, self.scale, -self.scale)
            indices = (positive.long() * self._basis).sum(-1)
            # p(c_i = +s | u_i) = sigmoid(4 tau s u_i): exact per-sample entropy, summed over bits
            logits = 4 * self.inv_temperature * self.scale * u
            sample_entropy = binary_entropy_from_logit(logits).sum(-1).mean()
            batch_entropy = codebook_entropy(u, self.scale, self.inv_temperature, self.entropy_group_size,
                                             across_ranks=self.training)
            commitment = F.mse_loss(u, q)
            entropy_loss = self.sample_entropy_weight * sample_entropy - self.diversity_gamma * batch_entropy
            loss = self.entropy_weight * entropy_loss + self.commitment_weight * commitment
            codes = q + (u - u.detach())  # straight-through: value q exactly, identity gradient
        z_q = self.project_out(codes).reshape(*z.shape[:-1], self.dim)
        return QuantizeOutput(z_q, indices.reshape(z.shape[:-1]), loss,
                              {"sample_entropy": sample_entropy.detach(), "batch_entropy": batch_entropy.detach(),
                               "commitment": commitment.detach()})


@register_method("bsq", version=2,
                 search_space={"entropy_weight": (0.01, 1.0, "log")},
                 paper="2406.07548", family="implicit",
                 description="BSQ: l2-normalised projection, sign/sqrt(d), factorised per-sample minus codebook "
                             "entropy",
                 differences="The reference code divides the entropy term by inv_temperature and scales the "
                             "straight-through gradient by 1/sqrt(b); here the gradient to u is the identity and the "
                             "codebook entropy is factorised per bit by default (entropy_group_size=1).",
                 entropy_weight=0.1, diversity_gamma=1.0, sample_entropy_weight=1.0, commitment_weight=0.0,
                 inv_temperature=1.0, entropy_group_size=1)
class BinarySphericalQuantizer(LookupFreeQuantizer):
    """BSQ: LFQ on the unit sphere, codes ``{-1, +1}^b / sqrt(b)`` (see the module docstring).

    Defaults follow the reference configs: commitment weight (beta) 0, gamma0 = gamma = 1, tau = 1; the
    reference multiplies the whole quantizer loss by ``codebook_weight=0.1``, which is ``entropy_weight`` here.
    """

    spherical = True

    def __init__(self, dim: int, codebook_size: int, entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
                 sample_entropy_weight: float = 1.0, commitment_weight: float = 0.0, inv_temperature: float = 1.0,
                 entropy_group_size: int | None = 1) -> None:
        super().__init__(dim, codebook_size, entropy_weight=entropy_weight, diversity_gamma=diversity_gamma,
                         commitment_weight=commitment_weight, inv_temperature=inv_temperature,
                         entropy_group_size=entropy_group_size, sample_entropy_weight=sample_entropy_weight)
