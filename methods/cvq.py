"""CVQ-VAE: online clustered codebook, under-used codes pulled toward anchors from the batch.

Zheng & Vedaldi, "Online Clustered Codebook", arXiv:2307.15139 (reference: lyndonzheng/CVQ-VAE, ``quantise.py``,
defaults of its ``main.py``: cosine lookup, ``closest`` anchors, beta 0.25, decay 0.99).

Forward (codes ``c_k`` a learnable codebook):

* lookup: ``k_i = argmax_k cos(z_i, c_k)`` (``distance="cos"``) or ``argmin_k ||z_i - c_k||^2`` (``"l2"``);
  ``z_q = z + sg[c_k - z]``; ``L = beta ||z - sg[c_k]||^2 + ||sg[z] - c_k||^2`` (means over elements).

Training only, after the lookup (the reference's exact order and constants):

1. running usage ``p_k <- gamma p_k + (1 - gamma) n_k / N`` (``n_k`` batch count, ``gamma = decay = 0.99``);
2. rate ``alpha_k = exp(-(p_k K 10) / (1 - gamma) - 1e-3)`` (the 1e-3 is inside the exponent, as in the code;
   an unused code gets ``alpha ~ 0.999``, a code used at the uniform rate ``1/K`` gets ``exp(-1000) = 0``);
3. anchors ``a_k`` (``anchor=``): ``"closest"`` the batch feature most similar to ``c_k`` (same similarity as
   the lookup), ``"random"`` row ``k`` of the reference's feature pool (K rows; filled with the batch features
   while fewer than K were seen, then overwritten at random rows / re-drawn from the batch, see
   :meth:`ClusteredVQ._pool_query`), ``"probrandom"`` a batch feature drawn from ``softmax_i(sim(z_i, c_k))``;
4. ``c_k <- (1 - alpha_k) c_k + alpha_k a_k`` (in place, no gradient), every step.

Not included: the reference's optional contrastive loss (``contras_loss``, off by default) and its one-shot
``first_batch`` mode. Ties in the lookup and the anchors go to the lowest index (the reference's sort leaves
them unspecified). All similarity work is chunked (no N x K matrix beyond a bounded chunk).

Data-parallel runs (rank ``r`` holds part of each global batch): every step's state change is the one of a single
process with the global batch. The usage ``p_k`` counts the global batch (counts summed over ranks, over the global
row count); ``closest`` anchors: each rank finds its most similar row per code, the most similar of those over ranks
wins (ties: the lowest rank, i.e. the lowest global row) and is copied from its rank; ``random``: the pool draws
rows of the global batch (positions from rank 0's random stream, rows fetched from their ranks; a batch of at most
K rows is gathered whole); ``probrandom``: the batch is gathered and the draw made from rank 0's stream (every rank
computes the K x N softmax of the global batch). Exact up to float rounding (a ``closest`` near-tie across ranks is
compared on recomputed similarities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import all_gather_rows, all_reduce_sum_, global_rows, world
from vqbench.methods.base import (
    DATA_INIT_SYNC,
    SEARCH_CHUNK_ELEMENTS,
    CodebookQuantizer,
    max_inner_product,
    nearest_code,
    straight_through,
)
from vqbench.methods.sync import distributed, row_offset, rows_at, shared_random_stream
from vqbench.quantizer import QuantizeOutput
from vqbench.registry import register_method

ANCHORS = ("closest", "random", "probrandom")


# version 2: the l2 lookup (distance="l2") is centred on the codebook mean (issue 13); the cosine default is as before
@register_method("cvq", version=2,
                 search_space={"beta": (0.05, 1.0, "log"), "decay": (0.9, 0.999, "linear")},
                 paper="2307.15139", family="codebook-reinit",
                 description="CVQ-VAE: EMA code usage; under-used codes pulled toward batch anchors at rate "
                             "exp(-10 K p_k / (1 - gamma))",
                 differences="no contrastive loss (contras_loss, off in the reference) and no first_batch mode",
                 beta=0.25, decay=0.99, distance="cos", anchor="closest", init="uniform")
class ClusteredVQ(CodebookQuantizer):
    """CVQ-VAE quantiser. State: ``embedding`` (K, dim), ``embed_prob`` (K,) EMA usage, the anchor pool.

    Restricted-init knob (:class:`vqbench.methods.base.CodebookQuantizer`): ``init="uniform"`` (reference:
    U(-1/K, 1/K)), ``"normal"`` (N(0, 1)), both times ``init_scale`` plus ``init_offset``, or ``"data"``
    (:func:`vqbench.methods.base.data_relative_codes` on the first training batch).
    """

    distributed_sync = ("usage (embed_prob): code counts summed over ranks over the global row count",
                        "anchors: chosen among the global batch's rows (closest: best over ranks; random/probrandom: "
                        "draws from rank 0's random stream)",
                        DATA_INIT_SYNC)

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 distance: str = "cos", anchor: str = "closest", init: str = "uniform", init_scale: float = 1.0,
                 init_offset: float = 0.0) -> None:
        super().__init__(dim, codebook_size, init, init_scale, init_offset)
        if distance not in ("cos", "l2"):
            raise ValueError(f"distance must be 'cos' or 'l2', got {distance!r}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.beta, self.decay, self.distance, self.anchor = beta, decay, distance, anchor
        self.distributed_sync = type(self).distributed_sync[:2] + (DATA_INIT_SYNC,) * (init == "data")
        k = codebook_size
        self.embedding = nn.Parameter(self.initial_codes(placeholder="uniform"))
        self.register_buffer("embed_prob", torch.zeros(k))
        if anchor == "random":  # the reference FeaturePool: K slots, U(-1/K, 1/K) until filled
            self.register_buffer("pool", (torch.rand(k, dim) * 2 - 1) / k)
            self.register_buffer("pool_count", torch.zeros((), dtype=torch.long))

    def codebook(self) -> Tensor:
        return self.embedding

    def _prepared(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) if self.distance == "cos" else x

    def lookup(self, flat: Tensor, codes: Tensor) -> Tensor:
        """Most similar code per row: max cosine or min squared L2."""
        if self.distance == "cos":
            return max_inner_product(self._prepared(flat), self._prepared(codes))
        return nearest_code(flat, codes)

    @torch.no_grad()
    def anchors(self, flat: Tensor, codes: Tensor) -> Tensor:
        """One anchor per code (K, dim) from the batch ``flat`` (N, dim) (in a data-parallel run: from the global
        batch, of which ``flat`` is this rank's part; see the module docstring)."""
        if self.anchor == "closest":  # most similar batch feature for each code: the lookup with roles swapped
            best = flat[self.lookup(codes, flat)]
            return self._closest_over_ranks(codes, best) if distributed() else best
        if self.anchor == "random":
            return self._pool_query(flat)
        flat = all_gather_rows(flat)  # "probrandom": a softmax over the global batch's rows
        with shared_random_stream(flat.device):
            return self._probrandom(flat, codes)

    def _closest_over_ranks(self, codes: Tensor, best: Tensor) -> Tensor:
        """Each code's most similar row over all ranks, from each rank's most similar row ``best`` (K, dim).

        Ties go to the lowest rank (the lowest global row, as the single-process lookup); each anchor is copied
        exactly from the rank that holds it.
        """
        if self.distance == "cos":
            similarity = (self._prepared(codes) * self._prepared(best)).sum(dim=1)
        else:
            similarity = -(codes - best).pow(2).sum(dim=1)
        winner = all_gather_rows(similarity.unsqueeze(0)).argmax(dim=0)  # (K,): first maximum = lowest rank
        mine = (winner == world().rank).unsqueeze(1)
        return all_reduce_sum_(torch.where(mine, best, torch.zeros_like(best)))

    def _probrandom(self, flat: Tensor, codes: Tensor) -> Tensor:
        """Per code, a row of ``flat`` drawn from ``softmax_i(sim(x_i, c_k))`` (K x N in chunks)."""
        x, c = self._prepared(flat), self._prepared(codes)
        picks = torch.empty(codes.shape[0], dtype=torch.long, device=flat.device)
        rows = max(1, SEARCH_CHUNK_ELEMENTS // max(flat.shape[0], 1))
        for start in range(0, codes.shape[0], rows):
            cb = c[start:start + rows]
            sim = cb @ x.t() if self.distance == "cos" else -torch.cdist(cb, x).pow(2)
            picks[start:start + rows] = torch.multinomial(torch.softmax(sim, dim=1), 1).view(-1)
        return flat[picks]

    @torch.no_grad()
    def _pool_query(self, flat: Tensor) -> Tensor:
        """The reference FeaturePool.query: keep K past features; a batch larger than K replaces the whole pool
        by K features drawn with replacement; a smaller one fills free slots, then overwrites random slots."""
        k = self.codebook_size
        offset, n = row_offset(flat.shape[0], flat.device)  # n: the global batch's rows
        count = int(self.pool_count)
        if n > k:
            with shared_random_stream(flat.device):
                picks = torch.randint(0, n, (k,), device=flat.device)
            self.pool.copy_(rows_at(flat, picks, offset))
            self.pool_count.fill_(k)
            return self.pool.clone()
        flat = all_gather_rows(flat)  # at most K rows: the global batch
        if count < k:
            take = min(n, k - count)  # the reference overflows here when count + n > K; we fill what fits
            self.pool[count:count + take] = flat[:take]
            self.pool_count.fill_(count + take)
        else:
            with shared_random_stream(flat.device):
                slots = torch.randperm(k, device=flat.device)[:n]
            self.pool[slots] = flat
        return self.pool.clone()

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor) -> Tensor:
        counts = all_reduce_sum_(torch.bincount(indices, minlength=self.codebook_size).to(flat.dtype))
        n = global_rows(flat.shape[0], flat.device)  # the global batch's counts and rows
        self.embed_prob.mul_(self.decay).add_(counts / max(n, 1), alpha=1 - self.decay)
        rate = torch.exp(-(self.embed_prob * self.codebook_size * 10) / (1 - self.decay) - 1e-3).unsqueeze(1)
        anchors = self.anchors(flat, self.embedding)
        self.embedding.copy_(self.embedding * (1 - rate) + anchors * rate)
        return rate

    def quantize(self, flat: Tensor) -> QuantizeOutput:
        indices = self.lookup(flat, self.embedding)
        codes = self.embedding[indices]
        commitment_loss = F.mse_loss(flat, codes.detach())
        codebook_loss = F.mse_loss(codes, flat.detach())
        loss = self.beta * commitment_loss + codebook_loss
        z_q = straight_through(flat, codes)
        stats = {"codebook_loss": codebook_loss.detach(), "commitment_loss": commitment_loss.detach()}
        if self.training and flat.shape[0] > 0:
            rate = self._update(flat.detach(), indices)
            stats["anchor_rate_mean"] = rate.mean()
            stats["reinit_fraction"] = (rate > 0.5).float().mean()
        return QuantizeOutput(z_q, indices, loss, stats)
