"""Affine-reparameterised VQ with synchronized commitment and an optional alternating codebook step.

Huh et al., "Straightening Out the Straight-Through Estimator: Overcoming Optimization Challenges in Vector
Quantized Networks", arXiv:2305.08842 (reference: minyoungg/vqtorch, ``VectorQuant`` and ``AffineTransform``;
defaults from its README example: ``beta=0.98``, ``affine_lr=10``, ``sync_nu=0.2``).

* effective codes ``e_k = s * c_k + t`` (one ``s``, ``t`` in R^dim shared by all codes), either
  ``affine="learned"``: ``s = 1 + affine_lr * a``, ``t = affine_lr * b`` with ``a = b = 0`` at start (``affine_lr``
  scales the learning rate of ``a``, ``b``), or ``affine="running"``: ``s = sqrt(var_z / (var_c + 1e-8))``,
  ``t = mean_z - s * mean_c`` (``e_k = (c_k - mean_c) / std_c * std_z + mean_z``) from EMA statistics of the
  batch latents and the raw codebook (biased variances, momentum 0.1, first training batch copied), updated
  before the lookup, in training only; or ``affine="none"``;
* index ``k = argmin_k ||z - e_k||^2``; loss ``(1 - beta) ||z - sg[e_k]||^2 + beta ||sg[z] - e_k||^2``
  (vqtorch's convex combination: ``beta = 0.98`` weights the codebook side);
* synchronized update: ``z_q = z + sg[e_k - z] + nu e_k - sg[nu e_k]``: value ``e_k``, the decoder's gradient
  ``g`` reaches ``z`` as in the STE and also the code, as ``nu g`` (``nu = sync_nu``);
* alternating step (``alternating=True``), realised inside the module because the runner owns the optimizer, as
  vqtorch's ``inplace_optimizer``: in each training forward, after the lookup and before the loss, one SGD step
  with momentum (``alt_lr``, ``alt_momentum``; velocity kept in a buffer) on the raw codebook ``c`` for
  ``||sg[z] - e_k||^2`` with the batch's assignments held fixed; the codes are then re-read (assignments not
  recomputed, as in vqtorch) and the usual loss and STE follow, so the runner's optimizer also steps ``c``.

Differences from vqtorch: no dead-code replacement (its README example sets ``replace_freq=20``), no k-means init,
input/codebook norms or groups (those mechanisms are studied by other registered names); the alternating step runs
inside ``forward`` (vqtorch's ``inplace_optimizer`` hooks the backward pass).

Data-parallel runs: ``affine="running"`` updates its statistics with the global batch's mean and biased variance
(sums over ranks, as vector-quantize-pytorch's ``sync_affine_param``); the alternating step uses the global batch's
gradient (each rank's gradient of its mean, weighted by its share of the rows, summed over ranks), so the velocity
and the codebook stay one on every rank; ``init="data"`` uses the global batch. The learned affine and the
synchronized commitment change only parameters. Exact up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import all_reduce_sum_, global_rows
from vqbench.methods.base import DATA_INIT_SYNC, CodebookQuantizer, nearest_code, straight_through
from vqbench.methods.sync import distributed
from vqbench.quantizer import QuantizeOutput
from vqbench.registry import register_method

AFFINES = ("learned", "running", "none")


# version 2: the nearest-code search is centred on the codebook mean (issue 13): near-tie indices, and so runs, change
@register_method("vq-affine", version=2,
                 search_space={"beta": (0.5, 1.0, "linear"), "sync_nu": (0.0, 1.0, "linear"),
                               "affine_lr": (1.0, 100.0, "log")},
                 paper="2305.08842", family="reparameterised-codebook",
                 description="Affine-reparameterised codebook, synchronized commitment (nu), optional alternating "
                             "codebook step (Huh et al.)",
                 differences="no dead-code replacement (vqtorch README example: replace_freq=20), k-means init, "
                             "norms or groups; the alternating step runs inside forward",
                 beta=0.98, sync_nu=0.2, affine="learned", affine_lr=10.0, momentum=0.1, alternating=False,
                 alt_lr=50.0, alt_momentum=0.9, init="normal")
class AffineVQ(CodebookQuantizer):
    """Raw codebook ``embedding`` (K, dim) seen through a shared affine map.

    Restricted-init knob on the raw codebook (:class:`vqbench.methods.base.CodebookQuantizer`): ``init="normal"``
    (N(0, 1), the reference ``nn.Embedding``), ``"uniform"`` (U(-1/K, 1/K)), times ``init_scale`` plus
    ``init_offset``; ``"data"`` draws it with :func:`vqbench.methods.base.data_relative_codes` on the first training
    batch.

    ``distributed_sync``: the class lists every entry, an instance those of its settings.
    """

    distributed_sync = ("affine='running': batch mean and variance of the latents over the global batch (sums over "
                        "ranks)",
                        "alternating: the inner codebook gradient summed over ranks (each weighted by its row share)",
                        DATA_INIT_SYNC)

    def __init__(self, dim: int, codebook_size: int, beta: float = 0.98, sync_nu: float = 0.2,
                 affine: str = "learned", affine_lr: float = 10.0, momentum: float = 0.1, alternating: bool = False,
                 alt_lr: float = 50.0, alt_momentum: float = 0.9, init: str = "normal", init_scale: float = 1.0,
                 init_offset: float = 0.0) -> None:
        super().__init__(dim, codebook_size, init, init_scale, init_offset)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1] (a convex weight), got {beta}")
        if affine not in AFFINES:
            raise ValueError(f"affine must be one of {AFFINES}, got {affine!r}")
        self.beta, self.nu, self.affine, self.affine_lr, self.momentum = beta, sync_nu, affine, affine_lr, momentum
        self.alternating, self.alt_lr, self.alt_momentum = alternating, alt_lr, alt_momentum
        running, alternate, data = type(self).distributed_sync
        self.distributed_sync = tuple(sentence for sentence, on in
                                      ((running, affine == "running"), (alternate, alternating), (data, init == "data"))
                                      if on)
        self.embedding = nn.Parameter(self.initial_codes())
        if affine == "learned":
            self.affine_scale = nn.Parameter(torch.zeros(dim))
            self.affine_bias = nn.Parameter(torch.zeros(dim))
        elif affine == "running":
            self.register_buffer("stats_initialised", torch.tensor(False))
            for name, value in (("z_mean", 0.0), ("z_var", 1.0), ("c_mean", 0.0), ("c_var", 1.0)):
                self.register_buffer(name, torch.full((dim,), value))
        if alternating:
            self.register_buffer("alt_velocity", torch.zeros(codebook_size, dim))

    def affine_params(self) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (dim,)."""
        if self.affine == "learned":
            return 1.0 + self.affine_lr * self.affine_scale, self.affine_lr * self.affine_bias
        if self.affine == "running":
            scale = (self.z_var / (self.c_var + 1e-8)).sqrt()
            return scale, self.z_mean - scale * self.c_mean
        ones = torch.ones(self.dim, device=self.embedding.device)
        return ones, torch.zeros_like(ones)

    def codebook(self) -> Tensor:
        scale, shift = self.affine_params()
        return self.embedding * scale + shift

    def decode_indices(self, indices: Tensor) -> Tensor:
        scale, shift = self.affine_params()
        return self.embedding[indices] * scale + shift

    @torch.no_grad()
    def _update_running_stats(self, flat: Tensor) -> None:
        if distributed():  # the global batch's mean and (biased) variance: sums over ranks
            n = max(global_rows(flat.shape[0], flat.device), 1)
            z_mean = all_reduce_sum_(flat.sum(0)) / n
            z_var = all_reduce_sum_((flat - z_mean).pow(2).sum(0)) / n
        else:
            z_mean, z_var = flat.mean(0), flat.var(0, unbiased=False)
        c_mean, c_var = self.embedding.mean(0), self.embedding.var(0, unbiased=False)
        m = 1.0 if not bool(self.stats_initialised) else self.momentum
        for buf, new in ((self.z_mean, z_mean), (self.z_var, z_var), (self.c_mean, c_mean), (self.c_var, c_var)):
            buf.mul_(1 - m).add_(new, alpha=m)
        self.stats_initialised.fill_(True)

    def _alternating_step(self, flat: Tensor, indices: Tensor) -> None:
        with torch.enable_grad():
            inner = F.mse_loss(self.decode_indices(indices), flat.detach())
            (grad,) = torch.autograd.grad(inner, [self.embedding])
        if distributed():  # the global batch's gradient: this rank's share of the global mean, summed over ranks
            grad = all_reduce_sum_(grad * (flat.shape[0] / global_rows(flat.shape[0], flat.device)))
        with torch.no_grad():
            self.alt_velocity.mul_(self.alt_momentum).add_(grad)
            self.embedding.sub_(self.alt_lr * self.alt_velocity)

    def quantize(self, flat: Tensor) -> QuantizeOutput:
        if self.training and self.affine == "running" and flat.shape[0] > 0:
            self._update_running_stats(flat)
        with torch.no_grad():
            indices = nearest_code(flat, self.codebook())
        if self.training and self.alternating and flat.shape[0] > 0:
            self._alternating_step(flat, indices)
        codes = self.decode_indices(indices)
        commitment_loss = F.mse_loss(flat, codes.detach())
        codebook_loss = F.mse_loss(codes, flat.detach())
        loss = (1 - self.beta) * commitment_loss + self.beta * codebook_loss
        z_q = straight_through(flat, codes)
        if self.nu:
            z_q = z_q + self.nu * codes - (self.nu * codes).detach()
        scale, shift = self.affine_params()
        return QuantizeOutput(z_q, indices, loss,
                              {"codebook_loss": codebook_loss.detach(), "commitment_loss": commitment_loss.detach(),
                               "affine_scale_mean": scale.detach().mean(), "affine_shift_mean": shift.detach().mean()})
