"""VQGAN-LC: a large frozen codebook of feature-bank cluster centres, projected into z-space by a linear layer.

Zhu et al., "Scaling the Codebook Size of VQGAN to 100,000 with a Utilization Rate of 99%", arXiv:2406.11837
(reference: zh460045050/VQGAN-LC, ``vqgan-gpt-lc/models/models_vq.py`` with ``tuning_codebook=0``,
``use_cblinear=1``; the bank is built by ``codebook_generation/``: CLIP patch features of ImageNet, k-means).

* frozen codes ``C`` (K x F): k-means centres of a feature bank (M x F). Lloyd's k-means, ``kmeans_iters`` rounds
  from K random *distinct values* of the bank (duplicate rows are merged before the draw, so K distinct starting
  centres whenever the bank has K distinct rows), empty clusters keep their centre;
* trainable projector ``P(c) = W c + b``, ``nn.Linear(F, dim)`` with ``W ~ N(0, 1/dim)`` (the reference init);
* index ``k = argmin_k ||z - P(c_k)||^2``, ``z_q = z + sg[P(c_k) - z]``;
* ``L = ||z - sg[P(c_k)]||^2 + codebook_weight ||sg[z] - P(c_k)||^2`` with the reference's
  ``codebook_weight = 0.33`` (weight 1 on the encoder side).

Where the bank comes from (buffer ``init_source``, logged as ``stats["init_source"]``):

1. ``FROM_BANK`` (1): the task's own extractor features, handed over by the runner through
   :meth:`VQGANLC.init_from_feature_bank` (vqbench's image tasks give one only for a timm encoder with pretrained
   weights on disk: the paper's recipe with another backbone);
2. ``FROM_WARMUP_BANK`` (4), the default without such a bank: the task's own encoder after a warm-up. For the
   first ``bank_warmup_steps`` training forwards (at most a quarter of the run's steps when the runner tells
   ``on_step`` the total, so a short run still quantizes for most of it) the quantizer passes ``z`` through
   (``z_q = z``, loss 0, indices 0), so the autoencoder trains unquantized, and keeps the last ``bank_size``
   encoder outputs (default ``max(16384, 4 K)`` rows) in a ring buffer; at the last warm-up forward the frozen
   codes become the k-means centres of that bank (F = dim), the projector starts at the identity (``W = I``,
   ``b = 0``) and quantization starts. The bank is then freed;
3. ``FROM_BATCH_KMEANS`` (2): ``bank_warmup_steps=0``: the bank is the first training batch's latents;
4. ``FROM_BATCH_DATA`` (3): ``init="data"``: codes drawn by :func:`vqbench.methods.base.data_relative_codes` from
   the first batch (the restricted-init knob ``init_scale``, ``init_offset``; identity projector too).

``stats["bank_rows"]`` is the number of distinct bank rows the k-means ran on (0 before it ran). Before the codes
are initialised an eval-mode forward quantizes with the placeholder codebook (all codes ``P(0) = b``).

Data-parallel runs: the warm-up bank receives the rows of every rank in rank order (the global batch, as one
process would see it), the first batch of ``FROM_BATCH_KMEANS`` likewise; k-means runs on every rank from rank 0's
random stream and rank 0's centres are broadcast; ``init_from_feature_bank`` (called on every rank) draws its
k-means seeds and the new projector from rank 0's stream and broadcasts both; ``init="data"`` uses the global
batch's statistics. After the init only the projector changes, by the averaged gradients. Exact up to float
rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import all_gather_rows, broadcast_
from vqbench.methods.base import DATA_INIT_SYNC, data_relative_codes, nearest_code, straight_through
from vqbench.methods.sync import shared_random_stream
from vqbench.quantizer import QuantizeOutput, Quantizer, check_last_dim
from vqbench.registry import register_method

UNINITIALISED, FROM_BANK, FROM_BATCH_KMEANS, FROM_BATCH_DATA, FROM_WARMUP_BANK = 0, 1, 2, 3, 4
#: the warm-up bank holds at least this many rows (and 4 per code)
MIN_BANK_ROWS = 16384
#: the warm-up takes at most this fraction of a run's steps
MAX_WARMUP_FRACTION = 0.25


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """Lloyd's k-means centres (k, F) of ``x`` (M, F); assignment by the chunked :func:`nearest_code`.

    Starts from ``k`` random distinct values of ``x`` (rows equal by value count once); when ``x`` has fewer than
    ``k`` distinct rows, from all of them plus random repeats with a 1e-3 x std jitter. The iterations use every
    row (duplicates weigh in); a cluster that empties keeps its previous centre.
    """
    x = x.detach().float()
    if x.shape[0] == 0:
        raise ValueError("k-means needs at least one point")
    distinct = torch.unique(x, dim=0)
    m = distinct.shape[0]
    if m >= k:
        centres = distinct[torch.randperm(m, device=x.device)[:k]].clone()
    else:
        extra = distinct[torch.randint(0, m, (k - m,), device=x.device)]
        extra = extra + 1e-3 * x.std(dim=0, unbiased=False).clamp_min(1e-6) * torch.randn_like(extra)
        centres = torch.cat([distinct, extra])
    for _ in range(iters):
        assign = nearest_code(x, centres)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


@register_method("vq-lc", version=2,
                 search_space={"codebook_weight": (0.05, 1.0, "log")},
                 paper="2406.11837", family="reparameterised-codebook",
                 description="VQGAN-LC: large frozen codebook of feature-bank k-means centres plus a trainable "
                             "linear projector into z-space; without an extractor the bank is the task's encoder "
                             "outputs after a pass-through warm-up",
                 differences="The reference clusters pretrained CLIP patch features of ImageNet (per class, "
                             "mini-batch k-means); here the bank is a timm extractor's features when the task has "
                             "one, else the task's own encoder outputs collected over bank_warmup_steps unquantized "
                             "steps, clustered by full-batch Lloyd k-means with the projector starting at identity.",
                 codebook_weight=0.33, kmeans_iters=10, init="kmeans", bank_warmup_steps=100, bank_size=None)
class VQGANLC(Quantizer):
    """VQGAN-LC: frozen ``frozen_codes`` (K, F) buffer and trainable ``projector`` (F -> dim).

    Warm-up state (buffers, so a resumed run continues it): ``bank`` (rows, dim) ring buffer, ``bank_filled``
    (rows written so far), ``warmup_seen`` (training forwards seen while collecting), ``warmup_target`` (forwards
    the warm-up lasts).
    """

    distributed_sync = ("warm-up bank / first batch: the rows of all ranks gathered in rank order; k-means from rank "
                        "0's random stream, centres broadcast from rank 0",
                        "feature-bank init: k-means seeds and the new projector from rank 0's stream, broadcast",
                        DATA_INIT_SYNC)

    def __init__(self, dim: int, codebook_size: int, codebook_weight: float = 0.33, kmeans_iters: int = 10,
                 init: str = "kmeans", bank_warmup_steps: int = 100, bank_size: int | None = None,
                 init_scale: float = 1.0, init_offset: float = 0.0) -> None:
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError("dim and codebook_size must be >= 1")
        if init not in ("kmeans", "data"):
            raise ValueError(f"init must be 'kmeans' (bank, else warm-up bank) or 'data', got {init!r}")
        if bank_warmup_steps < 0:
            raise ValueError(f"bank_warmup_steps must be >= 0, got {bank_warmup_steps}")
        self.bank_size = max(MIN_BANK_ROWS, 4 * codebook_size) if bank_size is None else int(bank_size)
        if self.bank_size < codebook_size:
            raise ValueError(f"bank_size ({self.bank_size}) must be >= codebook_size ({codebook_size})")
        self.dim, self.codebook_size = dim, codebook_size
        self.codebook_weight, self.kmeans_iters = codebook_weight, kmeans_iters
        self.init, self.init_scale, self.init_offset = init, init_scale, init_offset
        self.bank_warmup_steps = bank_warmup_steps
        self.distributed_sync = type(self).distributed_sync[:2] + (DATA_INIT_SYNC,) * (init == "data")
        self.register_buffer("frozen_codes", torch.zeros(codebook_size, dim))
        self.projector = self._new_projector(dim)
        self.register_buffer("init_source", torch.tensor(UNINITIALISED))
        self.register_buffer("bank", torch.zeros(0, dim))  # allocated at the first warm-up forward, freed after
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("warmup_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("warmup_target", torch.tensor(bank_warmup_steps, dtype=torch.long))
        self.register_buffer("bank_rows", torch.zeros((), dtype=torch.long))

    def on_step(self, step: int, total_steps: int) -> None:
        """The warm-up lasts ``min(bank_warmup_steps, max(1, total_steps // 4))`` training forwards."""
        if self.training and self.bank_warmup_steps > 0:
            limit = max(1, int(total_steps * MAX_WARMUP_FRACTION))
            self.warmup_target.fill_(min(self.bank_warmup_steps, limit))

    def _new_projector(self, features: int) -> nn.Linear:
        layer = nn.Linear(features, self.dim)
        nn.init.normal_(layer.weight, std=self.dim ** -0.5)
        return layer

    @torch.no_grad()
    def init_from_feature_bank(self, features: Tensor) -> None:
        """Frozen codes = k-means centres of the task's extractor ``features`` (M, F); projector ``F -> dim``
        re-created (the reference init)."""
        if self.init == "data":
            return  # the restricted-init experiment draws its codes from the first batch instead
        if features.dim() != 2 or features.shape[0] < self.codebook_size:
            raise ValueError(f"vq-lc needs a feature bank (M, F) with M >= K = {self.codebook_size} rows, "
                             f"got shape {tuple(features.shape)}")
        device = self.frozen_codes.device
        with shared_random_stream(device):  # one draw for every rank: the runner calls this on every rank
            centres = kmeans(features, self.codebook_size, self.kmeans_iters)
            self.frozen_codes = broadcast_(centres.to(device))
            self.projector = self._new_projector(centres.shape[1]).to(device)
        for parameter in self.projector.parameters():
            broadcast_(parameter.data)
        self.bank_rows.fill_(torch.unique(features.float(), dim=0).shape[0])
        self.init_source.fill_(FROM_BANK)

    @torch.no_grad()
    def _init_codes(self, codes: Tensor, source: int) -> None:
        # in place: the runner's optimizer already holds these parameters (shapes are (K, dim) and dim -> dim)
        self.frozen_codes.copy_(codes)
        self.projector.weight.copy_(torch.eye(self.dim, device=codes.device))
        self.projector.bias.zero_()
        self.init_source.fill_(source)

    @torch.no_grad()
    def _kmeans(self, rows: Tensor) -> Tensor:
        """k-means centres of ``rows`` (the same on every rank): rank 0's random stream and rank 0's result."""
        with shared_random_stream(rows.device):
            return broadcast_(kmeans(rows, self.codebook_size, self.kmeans_iters))

    @torch.no_grad()
    def _collect(self, flat: Tensor) -> bool:
        """Add ``flat`` to the warm-up bank; True when the warm-up is over and the codes were initialised."""
        if self.bank.shape[0] != self.bank_size:
            self.bank = torch.zeros(self.bank_size, self.dim, device=flat.device)
        rows = all_gather_rows(flat.detach().float())[-self.bank_size:]  # every rank's rows, in rank order
        positions = (int(self.bank_filled) + torch.arange(rows.shape[0], device=flat.device)) % self.bank_size
        self.bank[positions] = rows
        self.bank_filled.add_(rows.shape[0])
        self.warmup_seen.add_(1)
        if int(self.warmup_seen) < int(self.warmup_target):
            return False
        bank = self.bank[:min(int(self.bank_filled), self.bank_size)]
        self.bank_rows.fill_(torch.unique(bank, dim=0).shape[0])
        self._init_codes(self._kmeans(bank), FROM_WARMUP_BANK)
        self.bank = torch.zeros(0, self.dim, device=flat.device)
        return True

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Adopt the saved codebook width F (a bank's features may differ from ``dim``) and warm-up bank rows."""
        saved = state_dict.get(prefix + "frozen_codes")
        if saved is not None and saved.shape != self.frozen_codes.shape:
            device = self.frozen_codes.device
            self.frozen_codes = torch.empty(saved.shape, device=device)
            self.projector = self._new_projector(saved.shape[1]).to(device)
        bank = state_dict.get(prefix + "bank")
        if bank is not None and bank.shape != self.bank.shape:
            self.bank = torch.empty(bank.shape, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def codebook(self) -> Tensor:
        return self.projector(self.frozen_codes)

    def decode_indices(self, indices: Tensor) -> Tensor:
        return self.projector(self.frozen_codes[indices])

    def _stats(self, **values: Tensor) -> dict[str, Tensor]:
        return {**values, "init_source": self.init_source.detach().float(),
                "bank_rows": self.bank_rows.detach().float()}

    def forward(self, z: Tensor) -> QuantizeOutput:
        check_last_dim(z, self.dim)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            if self.training and int(self.init_source) == UNINITIALISED:
                if self.init == "data":
                    codes = data_relative_codes(flat, self.codebook_size, self.init_scale, self.init_offset)
                    self._init_codes(codes, FROM_BATCH_DATA)
                elif self.bank_warmup_steps == 0:
                    batch = all_gather_rows(flat.detach())  # the global batch
                    self.bank_rows.fill_(torch.unique(batch, dim=0).shape[0])
                    self._init_codes(self._kmeans(batch), FROM_BATCH_KMEANS)
                elif not self._collect(flat):  # warm-up: the autoencoder trains unquantized
                    zero = flat.new_zeros(())
                    return QuantizeOutput(z, torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device), zero,
                                          self._stats(codebook_loss=zero, commitment_loss=zero))
            with torch.no_grad():
                indices = nearest_code(flat, self.codebook())
            codes = self.decode_indices(indices)
            commitment_loss = F.mse_loss(flat, codes.detach())
            codebook_loss = F.mse_loss(codes, flat.detach())
            loss = commitment_loss + self.codebook_weight * codebook_loss
            z_q = straight_through(flat, codes)
        return QuantizeOutput(z_q.reshape(z.shape), indices.reshape(z.shape[:-1]), loss,
                              self._stats(codebook_loss=codebook_loss.detach(),
                                          commitment_loss=commitment_loss.detach()))
