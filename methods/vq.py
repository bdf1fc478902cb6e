"""VQ-VAE and its codebook-side anti-collapse options, as one composable quantizer class.

Base method (``vq``): van den Oord et al., "Neural Discrete Representation Learning", arXiv:1711.00937, eq. 3.
With ``x`` the (optionally projected / normalised, see below) input and ``e = c_k``, ``k = argmin_j ||x - c_j||^2``:
``L = ||sg[x] - e||^2 + beta ||x - sg[e]||^2`` (means over elements, ``beta = 0.25``) and the decoder input is ``e``
in value with the straight-through gradient ``d z_q / d x = I`` (computed as ``sg[e] + (x - sg[x])``, so the value
is exactly the code).

Every option below is a constructor argument; they compose on one instance (e.g. k-means init + dead-code restart +
rotation trick). Each has a registered preset (name: defaults) in :mod:`vqbench.methods.vq_presets`.

* ``ema`` (``vq-ema``, 1711.00937 appendix A.1; Razavi et al. 1906.00446): codebook updated by exponential moving
  averages instead of the codebook loss (which is then dropped: ``L = beta ||x - sg[e]||^2``). Per training batch,
  with counts ``n_k`` and sums ``s_k = sum_{i: k_i = k} x_i``::

      N_k <- gamma N_k + (1 - gamma) n_k,   m_k <- gamma m_k + (1 - gamma) s_k
      N'_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j      (Laplace smoothing)
      c_k  = m_k / N'_k                                          (l2-normalised again with ``l2_normalize``)

  ``gamma = 0.99``, ``eps = 1e-5``; ``N`` starts at 1 and ``m`` at the initial codebook (as in Jukebox and
  vector-quantize-pytorch), and both are reset that way whenever the codebook is (re)initialised.
* ``kmeans_init`` (``vq-kmeans``, as in SoundStream 2107.03312 and vector-quantize-pytorch's ``kmeans_init``): the
  codebook is set by k-means on the (projected / normalised) latents of the first ``kmeans_batches`` training
  batches, or of more of them until at least K distinct vectors are buffered (k-means of fewer would duplicate
  codes: K = 512 from one batch of 256 rows gives at most 256 distinct codes; the reference warns and samples
  duplicates). Until then the batches are quantized by the nearest code of the provisional codebook (the
  construction-time init), as with several ``kmeans_batches``: the module is a VQ from the first step, as in the
  reference, never an identity. If ``kmeans_max_batches`` batches do not supply K distinct vectors the run fails
  with a :class:`vqbench.errors.UserError` saying what to change. k-means: k-means++ (D^2 sampling) or
  random-sample seeding, then ``kmeans_iters`` Lloyd iterations (an empty cluster keeps its centre). Randomness
  from torch's global RNG.
* ``restart`` (``vq-restart``, Jukebox 2005.00341 sec. 3 / SoundStream 2107.03312, vector-quantize-pytorch's
  ``threshold_ema_dead_code``): an EMA of each code's share of the batch's vectors ``u_k <- mu u_k + (1 - mu)
  n_k / N`` (``mu = 0.99``); every ``restart_interval`` training forwards each code with
  ``u_k < restart_threshold / K`` (below ``restart_threshold`` times the uniform share; default 0.25,
  vector-quantize-pytorch's recommended count threshold 2 at 8 vectors per code per step) is dead and replaced by
  a random vector of the current batch plus Gaussian noise of std ``restart_noise / sqrt(d)`` (Jukebox's
  ``0.01 / sqrt(d)``), drawn without replacement; when more codes are dead than the batch has vectors, a random
  subset of N of them is replaced now and the rest later (as vector-quantize-pytorch). A replaced code's share is
  reset to ``1/K`` (with ``ema``: ``N_k`` to the mean ``sum_j N_j / K`` and ``m_k = N_k c_k``). ``u`` starts at
  the threshold share, at construction and after a data-relative init, so codes the first batch leaves unused are
  restarted at once, as in the references (whose counts start at 1, at or below their thresholds); after a k-means
  init it starts at the uniform share. Difference from the references, which compare raw per-step EMA counts with
  the threshold (Jukebox 1, vector-quantize-pytorch 2) and reset a replaced code to the threshold: that rule means
  another thing at each batch size (with N <= K about half of a healthy codebook falls below a count of 1 every
  step and is re-randomised: 107 restarts per step on gmm-codebook quick); a share threshold and a reset to the
  uniform share mean the same at any N, and an unused replaced code is replaced again only after
  ``log(threshold) / log(mu)`` forwards (138 at the defaults).
* ``code_dim`` / ``l2_normalize`` (``vq-l2``, ViT-VQGAN factorized codes, Yu et al. 2110.04627 sec. 3.2): a linear
  map ``W_in`` to ``code_dim`` (8) dimensions, then ``x = l2(W_in z)`` and codes ``l2(c_k)``: the nearest code under
  the l2 distance of unit vectors is the one of largest cosine similarity. All losses are in that space; the
  output is projected back, ``z_q = W_out e + b``; ``codebook()`` returns ``W_out l2(C) + b`` (the effective codes
  in z-space), so ``decode_indices`` equals ``z_q``.
* ``rotation`` (``vq-rotation``, Fifty et al. 2410.06424 sec. 4): ``z_q = sg[lambda R] x`` with
  ``lambda = ||e|| / ||x||`` and the rotation ``R = I - 2 r r^T + 2 e^ x^^T``, ``r = (x^ + e^) / ||x^ + e^||``
  (Householder-style construction; ``^`` = unit vector), treated as a constant: the value is ``e``, the gradient
  w.r.t. ``x`` is ``lambda R^T g``.
* ``orthoreg_weight`` (``vq-orthoreg``, Shin et al. 2112.00384 eq. 2): ``weight * (1/K^2) sum_{i != j}
  (c^_i . c^_j)^2`` = ``weight * ||l2(C) l2(C)^T - I||_F^2 / K^2`` (unit rows), computed exactly without the K x K
  Gram matrix as ``(||l2(C)^T l2(C)||_F^2 - sum_i ||c^_i||^4) / K^2``. Zero for orthonormal codes (K <= d); its
  minimum for K > d is ``1/d - 1/K`` (a tight frame). Weight 10 (the paper's value, also vector-quantize-pytorch's
  recommendation). Needs a learnable codebook (not with ``ema``).
* ``entropy_weight`` (``vq-entropy``; the prior-distribution regulariser of Zhang et al. 2303.06424): with the soft
  assignment ``p_ik = softmax_k(-||x_i - c_k||^2 / T)`` and its batch average ``pbar = mean_i p_i``, the penalty
  ``weight * (log K - H(pbar)) = weight * KL(pbar || uniform)``: zero when the batch uses codes uniformly on
  average. Computed in row chunks of at most ``SEARCH_CHUNK_ELEMENTS`` logits under activation checkpointing, so no
  N x K tensor exists beyond one chunk in the forward or the backward pass.
* ``warmup_fraction`` (``vq-deferred``, deferred quantisation / continuous warm-up, 2603.17052): once the runner has
  called ``on_step(step, total)``, for ``step < floor(warmup_fraction * total)`` the quantizer is the identity
  (``z_q = z``, zero loss; indices still the nearest codes) and training forwards keep the last
  ``warmup_buffer_size`` latents in a ring buffer; ``on_step`` at the switch step (it runs before that step's
  forward) initialises the codebook by k-means (as above) on that buffer, then quantisation is on. A module never
  driven by ``on_step`` quantizes from the start.
* ``init`` (the restricted-initialisation knob shared by every codebook method): ``"uniform"`` draws the codes
  ``U(-1/K, 1/K) * init_scale + init_offset`` at construction (the VQ-VAE reference init); ``"data"`` replaces them
  on the first training forward by ``vqbench.methods.base.data_relative_codes(x, K, init_scale, init_offset)`` of that
  batch's (projected / normalised) inputs ``x``.

Data-parallel runs (one process per device, :mod:`vqbench.distributed`; rank ``r`` holds rows ``[r B/R, (r+1) B/R)``
of each global batch): every rank's state stays identical and equal to that of one process with the whole batch,
the way vector-quantize-pytorch's ``sync_codebook`` and its distributed k-means work. Each instance lists what it
syncs in ``distributed_sync`` (only its options' entries):

* ``ema``: the batch's per-code counts ``n_k`` and sums ``s_k`` are summed over ranks before the EMA update (as the
  reference's ``all_reduce`` of ``cluster_size`` and ``embed_sum``);
* ``restart``: the usage shares use the counts summed over ranks over the global row count; dead codes are replaced
  by rows of the *global* batch, the positions and the noise drawn from rank 0's random stream
  (:func:`vqbench.methods.sync.shared_random_stream`) and each row fetched from the rank holding it
  (:func:`vqbench.methods.sync.rows_at`);
* ``kmeans_init`` and ``warmup_fraction``: the latents of every rank are gathered in rank order (the global batch)
  before the distinct-row check and into the buffers, k-means runs on them from rank 0's random stream, and its
  centres are broadcast from rank 0 (so nondeterministic device reductions cannot split the ranks);
* ``entropy_weight``: ``pbar`` sums the soft assignments over ranks with a differentiable all-reduce and divides by
  the global row count (the gradient, averaged over ranks by the runner, is the single-process one);
* ``init="data"``: the batch mean and std are the global batch's and the draws come from rank 0's stream.

The losses are means over rows (their rank average is the global mean), the straight-through paths are per row,
and the other options (projection, l2, rotation, orthogonality penalty) change only parameters: nothing to sync.
Collectives run only in training-mode forwards and in ``on_step`` (never in eval mode). The EMA update in a
multi-process run adds the summed batch statistics to the decayed buffers in one step (one process adds them row
by row): equal up to float rounding.

All state (EMA statistics, usage, "initialised" flags, buffered latents, the deferred schedule) lives in buffers,
so a module restored with ``load_state_dict`` continues identically; nothing changes in eval mode. Nearest-code
search and k-means use ``vqbench.methods.base.nearest_code`` (bounded chunks, both sides centred on the codebook
mean), so K = 1,048,576 works. The options' pure functions (k-means, rotation, penalties) live in
:mod:`vqbench.methods.vq_options` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import all_gather_rows, all_reduce_sum_, broadcast_
from vqbench.errors import UserError
from vqbench.methods.base import DATA_INIT_SYNC, data_relative_codes, nearest_code
from vqbench.methods.sync import distributed, row_offset, rows_at, shared_random_stream
from vqbench.methods.vq_options import (
    NORM_EPS,
    distinct_rows,
    kmeans,
    orthogonal_penalty,
    rotate_to,
    soft_assignment_entropy,
    unit_rows,
)
from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

__all__ = ["VectorQuantizer", "kmeans", "orthogonal_penalty", "rotate_to", "soft_assignment_entropy", "unit_rows"]

#: what each option keeps identical across the ranks of a data-parallel run (module docstring)
OPTION_SYNC: dict[str, str] = {
    "ema": "ema: per-code batch counts and sums summed over ranks (all-reduce) before the EMA update",
    "restart": "restart: usage shares from counts summed over ranks / global rows; dead codes replaced by rows of "
               "the global batch, positions and noise drawn from rank 0's random stream",
    "kmeans_init": "kmeans_init: k-means (seeding from rank 0's random stream) on the latents of all ranks gathered "
                   "in rank order, centres broadcast from rank 0; buffered batches gathered the same way",
    "warmup_fraction": "warmup_fraction: the warm-up buffer holds the latents of all ranks in rank order; k-means at "
                       "the switch as kmeans_init",
    "entropy_weight": "entropy_weight: the batch-averaged soft assignment summed over ranks (differentiable "
                      "all-reduce) over the global row count",
    "init": DATA_INIT_SYNC,
}


# -- the quantizer ---------------------------------------------------------------------------------------------
@register_method("vq", version=2,
                search_space={"beta": (0.05, 1.0, "log")},
                paper="1711.00937", family="vq",
                 description="VQ-VAE: nearest code, straight-through estimator, codebook + beta*commitment loss",
                 differences="none in the rule (eq. 3 losses, straight-through); U(-1/K, 1/K) init as the common "
                             "PyTorch reimplementations",
                 beta=0.25)
class VectorQuantizer(Quantizer):
    """Nearest-code VQ (VQ-VAE eq. 3) with composable codebook options; see the module docstring for each rule.

    The default codebook is initialised U(-1/K, 1/K) as in the reference implementation; ``init_scale``
    multiplies that range and ``init_offset`` shifts it (with ``init="data"`` they are data-relative instead).

    ``distributed_sync``: the class lists every option's entry; an instance only those of its options (``()`` for
    plain ``vq``, ``vq-l2``, ``vq-rotation``, ``vq-orthoreg``). Exact up to float rounding (tolerance 0).
    """

    distributed_sync = tuple(OPTION_SYNC.values())

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, init: str = "uniform",
                 init_scale: float = 1.0, init_offset: float = 0.0,
                 ema: bool = False, ema_decay: float = 0.99, ema_eps: float = 1e-5,
                 kmeans_init: bool = False, kmeans_iters: int = 10, kmeans_seeding: str = "kmeans++",
                 kmeans_batches: int = 1, kmeans_max_batches: int = 64,
                 restart: bool = False, restart_threshold: float = 0.25, restart_decay: float = 0.99,
                 restart_noise: float = 0.01, restart_interval: int = 1,
                 code_dim: int | None = None, l2_normalize: bool = False,
                 rotation: bool = False, orthoreg_weight: float = 0.0,
                 entropy_weight: float = 0.0, entropy_temperature: float = 1.0,
                 warmup_fraction: float = 0.0, warmup_buffer_size: int = 16384) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in ("uniform", "data"):
            raise ValueError(f"init must be 'uniform' or 'data', got {init!r}")
        if kmeans_seeding not in ("kmeans++", "random"):
            raise ValueError(f"kmeans_seeding must be 'kmeans++' or 'random', got {kmeans_seeding!r}")
        if not 0.0 <= ema_decay < 1.0 or not 0.0 <= restart_decay < 1.0:
            raise ValueError("ema_decay and restart_decay must be in [0, 1)")
        if kmeans_iters < 0 or kmeans_batches < 1 or restart_interval < 1 or warmup_buffer_size < 1:
            raise ValueError("kmeans_iters >= 0, kmeans_batches, restart_interval, warmup_buffer_size >= 1")
        if kmeans_max_batches < kmeans_batches:
            raise ValueError("kmeans_max_batches must be >= kmeans_batches")
        if restart_threshold < 0:
            raise ValueError("restart_threshold must be >= 0 (a fraction of the uniform usage share 1/K)")
        if code_dim is not None and code_dim < 1:
            raise ValueError("code_dim must be >= 1 (or None: no projection)")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be in [0, 1)")
        if entropy_temperature <= 0:
            raise ValueError("entropy_temperature must be > 0")
        if ema and orthoreg_weight > 0:
            raise ValueError("orthoreg_weight needs a learnable codebook: it has no effect with ema=True")
        self.dim, self.codebook_size, self.beta = dim, codebook_size, beta
        self.init, self.init_scale, self.init_offset = init, init_scale, init_offset
        self.ema, self.ema_decay, self.ema_eps = ema, ema_decay, ema_eps
        self.kmeans_init, self.kmeans_iters, self.kmeans_seeding = kmeans_init, kmeans_iters, kmeans_seeding
        self.kmeans_batches, self.kmeans_max_batches = kmeans_batches, kmeans_max_batches
        self.restart, self.restart_threshold, self.restart_decay = restart, restart_threshold, restart_decay
        self.restart_noise, self.restart_interval = restart_noise, restart_interval
        self.code_dim = code_dim if code_dim is not None else dim
        self.l2_normalize, self.rotation = l2_normalize, rotation
        self.orthoreg_weight = orthoreg_weight
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.warmup_fraction, self.warmup_buffer_size = warmup_fraction, warmup_buffer_size
        active = {"ema": ema, "restart": restart, "kmeans_init": kmeans_init, "warmup_fraction": warmup_fraction > 0,
                  "entropy_weight": entropy_weight > 0, "init": init == "data"}
        self.distributed_sync = tuple(OPTION_SYNC[name] for name, on in active.items() if on)

        k, cd = codebook_size, self.code_dim
        weight = torch.empty(k, cd).uniform_(-1.0 / k, 1.0 / k) * init_scale + init_offset
        if l2_normalize:
            weight = unit_rows(weight)
        self.embedding = nn.Parameter(weight, requires_grad=not ema)
        self.proj_in: nn.Linear | None = nn.Linear(dim, cd) if code_dim is not None else None
        self.proj_out: nn.Linear | None = nn.Linear(cd, dim) if code_dim is not None else None
        # state (buffers: saved in checkpoints, restored on resume)
        if ema:
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", weight.clone())
        if restart:
            self.register_buffer("usage", torch.full((k,), restart_threshold / k))  # EMA usage share
        self.register_buffer("data_init_done", torch.tensor(False))
        self.register_buffer("kmeans_done", torch.tensor(False))
        self.register_buffer("kmeans_batches_seen", torch.tensor(0, dtype=torch.long))
        self.register_buffer("train_forwards", torch.tensor(0, dtype=torch.long))
        self.register_buffer("schedule_total", torch.tensor(0, dtype=torch.long))  # total steps seen by on_step
        self.register_buffer("deferred_done", torch.tensor(False))
        # buffered raw latents (k-means over several batches, or the deferred ring buffer); variable row count
        self.register_buffer("latent_buffer", torch.zeros(0, dim))
        self.register_buffer("latents_written", torch.tensor(0, dtype=torch.long))

    # -- spaces ----------------------------------------------------------------------------------------------
    def _to_lookup(self, flat: Tensor) -> Tensor:
        """z-space rows -> the space of the nearest-code search (projection, l2 normalisation)."""
        x = self.proj_in(flat) if self.proj_in is not None else flat
        return unit_rows(x) if self.l2_normalize else x

    def _lookup_codes(self, weight: Tensor) -> Tensor:
        return unit_rows(weight) if self.l2_normalize else weight

    def _to_z(self, v: Tensor) -> Tensor:
        return self.proj_out(v) if self.proj_out is not None else v

    def codebook(self) -> Tensor:
        """Effective codes in z-space, (K, dim): ``W_out l2(C) + b`` with projection, else (l2 of) ``C``."""
        return self._to_z(self._lookup_codes(self.embedding))

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self._to_z(self._lookup_codes(self.embedding[indices]))

    # -- state updates ---------------------------------------------------------------------------------------
    def _warming_up(self) -> bool:
        return self.warmup_fraction > 0 and int(self.schedule_total) > 0 and not bool(self.deferred_done)

    def on_step(self, step: int, total_steps: int) -> None:
        """Deferred quantisation: record the schedule; at ``floor(warmup_fraction * total)`` run the switch."""
        if self.warmup_fraction <= 0 or bool(self.deferred_done) or total_steps <= 0:
            return
        self.schedule_total.fill_(total_steps)
        if step >= int(self.warmup_fraction * total_steps):
            with torch.no_grad():
                rows = self._buffered_latents()
                if rows.shape[0] > 0:
                    self._set_codebook(self._kmeans(self._to_lookup(rows)), fitted=True)
                    self.kmeans_done.fill_(True)
                self._clear_buffer()
            self.deferred_done.fill_(True)

    def _buffered_latents(self) -> Tensor:
        return self.latent_buffer[:min(int(self.latents_written), self.latent_buffer.shape[0])]

    def _clear_buffer(self) -> None:
        self.latent_buffer = self.latent_buffer.new_zeros(0, self.dim)
        self.latents_written.zero_()

    def _append_latents(self, rows: Tensor, capacity: int | None) -> None:
        """Append rows (growing), or write them into a ring buffer of ``capacity`` rows (keeping the newest)."""
        rows = rows.detach().float()
        if capacity is None:
            self.latent_buffer = torch.cat([self._buffered_latents(), rows])
            self.latents_written.fill_(self.latent_buffer.shape[0])
            return
        if self.latent_buffer.shape[0] != capacity:
            self.latent_buffer = rows.new_zeros(capacity, self.dim)
        n = rows.shape[0]
        skip = max(0, n - capacity)  # rows that would be overwritten within this very batch
        start = int(self.latents_written) + skip
        slots = (start + torch.arange(n - skip, device=rows.device)) % capacity
        self.latent_buffer[slots] = rows[skip:]
        self.latents_written += n

    def _kmeans(self, x: Tensor) -> Tensor:
        """k-means centres of ``x`` (the rows of every rank): rank 0's random stream, rank 0's result everywhere."""
        with shared_random_stream(x.device):
            centres = kmeans(x, self.codebook_size, self.kmeans_iters, self.kmeans_seeding,
                             spherical=self.l2_normalize)
        return broadcast_(centres)

    def _set_codebook(self, codes: Tensor, fitted: bool = False) -> None:
        """Replace the whole codebook (lookup space) and reset the statistics that describe it.

        The restart usage shares start at the threshold share (a code the next batch leaves unused is restarted at
        once, as in the references) unless the codes were ``fitted`` to the data (k-means): those start at the
        uniform share, the grace a restarted code gets.
        """
        codes = unit_rows(codes) if self.l2_normalize else codes
        self.embedding.data.copy_(codes)
        if self.ema:
            self.ema_count.fill_(1.0)
            self.ema_sum.copy_(codes)
        if self.restart:
            self.usage.fill_((1.0 if fitted else self.restart_threshold) / self.codebook_size)

    @torch.no_grad()
    def _lazy_init(self, flat: Tensor, x: Tensor) -> None:
        """Data-relative init and k-means init on the first training batch(es)."""
        if self.init == "data" and not bool(self.data_init_done):
            self._set_codebook(data_relative_codes(x, self.codebook_size, self.init_scale, self.init_offset))
            self.data_init_done.fill_(True)
        if self.kmeans_init and not bool(self.kmeans_done) and not self._warming_up():
            self.kmeans_batches_seen += 1
            k = self.codebook_size
            x = all_gather_rows(x)  # the global batch: every rank's rows in rank order
            if self.kmeans_batches == 1 and int(self.latents_written) == 0 and distinct_rows(x) >= k:
                self._set_codebook(self._kmeans(x), fitted=True)  # the first batch suffices
            else:
                self._append_latents(all_gather_rows(flat.detach()), capacity=None)
                seen = int(self.kmeans_batches_seen)
                if seen < self.kmeans_batches:
                    return
                rows = self._to_lookup(self._buffered_latents())
                distinct = distinct_rows(rows)
                if distinct < k:
                    if seen >= self.kmeans_max_batches:
                        raise UserError(
                            f"k-means init needs {k} distinct latent vectors (codebook_size) but {seen} training "
                            f"batches gave {distinct}: use a larger batch size, a smaller codebook_size, or raise "
                            f"kmeans_max_batches")
                    return  # keep buffering: k-means of fewer than K distinct vectors would duplicate codes
                self._set_codebook(self._kmeans(rows), fitted=True)
                self._clear_buffer()
            self.kmeans_done.fill_(True)

    @torch.no_grad()
    def _update_state(self, x: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Training-mode codebook updates after the lookup: EMA codebook, usage, dead-code restart."""
        stats: dict[str, Tensor] = {}
        k = self.codebook_size
        counts = all_reduce_sum_(torch.bincount(indices, minlength=k).to(x.dtype))  # the global batch's counts
        self.train_forwards += 1
        if self.ema:
            # in place: s <- decay s + (1 - decay) sum_{i: k_i = k} x_i, then C <- s / smoothed count (no K x d
            # temporaries: at K = 2^20, dim 256 each copy is 1 GiB); several ranks: the sums summed over ranks first
            self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            if distributed():
                sums = all_reduce_sum_(x.new_zeros(k, x.shape[1]).index_add_(0, indices, x))
                self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            else:
                self.ema_sum.mul_(self.ema_decay).index_add_(0, indices, x, alpha=1 - self.ema_decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.ema_eps) / (total + k * self.ema_eps) * total
            codes = torch.div(self.ema_sum, smoothed.unsqueeze(1), out=self.embedding.data)
            if self.l2_normalize:
                codes.div_(codes.norm(dim=1, keepdim=True).clamp_min(NORM_EPS))
        if self.restart:
            offset, n = row_offset(x.shape[0], x.device)  # n: the global batch's rows
            if n > 0:
                self.usage.mul_(self.restart_decay).add_(counts / n, alpha=1 - self.restart_decay)
            dead = torch.zeros(k, dtype=torch.bool, device=x.device)
            if int(self.train_forwards) % self.restart_interval == 0 and n > 0:
                dead = self.usage < self.restart_threshold / k
            dead_codes = dead.nonzero().squeeze(1)
            n_dead = 0
            if dead_codes.numel() > 0:
                with shared_random_stream(x.device):  # one choice for all ranks, among the global batch's rows
                    if dead_codes.numel() > n:  # one batch vector per code, no duplicates: the rest wait
                        dead_codes = dead_codes[torch.randperm(dead_codes.numel(), device=x.device)[:n]]
                    n_dead = dead_codes.numel()
                    pick = torch.randperm(n, device=x.device)[:n_dead]
                    noise = torch.randn(n_dead, x.shape[1], device=x.device) * (self.restart_noise /
                                                                                math.sqrt(x.shape[1]))
            if n_dead > 0:
                new = rows_at(x, pick, offset) + noise
                if self.l2_normalize:
                    new = unit_rows(new)
                self.embedding.data[dead_codes] = new.to(self.embedding.dtype)
                self.usage[dead_codes] = 1.0 / k
                if self.ema:
                    mean_count = self.ema_count.sum() / k
                    self.ema_count[dead_codes] = mean_count
                    self.ema_sum[dead_codes] = new * mean_count
            stats["restarted"] = torch.tensor(float(n_dead))
        return stats

    def _graph_reads_codebook(self) -> bool:
        """Whether backward reads the codebook's values (and so needs a copy before the in-place updates).

        The lookup ``codes[indices]`` saves only the indices; the orthogonality penalty, the soft-assignment
        entropy (recomputed chunk by chunk in backward) and the l2 normalisation of a learnable codebook save the
        codes themselves.
        """
        return self.orthoreg_weight > 0 or self.entropy_weight > 0 or (self.l2_normalize and not self.ema)

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        # the search, the statistics and the losses run in float32 even under autocast
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z)

    def _forward(self, z: Tensor) -> QuantizeOutput:
        flat = z.reshape(-1, self.dim).float()
        x = self._to_lookup(flat)
        training = self.training
        if training:
            self._lazy_init(flat, x.detach())
        weight = self.embedding
        if training and (self.ema or self.restart) and self._graph_reads_codebook():
            # the updates below rewrite the codebook in place: a graph that saved it must hold a copy
            weight = weight.clone()
        codes_all = self._lookup_codes(weight)
        indices = nearest_code(x, codes_all)
        stats: dict[str, Tensor] = {}

        if self._warming_up():  # deferred quantisation: identity on z, keep recent latents (of every rank)
            if training:
                self._append_latents(all_gather_rows(flat.detach()), capacity=self.warmup_buffer_size)
            stats["quantizing"] = torch.tensor(0.0)
            return QuantizeOutput(z, indices.reshape(z.shape[:-1]), flat.new_zeros(()), stats)

        e = codes_all[indices]
        commitment_loss = F.mse_loss(x, e.detach())
        loss = self.beta * commitment_loss
        stats["commitment_loss"] = commitment_loss.detach()
        if not self.ema:
            codebook_loss = F.mse_loss(e, x.detach())
            loss = loss + codebook_loss
            stats["codebook_loss"] = codebook_loss.detach()
        if self.orthoreg_weight > 0:
            ortho = orthogonal_penalty(weight)
            loss = loss + self.orthoreg_weight * ortho
            stats["orthoreg"] = ortho.detach()
        if self.entropy_weight > 0:
            entropy = soft_assignment_entropy(x, codes_all, self.entropy_temperature, across_ranks=training)
            loss = loss + self.entropy_weight * (math.log(self.codebook_size) - entropy)
            stats["assignment_entropy"] = entropy.detach()
        grad_path = rotate_to(x, e) if self.rotation else x
        # value exactly e; gradient to x through the identity (straight-through) or sg[lambda R] (rotation)
        v = e.detach() + (grad_path - grad_path.detach())
        z_q = self._to_z(v).reshape(z.shape).to(z.dtype)
        if self.warmup_fraction > 0:
            stats["quantizing"] = torch.tensor(1.0)
        if training and (self.ema or self.restart):
            stats.update(self._update_state(x.detach(), indices))
        elif training:
            self.train_forwards += 1
        return QuantizeOutput(z_q, indices.reshape(z.shape[:-1]), loss, stats)

    # -- resume: the latent buffer's row count varies --------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "latent_buffer"
        if key in state_dict and state_dict[key].shape != self.latent_buffer.shape:
            self.latent_buffer = self.latent_buffer.new_zeros(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
