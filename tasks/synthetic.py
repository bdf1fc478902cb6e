"""Synthetic reconstruction tasks that run in seconds on a CPU.

``gmm``: points from a Gaussian mixture in ``data_dim`` dimensions are encoded by an MLP to
``latent_dim``, quantized, and decoded by a mirror MLP; the loss is the reconstruction MSE plus the
quantizer's auxiliary loss. The data are generated from ``data_seed`` (identical for every method and
training seed), standardised per dimension with the training set's statistics, and split into fixed train and
eval sets, plus a validation set of ``n_eval`` more points from the same distribution (drawn after the others,
so train and eval are those of the first version; tuning selects on it).

After each training loss the batch's reconstruction MSE and the data elements per token (``data_dim``: one token
per vector) go to a quantizer that listens (:func:`vqbench.tasks.base.report_reconstruction`; SQ-VAE weighs its
latent terms by them). Usage metrics are over the method's real codebook size ``quantizer.codebook_size`` (FSQ and
LFQ may have other than the task's ``codebook_size``), reported as the metric ``codebook_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import gather_rows, local_range, sum_floats
from vqbench.metrics import Evaluation
from vqbench.registry import register_task
from vqbench.tasks.base import EpochSampler, Stage, Task, report_reconstruction

QUICK = {"steps": 600, "batch_size": 256, "lr": 2e-3, "eval_interval": 200}
#: standard: the published board's budget, chosen from 6,000-step curves (vq, vq-ema, vq-restart, simvq, fsq, gumbel
#: on each task): most curves are flat by step 3,000-4,000 (vq on gmm 0.2945 at 3,000, 0.2943 at 4,000; vq-ema on
#: manifold 0.4852 and 0.4834); fsq, lfq, bsq and gumbel on gmm keep drifting and are flagged; about 15-25 s a run on
#: one CPU thread (the curves are in the issue-15 note; the Protocol page counts the converged runs per task)
STANDARD = {"steps": 4000, "batch_size": 256, "lr": 2e-3, "eval_interval": 250}
PAPER = {"steps": 20000, "batch_size": 1024, "lr": 1e-3, "eval_interval": 1000, "warmup_steps": 500}


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def gaussian_mixture(n: int, n_modes: int, data_dim: int, separation: float, generator: torch.Generator,
                     centers: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x = mu_c + eps``, ``c ~ U{n_modes}``, ``mu ~ N(0, separation^2 I)``, ``eps ~ N(0, I)``."""
    if centers is None:
        centers = torch.randn(n_modes, data_dim, generator=generator) * separation
    labels = torch.randint(n_modes, (n,), generator=generator)
    return centers[labels] + torch.randn(n, data_dim, generator=generator), centers


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    def forward(self, x: Tensor):
        z = self.encoder(x)
        out = self.quantizer(z)
        return self.decoder(out.z_q), z, out


class VectorReconstructionTask(Task):
    """Reconstruct vectors through encoder -> quantizer -> decoder (base of the synthetic tasks)."""

    def __init__(self, data_dim: int, latent_dim: int, codebook_size: int, hidden: int, depth: int,
                 n_train: int, n_eval: int, data_seed: int) -> None:
        if min(data_dim, latent_dim, codebook_size, hidden, n_train, n_eval) < 1 or depth < 0:
            raise ValueError("dims, sizes and counts must be positive (depth >= 0)")
        self.data_dim, self.latent_dim, self.codebook_size = data_dim, latent_dim, codebook_size
        self.hidden, self.depth = hidden, depth
        self.n_train, self.n_eval, self.data_seed = n_train, n_eval, data_seed

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover
        """(train, eval, validation) points, drawn in that order from ``generator``."""
        raise NotImplementedError

    def setup(self, device: torch.device, seed: int) -> None:
        self.device = device
        g = torch.Generator().manual_seed(self.data_seed)
        train, test, validation = self.make_data(g)
        mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
        self.train_x = ((train - mean) / std).to(device)
        self.eval_x = ((test - mean) / std).to(device)
        self.validation_x = ((validation - mean) / std).to(device)
        self.seed = seed

    def build_model(self, quantizer: nn.Module) -> Autoencoder:
        widths = [self.hidden] * self.depth
        encoder = mlp([self.data_dim, *widths, self.latent_dim])
        decoder = mlp([self.latent_dim, *widths, self.data_dim])
        return Autoencoder(encoder, quantizer, decoder).to(self.device)

    def stages(self, quantizer: nn.Module, budget) -> list[Stage]:
        model = self.build_model(quantizer)
        sampler = EpochSampler(self.n_train, budget.batch_size, self.seed)

        def batch(step: int) -> Tensor:
            return self.train_x[sampler.local_indices(step).to(self.device)]

        def loss(x: Tensor):
            x_hat, _, out = model(x)
            rec = F.mse_loss(x_hat, x)
            report_reconstruction(quantizer, rec, self.data_dim)  # one token per vector
            logs = {"rec_loss": rec.detach(), "quant_loss": out.loss.detach()}
            logs.update({f"q/{k}": v for k, v in out.stats.items()})
            return rec + out.loss, logs

        @torch.no_grad()
        def evaluate_on(data: Tensor) -> Evaluation:
            # each rank its contiguous part (all of it in one process): the collapse metrics stream every row
            # (CollapseMetrics: counts and moments summed over ranks), squared errors are summed, and the
            # embeddings are gathered in rank order for the one sample-based number (embedding_clusters_frac)
            from vqbench.collapse import CollapseMetrics, split_evaluation

            collapse = CollapseMetrics(quantizer.codebook_size, self.latent_dim,
                                       reference_dim=self.data_dim).to(self.device)
            first, stop = local_range(data.shape[0])
            sq_err, embeddings = 0.0, []
            for start in range(first, stop, 4096):
                x = data[start:min(start + 4096, stop)]
                x_hat, z, out = model(x)
                sq_err += float((x_hat - x).pow(2).sum())
                finite = bool(torch.isfinite(z).all())  # a diverged model's NaN latents leave the spectra NaN
                collapse.update(out.indices, latents=z if finite else None, reference=x)
                embeddings.append(z)
            codebook = quantizer.codebook()
            if codebook is not None:
                collapse.update(torch.zeros(0, dtype=torch.long, device=self.device), codebook=codebook)
            (sq_err,) = sum_floats(sq_err)
            z_all = gather_rows(torch.cat(embeddings) if embeddings else data.new_zeros(0, self.latent_dim),
                                self.latent_dim)
            ev = split_evaluation(collapse, z_all)
            ev.metrics["mse"] = sq_err / (data.shape[0] * self.data_dim)
            ev.metrics["codebook_size"] = float(quantizer.codebook_size)  # the method's real K
            return ev

        return [Stage("autoencoder", model, batch, loss, lambda: evaluate_on(self.eval_x), quantizer=quantizer,
                      items_per_batch=budget.batch_size, validate=lambda: evaluate_on(self.validation_x))]


@register_task("gmm", version=2, kind="synthetic", main_metric="mse", higher_is_better=False,
               description="Reconstruct points of a Gaussian mixture through an MLP autoencoder",
               budgets={"quick": QUICK, "standard": STANDARD, "paper": PAPER},
               n_modes=64, data_dim=32, latent_dim=16, codebook_size=256, separation=2.0,
               hidden=128, depth=2, n_train=16384, n_eval=4096, data_seed=0)
class GaussianMixtureTask(VectorReconstructionTask):
    """Gaussian-mixture reconstruction: ``n_modes`` clusters, ``separation`` x the noise scale apart."""

    def __init__(self, n_modes: int, data_dim: int, latent_dim: int, codebook_size: int, separation: float,
                 hidden: int, depth: int, n_train: int, n_eval: int, data_seed: int) -> None:
        super().__init__(data_dim, latent_dim, codebook_size, hidden, depth, n_train, n_eval, data_seed)
        if n_modes < 1 or separation < 0:
            raise ValueError("n_modes must be >= 1 and separation >= 0")
        self.n_modes, self.separation = n_modes, separation

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        train, centers = gaussian_mixture(self.n_train, self.n_modes, self.data_dim, self.separation, generator)
        test, _ = gaussian_mixture(self.n_eval, self.n_modes, self.data_dim, self.separation, generator, centers)
        validation, _ = gaussian_mixture(self.n_eval, self.n_modes, self.data_dim, self.separation, generator,
                                         centers)
        return train, test, validation


@register_task("gmm-codebook", version=2, kind="synthetic", main_metric="mse", higher_is_better=False,
               description="Fit a codebook to fixed Gaussian-mixture embeddings (no encoder): the codebook "
                           "initialisation is the tokens-collapse knob",
               budgets={"quick": QUICK, "standard": STANDARD, "paper": PAPER},
               n_modes=64, data_dim=16, codebook_size=256, separation=2.0, n_train=16384, n_eval=4096, data_seed=0)
class CodebookFitTask(GaussianMixtureTask):
    """The embeddings are the data: encoder and decoder are the identity, so only the quantizer learns.

    The loss is ``||x - z_q||^2`` plus the quantizer's auxiliary loss. Whatever a method does to its codebook
    (and nothing else) decides how many codes end up used: tokens collapse in isolation.
    """

    def __init__(self, n_modes: int, data_dim: int, codebook_size: int, separation: float, n_train: int,
                 n_eval: int, data_seed: int) -> None:
        super().__init__(n_modes, data_dim, data_dim, codebook_size, separation, 1, 0, n_train, n_eval, data_seed)

    def build_model(self, quantizer: nn.Module) -> Autoencoder:
        return Autoencoder(nn.Identity(), quantizer, nn.Identity()).to(self.device)


def random_manifold(n: int, intrinsic_dim: int, data_dim: int, generator: torch.Generator,
                    weights: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``x = W2 tanh(W1 u)``, ``u ~ N(0, I_intrinsic)``: a smooth ``intrinsic_dim``-manifold in ``data_dim`` dims.

    ``W1`` (4 intrinsic x intrinsic) and ``W2`` (data_dim x 4 intrinsic) are fixed Gaussian matrices drawn once
    from the data seed, scaled so that tanh is in its curved regime.
    """
    if weights is None:
        w1 = torch.randn(4 * intrinsic_dim, intrinsic_dim, generator=generator) * (1.5 / intrinsic_dim**0.5)
        w2 = torch.randn(data_dim, 4 * intrinsic_dim, generator=generator) / (4 * intrinsic_dim) ** 0.5
        weights = (w1, w2)
    u = torch.randn(n, intrinsic_dim, generator=generator)
    return torch.tanh(u @ weights[0].t()) @ weights[1].t(), weights


@register_task("manifold", version=2, kind="synthetic", main_metric="mse", higher_is_better=False,
               description="Reconstruct points of a curved 16-dim manifold in 64 dims; the encoder's width and depth "
                           "are the embeddings-collapse knob",
               budgets={"quick": QUICK, "standard": STANDARD, "paper": PAPER},
               intrinsic_dim=16, data_dim=64, latent_dim=32, codebook_size=256, hidden=128, depth=2,
               n_train=16384, n_eval=4096, data_seed=0)
class ManifoldTask(VectorReconstructionTask):
    """Data whose intrinsic dimension (16) exceeds what a narrow encoder (``hidden`` < 16) can keep.

    Embeddings collapse shows as an encoder-output effective rank far below the data's own
    (``embeddings_collapse_index`` << 1); widening or deepening the encoder (``hidden``, ``depth``) cures it.
    """

    def __init__(self, intrinsic_dim: int, data_dim: int, latent_dim: int, codebook_size: int, hidden: int,
                 depth: int, n_train: int, n_eval: int, data_seed: int) -> None:
        super().__init__(data_dim, latent_dim, codebook_size, hidden, depth, n_train, n_eval, data_seed)
        if not 1 <= intrinsic_dim:
            raise ValueError("intrinsic_dim must be >= 1")
        self.intrinsic_dim = intrinsic_dim

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        train, weights = random_manifold(self.n_train, self.intrinsic_dim, self.data_dim, generator)
        test, _ = random_manifold(self.n_eval, self.intrinsic_dim, self.data_dim, generator, weights)
        validation, _ = random_manifold(self.n_eval, self.intrinsic_dim, self.data_dim, generator, weights)
        return train, test, validation
