"""Image reconstruction tasks: a VQGAN-style autoencoder around the quantizer, on real images.

Registered names (``kind="reconstruction"``, main metric ``psnr``, higher is better):

* ``digits``: scikit-learn's 8x8 handwritten digits (offline; the CPU default), f2 -> 4x4 tokens.
* ``patches``: 32x32 RGB patches of scikit-image's bundled photos (offline), f4 -> 8x8 tokens.
* ``cifar10``: CIFAR-10 32x32 from a local ``cifar-10-batches-py`` folder, f4 -> 8x8 tokens.
* ``imagefolder``: any folder of images (centre crops of ``size``), deterministic subsets.
* ``imagenet128`` / ``imagenet256``: ILSVRC-2012 centre crops, f8 -> 16x16 / 32x32 tokens
  (the setting of SimVQ, arXiv:2411.02038, with 1k-65k codes).

Model and objective: :mod:`vqbench.tasks.vqgan` (Esser et al., arXiv:2012.09841). Per training step
``L = L_rec + L_VQ [+ w_p LPIPS] [+ lambda w_adv L_G + L_D]`` with ``L_rec`` the mean squared
(``rec_loss="l2"``) or absolute (``"l1"``) error in [-1, 1] pixel space and ``L_VQ`` the quantizer's
own auxiliary loss (after each loss the batch's MSE and the ``C f^2`` data elements per token go to a quantizer
that listens: :func:`vqbench.tasks.base.report_reconstruction`). The generator and discriminator are updated
by the runner's one optimizer in one backward pass: the generator's adversarial term sees the discriminator with
detached parameters and the discriminator's hinge loss sees detached reconstructions, so each part gets only its
own gradient.

Evaluation over the whole eval split: psnr, ssim, mse (on [0, 1] images), lpips when its weights
are local, ``fid_inception`` or ``fd_<extractor>`` (:mod:`vqbench.image_metrics`), and every collapse
metric of :class:`vqbench.collapse.CollapseMetrics` on the code counts of all eval tokens over the method's real
codebook size (``quantizer.codebook_size``, reported as the metric ``codebook_size``), with the encoder
embeddings of every token and, as the data's own representation, the ``f x f x C`` pixel patch under each
token (streamed moments: the spectra are exact over the split). The same evaluation runs
on the validation split (what ``vqbench tune`` selects on): a fixed tenth of the training images
(``VALIDATION_FRACTION``, seed 0), held out from training since version 2 of every image task.

Data loading on CUDA: in-memory splits live on the GPU; file-backed splits are decoded by
``$VQBENCH_WORKERS`` DataLoader workers (default ``min(8, CPUs)`` on CUDA, 0 on CPU; loading workers
never change results, so they are not a task parameter). The model runs channels_last on CUDA.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.distributed import gather_rows, local_range
from vqbench.errors import UserError
from vqbench.image_metrics import ReconstructionMetrics, lpips_available, lpips_network
from vqbench.metrics import Evaluation
from vqbench.registry import register_task
from vqbench.tasks.base import Stage, Task, report_reconstruction
from vqbench.tasks.image_data import (
    DEFAULT_PHOTOS,
    BatchLoader,
    ImageFolderImages,
    ImageSource,
    TensorImages,
    hold_out,
    iterate,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_imagenet,
    load_patches,
    to_model,
    to_unit,
)
from vqbench.tasks.vqgan import Decoder as VQGANDecoder
from vqbench.tasks.vqgan import (
    PatchDiscriminator,
    VQAutoencoder,
    adaptive_weight,
    build_encoder,
    frozen_call,
    hinge_d_loss,
)

WORKERS_ENV = "VQBENCH_WORKERS"
#: at most this many token embeddings (and pixel patches) enter the collapse metrics per evaluation
MAX_EMBEDDING_ROWS = 8192
#: the fraction of the training images held out as the validation split (version 2 of every image task)
VALIDATION_FRACTION = 0.1
#: in-memory splits above this many bytes are not cached between runs of one process
CACHE_MAX_BYTES = 2 * 2**30

# Model / objective defaults shared by every image task (each task overrides some).
MODEL_DEFAULTS: dict[str, Any] = dict(
    latent_dim=64, codebook_size=1024, downsample=4, channels=64, channel_mult=None, num_res_blocks=2,
    attention=False, dropout=0.0, encoder="vqgan", encoder_weights=None, rec_loss="l2", lpips_weight=0.0,
    lpips_net="alex", adv_weight=0.0, disc_start=0, disc_channels=64, disc_layers=3, eval_batch_size=256,
    fd="auto", lpips="auto", feature_bank_size=16384)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers: ``$VQBENCH_WORKERS`` if set, else ``min(8, CPUs)`` on CUDA and 0 on CPU."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None:
        try:
            workers = int(value)
        except ValueError:
            raise UserError(f"${WORKERS_ENV} must be an integer, got {value!r}") from None
        return max(0, workers)
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


LOADERS = {"load_digits": load_digits, "load_patches": load_patches, "load_cifar10": load_cifar10}


@functools.lru_cache(maxsize=4)
def _cached(loader: str, args: tuple[tuple[str, Any], ...]) -> tuple[ImageSource, ImageSource]:
    return LOADERS[loader](**dict(args))


def cached_load(loader: str, **kwargs: Any) -> tuple[ImageSource, ImageSource]:
    """``loader(**kwargs)`` memoised within the process (many runs of one suite reuse the same split)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    train, test = _cached(loader, key)
    size = sum(s.images.numel() for s in (train, test) if isinstance(s, TensorImages))
    if size > CACHE_MAX_BYTES:
        _cached.cache_clear()
    return train, test


def token_patches(x: Tensor, f: int) -> Tensor:
    """Pixel patches under each token: images (N, C, H, W) -> (N, H/f, W/f, C f f)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).permute(0, 2, 4, 1, 3, 5).reshape(n, h // f, w // f, c * f * f)


class ImageReconstructionTask(Task):
    """Reconstruct images through encoder -> quantizer -> decoder; subclasses supply :meth:`load_data`.

    After ``setup``: ``train_data``/``eval_data`` (:class:`~vqbench.tasks.image_data.ImageSource`),
    ``channels``, ``image_size`` (H, W), ``token_grid`` (h, w). :meth:`build_model` gives the
    :class:`~vqbench.tasks.vqgan.VQAutoencoder` (with its discriminator when ``adv_weight > 0``),
    :meth:`reconstruction_stage` the training stage, :meth:`evaluate_model` one whole-split evaluation.
    """

    def __init__(self, latent_dim: int, codebook_size: int, downsample: int, channels: int,
                 channel_mult: list[int] | None, num_res_blocks: int, attention: bool, dropout: float,
                 encoder: str, encoder_weights: str | None, rec_loss: str, lpips_weight: float, lpips_net: str,
                 adv_weight: float, disc_start: int, disc_channels: int, disc_layers: int, eval_batch_size: int,
                 fd: bool | str, lpips: bool | str, feature_bank_size: int) -> None:
        if min(latent_dim, codebook_size, channels, eval_batch_size) < 1 or num_res_blocks < 0:
            raise UserError("latent_dim, codebook_size, channels and eval_batch_size must be >= 1")
        if rec_loss not in ("l1", "l2"):
            raise UserError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        if lpips_weight < 0 or adv_weight < 0 or disc_start < 0 or feature_bank_size < 0:
            raise UserError("lpips_weight, adv_weight, disc_start and feature_bank_size must be >= 0")
        self.latent_dim, self.codebook_size, self.downsample = latent_dim, codebook_size, downsample
        self.channels_base, self.channel_mult, self.num_res_blocks = channels, channel_mult, num_res_blocks
        self.attention, self.dropout, self.encoder, self.encoder_weights = attention, dropout, encoder, encoder_weights
        self.rec_loss, self.lpips_weight, self.lpips_net = rec_loss, lpips_weight, lpips_net
        self.adv_weight, self.disc_start = adv_weight, disc_start
        self.disc_channels, self.disc_layers = disc_channels, disc_layers
        self.eval_batch_size, self.fd, self.lpips = eval_batch_size, fd, lpips
        self.feature_bank_size = feature_bank_size
        self._metrics: ReconstructionMetrics | None = None
        self._lpips_net: nn.Module | None = None

    # -- data --------------------------------------------------------------------------------------
    def load_data(self) -> tuple[ImageSource, ImageSource]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, device: torch.device, seed: int) -> None:
        self.device, self.seed = torch.device(device), seed
        train_data, self.eval_data = self.load_data()
        # the validation split (tuning reads only this): a fixed tenth of the training images, the same for all
        self.train_data, self.validation_data = hold_out(train_data, VALIDATION_FRACTION, seed=0)
        self.channels, self.image_size = self.train_data.channels, self.train_data.size
        h, w = self.image_size
        if h % self.downsample or w % self.downsample:
            raise UserError(f"images of {h}x{w} are not divisible by downsample {self.downsample}")
        self.token_grid = (h // self.downsample, w // self.downsample)
        self.workers = loader_workers(self.device)
        self.channels_last = self.device.type == "cuda"
        if self.lpips_weight > 0 and not lpips_available(self.lpips_net):
            raise UserError(f"lpips_weight > 0 needs the LPIPS ({self.lpips_net}) backbone weights in the torch hub "
                            "cache (they are never downloaded at run time): fetch them once where there is internet "
                            "(e.g. torchvision.models.alexnet(weights='DEFAULT')) or set lpips_weight=0")
        if self.adv_weight > 0 and PatchDiscriminator.output_size(min(h, w), self.disc_layers) < 1:
            raise UserError(f"disc_layers={self.disc_layers} is too deep for {h}x{w} images: use fewer")

    # -- model -------------------------------------------------------------------------------------
    def build_model(self, quantizer: nn.Module) -> VQAutoencoder:
        encoder = build_encoder(self.encoder, self.channels, self.latent_dim, self.downsample, self.channels_base,
                                self.channel_mult, self.num_res_blocks, self.attention, self.dropout,
                                self.encoder_weights)
        decoder = VQGANDecoder(self.channels, self.latent_dim, self.downsample, self.channels_base, self.channel_mult,
                               self.num_res_blocks, self.attention, self.dropout)
        model = VQAutoencoder(encoder, quantizer, decoder)
        if self.adv_weight > 0:
            model.discriminator = PatchDiscriminator(self.channels, self.disc_channels, self.disc_layers)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def model_input(self, images: Tensor) -> Tensor:
        """uint8 images on the device -> model-space float input (channels_last on CUDA)."""
        x = to_model(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def perceptual(self, x_hat: Tensor, x: Tensor) -> Tensor:
        if self._lpips_net is None:
            self._lpips_net = lpips_network(self.lpips_net).to(self.device)
        if x.shape[1] == 1:
            x, x_hat = x.expand(-1, 3, -1, -1), x_hat.expand(-1, 3, -1, -1)
        return self._lpips_net(x_hat, x).mean()

    # -- training ----------------------------------------------------------------------------------
    def stages(self, quantizer: nn.Module, budget: Any) -> list[Stage]:
        return [self.reconstruction_stage(quantizer, budget)]

    def reconstruction_stage(self, quantizer: nn.Module, budget: Any, model: VQAutoencoder | None = None) -> Stage:
        model = model if model is not None else self.build_model(quantizer)
        loader = BatchLoader(self.train_data, budget.batch_size, self.seed, self.device, self.workers)

        def batch(step: int) -> tuple[Tensor, int]:
            return loader(step), step

        def loss(item: tuple[Tensor, int]) -> tuple[Tensor, dict[str, Tensor]]:
            images, step = item
            x = self.model_input(images)
            out = model(x)
            x_hat = out.x_hat.float()
            rec = F.mse_loss(x_hat, x) if self.rec_loss == "l2" else F.l1_loss(x_hat, x)
            mse = rec if self.rec_loss == "l2" else F.mse_loss(x_hat.detach(), x)
            report_reconstruction(model.quantizer, mse, self.channels * self.downsample ** 2)
            logs: dict[str, Tensor] = {"rec_loss": rec.detach(), "quant_loss": out.quant.loss.detach()}
            logs.update({f"q/{k}": v for k, v in out.quant.stats.items()})
            nll = rec
            if self.lpips_weight > 0:
                p_loss = self.perceptual(x_hat, x)
                logs["lpips_loss"] = p_loss.detach()
                nll = nll + self.lpips_weight * p_loss
            total = nll + out.quant.loss
            if self.adv_weight > 0 and step >= self.disc_start:
                disc = model.discriminator
                g_loss = -frozen_call(disc, out.x_hat).float().mean()
                weight = adaptive_weight(nll, g_loss, model.decoder.last_layer)
                d_loss = hinge_d_loss(disc(x).float(), disc(out.x_hat.detach()).float())
                total = total + self.adv_weight * weight * g_loss + d_loss
                logs.update({"g_loss": g_loss.detach(), "d_loss": d_loss.detach(), "adv_lambda": weight})
            return total, logs

        def evaluate() -> Evaluation:
            return self.evaluate_model(model)

        def validate() -> Evaluation:
            return self.evaluate_model(model, "validation")

        return Stage("autoencoder", model, batch, loss, evaluate, quantizer=quantizer,
                     items_per_batch=budget.batch_size, validate=validate)

    # -- evaluation --------------------------------------------------------------------------------
    def split_data(self, split: str) -> ImageSource:
        """The images of ``split``: ``train``, ``validation`` or ``eval``."""
        return {"train": self.train_data, "validation": self.validation_data, "eval": self.eval_data}[split]

    def eval_batches(self, batch_size: int | None = None, split: str = "eval",
                     part: tuple[int, int] | None = None) -> Iterator[Tensor]:
        """The whole ``split`` (default: eval) in order, uint8 ``(B, C, H, W)`` on the device (images
        ``part = (start, stop)`` of it only, when given)."""
        return iterate(self.split_data(split), batch_size or self.eval_batch_size, self.device, self.workers, part)

    def metrics(self) -> ReconstructionMetrics:
        if self._metrics is None:
            self._metrics = ReconstructionMetrics(self.device, self.image_size, lpips=self.lpips,
                                                  lpips_net=self.lpips_net, fd=self.fd)
        return self._metrics

    @torch.no_grad()
    def evaluate_model(self, model: VQAutoencoder, split: str = "eval") -> Evaluation:
        """Reconstruction quality and collapse metrics over the whole ``split`` (fp32, eval mode).

        The collapse metrics stream every token (:class:`vqbench.collapse.CollapseMetrics`: code counts and
        the moments of latents and pixel patches, so the spectra are the whole split's, exact); only
        ``embedding_clusters_frac`` uses a fixed regular subsample of token positions (at most
        ``MAX_EMBEDDING_ROWS``). In a data-parallel run each rank measures its contiguous part of the split and
        torchmetrics sums the states (CollapseMetrics' and the image metrics') across ranks; the sampled embeddings
        are gathered in rank order (the same rows as one process samples).
        """
        from vqbench.collapse import CollapseMetrics, split_evaluation

        quantizer = model.quantizer
        metrics = self.metrics()
        metrics.reset()
        h, w = self.token_grid
        width, patch = self.latent_dim, self.channels * self.downsample ** 2
        collapse = CollapseMetrics(quantizer.codebook_size, width, reference_dim=patch).to(self.device)
        total_tokens = len(self.split_data(split)) * h * w
        stride = max(1, math.ceil(total_tokens / MAX_EMBEDDING_ROWS))
        embeddings = []
        first_image, stop_image = local_range(len(self.split_data(split)))
        seen = first_image * h * w  # global index of this rank's first token
        for images in self.eval_batches(split=split, part=(first_image, stop_image)):
            x = self.model_input(images)
            out = model(x)
            metrics.update(to_unit(x), to_unit(out.x_hat))
            n_tok = images.shape[0] * h * w
            z = out.z.permute(0, 2, 3, 1).reshape(n_tok, -1).float()
            finite = bool(torch.isfinite(z).all())  # a diverged model's NaN latents leave the spectra NaN
            collapse.update(out.quant.indices, latents=z if finite else None,
                            reference=token_patches(x.float(), self.downsample).reshape(n_tok, -1))
            first = (-seen) % stride  # global token index seen + first is the next multiple of stride
            embeddings.append(z[torch.arange(first, n_tok, stride, device=self.device)].cpu())
            seen += n_tok
        codebook = quantizer.codebook()
        if codebook is not None:
            collapse.update(torch.zeros(0, dtype=torch.long, device=self.device), codebook=codebook.float())
        embeddings_all = gather_rows(torch.cat(embeddings) if embeddings else torch.zeros(0, width), width)
        ev = split_evaluation(collapse, embeddings_all)
        ev.metrics.update(metrics.compute())  # (torchmetrics sums its states over ranks first)
        ev.metrics["codebook_size"] = float(quantizer.codebook_size)  # the method's real K (FSQ, LFQ differ)
        return ev

    # -- VQGAN-LC style initialisation ---------------------------------------------------------------
    @torch.no_grad()
    def feature_bank(self) -> Tensor | None:
        """Features of training images at token positions from a pretrained extractor, for methods that
        initialise their codes from them (VQGAN-LC, arXiv:2406.11837, clusters pretrained CLIP features).

        Only with a timm encoder (``encoder="timm:<model>"``) whose pretrained weights are on disk
        (``encoder_weights``): that backbone's features at the token grid (``F`` = its channels). Otherwise
        None (no extractor: a method then builds its bank from the task's own encoder, see ``vq-lc``). At most
        ``feature_bank_size`` rows, from a fixed random set of training images (generator seeded 0: the same
        for every method and seed).
        """
        if self.feature_bank_size == 0 or not (self.encoder.startswith("timm:") and self.encoder_weights):
            return None
        h, w = self.token_grid
        n_images = min(len(self.train_data), math.ceil(self.feature_bank_size / (h * w)))
        order = torch.randperm(len(self.train_data), generator=torch.Generator().manual_seed(0))[:n_images]
        backbone = build_encoder(self.encoder, self.channels, self.latent_dim, self.downsample,
                                 self.channels_base, self.channel_mult, self.num_res_blocks, self.attention,
                                 weights=self.encoder_weights).to(self.device).eval()
        rows = []
        for start in range(0, n_images, self.eval_batch_size):
            idx = order[start:start + self.eval_batch_size]
            if isinstance(self.train_data, TensorImages):
                images = self.train_data.batch(idx)
            else:
                images = torch.stack([self.train_data[int(i)] for i in idx])
            x = to_model(images.to(self.device))
            rows.append(backbone.features(x).permute(0, 2, 3, 1).reshape(-1, backbone.feature_channels).cpu())
        return torch.cat(rows)[:self.feature_bank_size].float()


# -- registered tasks ------------------------------------------------------------------------------
DIGITS_MODEL = dict(MODEL_DEFAULTS, latent_dim=16, codebook_size=256, downsample=2, channels=32, num_res_blocks=1,
                    eval_batch_size=512)
DIGITS_BUDGETS = {
    # quick: ~10 s on one CPU core, so that `vqbench quick` (every method) fits in minutes
    "quick": {"steps": 400, "batch_size": 64, "lr": 2e-3, "eval_interval": 200},
    # standard (the published board): from 3,000-step curves, PSNR plateaus by step ~1,250 and then falls slowly
    # (vq 25.3 dB at 1,250-1,750, 25.0 at 3,000: the model overfits 1,500 images); 2,000 steps with the cosine
    # decay ends on the plateau
    "standard": {"steps": 2000, "batch_size": 64, "lr": 2e-3, "eval_interval": 250},
    "paper": {"steps": 20000, "batch_size": 256, "lr": 1e-3, "eval_interval": 2000, "warmup_steps": 500},
}


@register_task("digits", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True, offline=True,
               description="Reconstruct scikit-learn's 8x8 handwritten digits through a VQGAN-style conv autoencoder",
               budgets=DIGITS_BUDGETS, n_eval=297, split_seed=0, **DIGITS_MODEL)
class DigitsTask(ImageReconstructionTask):
    """scikit-learn digits (1797 images, 8x8 grey): ``n_eval`` fixed random images for eval, the rest train."""

    def __init__(self, n_eval: int, split_seed: int, **model: Any) -> None:
        super().__init__(**model)
        self.n_eval, self.split_seed = n_eval, split_seed

    def load_data(self) -> tuple[ImageSource, ImageSource]:
        return cached_load("load_digits", n_eval=self.n_eval, split_seed=self.split_seed)


PATCHES_MODEL = dict(MODEL_DEFAULTS, latent_dim=16, codebook_size=512, downsample=4, channels=16,
                     channel_mult=[1, 2, 2], num_res_blocks=1)
PATCHES_BUDGETS = {
    # quick: ~15 s on one CPU core, so that `vqbench quick` (every method) fits in minutes
    "quick": {"steps": 200, "batch_size": 32, "lr": 2e-3, "eval_interval": 100},
    # standard (the published board), CAPPED: a 1,600-step vq curve still rises over its last quarter (26.9 to 27.6 dB,
    # +2.6%); convergence would need several thousand steps, more than the standard suite's working day on 2 CPU
    # cores allows (about 8 min a run here). Runs at this budget are flagged "not converged" where they still move.
    "standard": {"steps": 2000, "batch_size": 32, "lr": 2e-3, "eval_interval": 250},
    "paper": {"steps": 50000, "batch_size": 128, "lr": 4e-4, "eval_interval": 5000, "warmup_steps": 1000},
}


@register_task("patches", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True, offline=True,
               description="Reconstruct RGB patches of scikit-image's bundled photographs (VQGAN-style autoencoder)",
               budgets=PATCHES_BUDGETS, photos=list(DEFAULT_PHOTOS), patch_size=32, train_stride=16,
               eval_stride=16, eval_fraction=0.2, **PATCHES_MODEL)
class PatchesTask(ImageReconstructionTask):
    """Natural-image patches: train from the left ``1 - eval_fraction`` of each photo, eval from the right."""

    def __init__(self, photos: list[str], patch_size: int, train_stride: int, eval_stride: int,
                 eval_fraction: float, **model: Any) -> None:
        super().__init__(**model)
        if isinstance(photos, str):
            photos = [photos]
        self.photos, self.patch_size = list(photos), patch_size
        self.train_stride, self.eval_stride, self.eval_fraction = train_stride, eval_stride, eval_fraction

    def load_data(self) -> tuple[ImageSource, ImageSource]:
        return cached_load("load_patches", photos=self.photos, patch_size=self.patch_size,
                           train_stride=self.train_stride, eval_stride=self.eval_stride,
                           eval_fraction=self.eval_fraction)


CIFAR_MODEL = dict(MODEL_DEFAULTS, latent_dim=64, codebook_size=1024, downsample=4, channels=128, num_res_blocks=2)
CIFAR_BUDGETS = {
    "quick": {"steps": 500, "batch_size": 64, "lr": 1e-3, "eval_interval": 250},
    "paper": {"steps": 100000, "batch_size": 128, "lr": 2e-4, "eval_interval": 10000, "warmup_steps": 2000},
}


@register_task("cifar10", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True, offline=False,
               description="Reconstruct CIFAR-10 32x32 (f4, 8x8 tokens) from a local cifar-10-batches-py folder",
               budgets=CIFAR_BUDGETS, data_root=None, download=False, n_train=None, n_eval=None, subset_seed=0,
               **CIFAR_MODEL)
class Cifar10Task(ImageReconstructionTask):
    """CIFAR-10: the 50000 training images to train, the 10000 test images to evaluate (subsets optional)."""

    def __init__(self, data_root: str | None, download: bool, n_train: int | None, n_eval: int | None,
                 subset_seed: int, **model: Any) -> None:
        super().__init__(**model)
        self.data_root, self.download, self.n_train, self.n_eval = data_root, download, n_train, n_eval
        self.subset_seed = subset_seed

    def load_data(self) -> tuple[ImageSource, ImageSource]:
        return cached_load("load_cifar10", data_root=self.data_root, download=self.download, n_train=self.n_train,
                           n_eval=self.n_eval, subset_seed=self.subset_seed)


class FolderTask(ImageReconstructionTask):
    """Images of a folder as ``size`` centre crops; small enough subsets are decoded once into memory."""

    preload_max_bytes = 2 * 2**30

    def __init__(self, data_root: str | None, size: int, max_train: int | None, max_eval: int | None,
                 subset_seed: int, **model: Any) -> None:
        super().__init__(**model)
        self.data_root, self.size, self.max_train, self.max_eval = data_root, size, max_train, max_eval
        self.subset_seed = subset_seed

    def files(self) -> tuple[ImageFolderImages, ImageFolderImages]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_data(self) -> tuple[ImageSource, ImageSource]:
        train, test = self.files()
        workers = loader_workers(self.device)
        return tuple(s.materialize(workers) if len(s) * 3 * self.size ** 2 <= self.preload_max_bytes else s
                     for s in (train, test))  # type: ignore[return-value]


@register_task("imagefolder", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True,
               offline=False, description="Reconstruct centre crops of any folder of images (VQGAN-style autoencoder)",
               budgets=CIFAR_BUDGETS, data_root=None, size=64, max_train=None, max_eval=None, subset_seed=0,
               eval_fraction=0.1, **dict(CIFAR_MODEL, downsample=8, eval_batch_size=64))
class ImageFolderTask(FolderTask):
    """Any folder: ``train/`` + ``val/`` sub-folders, or a stable hash split with ``eval_fraction``."""

    def __init__(self, eval_fraction: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eval_fraction = eval_fraction

    def files(self) -> tuple[ImageFolderImages, ImageFolderImages]:
        return load_image_folder(self.data_root, self.size, self.max_train, self.max_eval, self.subset_seed,
                                 self.eval_fraction)


IMAGENET_MODEL = dict(MODEL_DEFAULTS, latent_dim=64, codebook_size=8192, downsample=8, channels=128,
                      channel_mult=[1, 1, 2, 4], num_res_blocks=2, eval_batch_size=64)
IMAGENET_BUDGETS = {
    "quick": {"steps": 200, "batch_size": 16, "lr": 1e-3, "eval_interval": 100},
    "paper": {"steps": 200000, "batch_size": 64, "lr": 2e-4, "eval_interval": 20000, "warmup_steps": 5000},
}


class ImageNetTask(FolderTask):
    """ILSVRC-2012 ``train``/``val`` centre crops (``$VQBENCH_DATA/imagenet`` or ``data_root``)."""

    def files(self) -> tuple[ImageFolderImages, ImageFolderImages]:
        return load_imagenet(self.data_root, self.size, self.max_train, self.max_eval, self.subset_seed)


register_task("imagenet128", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True,
              offline=False, description="Reconstruct ImageNet 128x128 centre crops (f8, 16x16 tokens; SimVQ setting)",
              budgets=IMAGENET_BUDGETS, data_root=None, size=128, max_train=None, max_eval=None, subset_seed=0,
              **IMAGENET_MODEL)(ImageNetTask)
register_task("imagenet256", version=2, kind="reconstruction", main_metric="psnr", higher_is_better=True,
              offline=False, description="Reconstruct ImageNet 256x256 centre crops (f16, 16x16 tokens)",
              budgets=IMAGENET_BUDGETS, data_root=None, size=256, max_train=None, max_eval=None, subset_seed=0,
              **dict(IMAGENET_MODEL, downsample=16, channel_mult=[1, 1, 2, 2, 4]))(ImageNetTask)
