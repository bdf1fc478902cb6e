"""Image-quality metrics over a whole eval split: torchmetrics PSNR, SSIM, LPIPS and Frechet distances.

Inputs are float images in ``[0, 1]``, ``(N, C, H, W)`` with C = 1 or 3 (grey images are repeated to
3 channels for the network-based metrics). Nothing here downloads weights; a metric that needs
weights which are not on disk is either computed by a documented substitute *under its own name*
or not logged at all:

* ``psnr``: torchmetrics PeakSignalNoiseRatio, ``10 log10(1 / MSE_i)`` per image (data range 1),
  averaged over the split. ``mse``: torchmetrics MeanSquaredError over every pixel of the split.
* ``ssim``: torchmetrics StructuralSimilarityIndexMeasure (Wang et al. 2004), Gaussian window 11,
  sigma 1.5, averaged over images. Images smaller than 11 px use the largest odd window that fits,
  ``k``, with ``sigma = 1.5 k / 11`` (fixed per task, since a task's images all have one size).
* ``lpips``: torchmetrics LearnedPerceptualImagePatchSimilarity (Zhang et al., arXiv:1801.03924),
  AlexNet by default. Logged only when the torchvision backbone weights are already in the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``; the linear heads ship with torchmetrics) and the images are
  large enough for the backbone (:data:`LPIPS_MIN_SIZE`); otherwise absent, never replaced.
* Frechet distance (Heusel et al., arXiv:1706.08500) with torchmetrics FrechetInceptionDistance
  over features of :class:`ImageFeatures`:
  ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})``. Named ``fid_inception`` only with the
  standard FID Inception weights (torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``, found at
  ``$VQBENCH_INCEPTION_WEIGHTS`` or in the torch hub cache, and torch-fidelity installed); else
  ``fd_<extractor>``:

  - ``fd_<timm model>``: a timm model's pooled features with local weights given by
    ``$VQBENCH_FD_MODEL`` (model name) and ``$VQBENCH_FD_WEIGHTS`` (checkpoint file);
  - ``fd_randcnn``: the fallback that always exists: a fixed randomly initialised conv net
    (:class:`RandomConvFeatures`, seed 0; random-network embeddings are a usable feature space for
    fidelity/diversity metrics, Naeem et al., arXiv:2002.09797, sec. 5). Its values are comparable
    only with other ``fd_randcnn`` values, never with FID.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.errors import UserError

INCEPTION_WEIGHTS_ENV = "VQBENCH_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception (2048-d pool3)
FD_MODEL_ENV, FD_WEIGHTS_ENV = "VQBENCH_FD_MODEL", "VQBENCH_FD_WEIGHTS"
#: torchvision backbone weight files the LPIPS nets load (from torchvision's weight enums)
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                        "squeeze": "squeezenet1_1-b8a52dc0.pth"}
#: smallest image side each LPIPS backbone accepts
LPIPS_MIN_SIZE = {"alex": 32, "vgg": 16, "squeeze": 24}


def _hub_checkpoint(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def to_rgb(x: Tensor) -> Tensor:
    """Repeat a single channel to three; leave RGB as is."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    return x


# -- feature extractors for Frechet distances -----------------------------------------------------
def inception_weights() -> Path | None:
    """The FID Inception weights file if usable offline, else None.

    ``$VQBENCH_INCEPTION_WEIGHTS`` (must exist when set), else torch-fidelity's file in the torch hub
    cache. Requires torch-fidelity (torchmetrics' Inception wrapper is built on it).
    """
    explicit = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"${INCEPTION_WEIGHTS_ENV}={explicit} does not exist: point it at torch-fidelity's "
                            f"{INCEPTION_WEIGHTS_FILE} or unset it (FD then uses a fallback extractor, fd_*)")
    else:
        path = _hub_checkpoint(INCEPTION_WEIGHTS_FILE)
        if not path.is_file():
            return None
    if importlib.util.find_spec("torch_fidelity") is None:
        return None
    return path


def resolve_extractor() -> str:
    """Which feature extractor Frechet distances use here: ``inception``, a timm model name, or ``randcnn``."""
    if inception_weights() is not None:
        return "inception"
    model = os.environ.get(FD_MODEL_ENV)
    if model:
        weights = os.environ.get(FD_WEIGHTS_ENV)
        if not weights or not Path(weights).expanduser().is_file():
            raise UserError(f"${FD_MODEL_ENV}={model} needs ${FD_WEIGHTS_ENV} pointing at a local checkpoint of "
                            f"that timm model (got {weights!r})")
        return model
    return "randcnn"


def fd_metric_name(extractor: str, prefix: str = "") -> str:
    """``<prefix>fid_inception`` for the standard Inception, else ``<prefix>fd_<extractor>`` (sanitised)."""
    if extractor == "inception":
        return f"{prefix}fid_inception"
    return f"{prefix}fd_{re.sub(r'[^0-9a-zA-Z]+', '_', extractor).strip('_').lower()}"


class RandomConvFeatures(nn.Module):
    """The ``randcnn`` extractor: a fixed random conv net, 256 features per image.

    Input resized to 32x32 (bilinear, antialiased), scaled to [-1, 1]; layers
    ``conv3x3(3->32) ReLU, [conv4x4 stride 2 ReLU] x 3 (32->64->128->256)``, global average pool.
    Weights ``N(0, 2 / fan_in)`` (He), biases 0, drawn from ``torch.Generator().manual_seed(0)`` on the
    CPU, so every machine with the same torch gets the same network.
    """

    num_features = 256

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        specs = [(3, 32, 3, 1, 1), (32, 64, 4, 2, 1), (64, 128, 4, 2, 1), (128, 256, 4, 2, 1)]
        self.convs = nn.ModuleList()
        for c_in, c_out, k, stride, pad in specs:
            conv = nn.Conv2d(c_in, c_out, k, stride, pad)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c_in * k * k)) ** 0.5)
                conv.bias.zero_()
            conv.requires_grad_(False)
            self.convs.append(conv)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(to_rgb(x).float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        h = h * 2.0 - 1.0
        for conv in self.convs:
            h = F.relu(conv(h))
        return h.mean(dim=(2, 3))


class _InceptionFeatures(nn.Module):
    """torchmetrics' NoTrainInceptionV3 (torch-fidelity's FID Inception) on uint8 ``round(255 x)``: 2048-d pool3."""

    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((to_rgb(x).float() * 255.0).round().clamp(0, 255).to(torch.uint8)).reshape(x.shape[0], -1)


class _TimmFeatures(nn.Module):
    """A timm model's pooled features (``num_classes=0``) with weights from a local file."""

    def __init__(self, model: str, weights: str) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(model, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay={"file": str(Path(weights).expanduser())})
        self.net.eval().requires_grad_(False)
        cfg = self.net.pretrained_cfg
        self.input_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
                             persistent=False)
        self.num_features = int(self.net.num_features)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(to_rgb(x).float(), size=self.input_size, mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
        return self.net((h - self.mean) / self.std)


class ImageFeatures(nn.Module):
    """Features for Frechet distances and precision/recall: ``forward(x in [0,1] (N,1|3,H,W)) -> (N, F)``.

    ``extractor``: ``"inception"``, a timm model name (weights from ``$VQBENCH_FD_WEIGHTS``),
    ``"randcnn"``, or None for :func:`resolve_extractor`. ``name`` and :meth:`metric_name` say which.
    ``net``: a ready feature network instead (a module mapping such images to ``(N, F)``, with an int
    ``num_features``; e.g. a task's trained classifier), named ``extractor``, which must then be given.
    """

    def __init__(self, extractor: str | None = None, device: torch.device | str = "cpu",
                 net: nn.Module | None = None) -> None:
        super().__init__()
        if net is not None and not extractor:
            raise ValueError("a custom feature network needs an extractor name")
        self.name = extractor or resolve_extractor()
        if net is not None:
            self.net: nn.Module = net
        elif self.name == "inception":
            weights = inception_weights()
            if weights is None:
                raise UserError(f"the FID Inception needs torch-fidelity and {INCEPTION_WEIGHTS_FILE} (set "
                                f"${INCEPTION_WEIGHTS_ENV} or put it in {_hub_checkpoint('')})")
            self.net = _InceptionFeatures(weights)
        elif self.name == "randcnn":
            self.net = RandomConvFeatures()
        else:
            weights = os.environ.get(FD_WEIGHTS_ENV)
            if not weights or not Path(weights).expanduser().is_file():
                raise UserError(f"timm feature extractor {self.name!r} needs ${FD_WEIGHTS_ENV} = a local checkpoint")
            self.net = _TimmFeatures(self.name, weights)
        self.num_features = int(self.net.num_features)
        self.eval().requires_grad_(False)
        self.to(device)

    def train(self, mode: bool = True) -> ImageFeatures:
        return super().train(False)  # a fixed extractor: never in training mode

    def metric_name(self, prefix: str = "") -> str:
        return fd_metric_name(self.name, prefix)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).float()


class FrechetDistance:
    """torchmetrics FrechetInceptionDistance over :class:`ImageFeatures`; real statistics survive ``reset()``.

    ``update(x01, real)`` adds a batch of real or generated images; ``compute()`` the distance;
    ``name`` the metric name (``fid_inception`` or ``fd_<extractor>``, with ``prefix``).
    """

    def __init__(self, features: ImageFeatures, prefix: str = "") -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.features, self.name = features, features.metric_name(prefix)
        device = next(itertools.chain(features.parameters(), features.buffers())).device
        self.metric = FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False)
        self.metric.to(device)
        self.real_done = False

    @torch.no_grad()
    def update(self, x01: Tensor, real: bool) -> None:
        self.metric.update(x01.float(), real=real)

    def finish_real(self) -> None:
        """Mark the real statistics complete: later passes only add generated images."""
        self.real_done = True

    def compute(self) -> float:
        return float(self.metric.compute())

    def reset(self) -> None:
        """Forget generated images (real statistics are kept)."""
        self.metric.reset()


# -- LPIPS -----------------------------------------------------------------------------------------
def lpips_available(net: str = "alex") -> bool:
    """True when the LPIPS backbone weights for ``net`` are in the torch hub cache (no download needed)."""
    if net not in LPIPS_BACKBONE_FILES:
        raise UserError(f"unknown LPIPS net {net!r}: use one of {', '.join(LPIPS_BACKBONE_FILES)}")
    return _hub_checkpoint(LPIPS_BACKBONE_FILES[net]).is_file()


def lpips_metric(net: str = "alex"):
    """torchmetrics LPIPS (inputs in [0, 1]); a UserError when its weights are not local."""
    if not lpips_available(net):
        raise UserError(f"LPIPS ({net}) needs torchvision's {LPIPS_BACKBONE_FILES[net]} in "
                        f"{_hub_checkpoint('')} (download it once where there is internet, or set TORCH_HOME)")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)


def lpips_network(net: str = "alex") -> nn.Module:
    """The frozen LPIPS network as a loss: ``module(a, b) -> (N, 1, 1, 1)`` for images in [-1, 1]."""
    return lpips_metric(net).net


# -- the reconstruction metrics of one eval pass ---------------------------------------------------
def ssim_window(height: int, width: int) -> tuple[int, float]:
    """SSIM Gaussian window: (11, 1.5), or the largest odd ``k`` that fits with ``sigma = 1.5 k / 11``."""
    k = min(11, min(height, width))
    k -= 1 - k % 2
    if k < 3:
        raise UserError(f"images of {height}x{width} are too small for SSIM (need >= 3 px)")
    return k, 1.5 * k / 11.0


class ReconstructionMetrics:
    """PSNR, SSIM, MSE, (LPIPS), (Frechet distance) of reconstructions over a whole split.

    ``lpips``: ``"auto"`` (log it when available and the images are large enough), True (required:
    UserError when unavailable) or False. ``fd``: ``"auto"``/True (with :func:`resolve_extractor`),
    an extractor name, an :class:`ImageFeatures`, or False. Call ``update(real01, fake01)`` for every
    batch of the split, then ``compute()``; ``reset()`` between evaluations (the real images' FD
    statistics are computed once and kept).
    """

    def __init__(self, device: torch.device | str, image_size: tuple[int, int], *, lpips: bool | str = "auto",
                 lpips_net: str = "alex", fd: bool | str | ImageFeatures = "auto") -> None:
        from torchmetrics import MeanSquaredError
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.device = torch.device(device)
        kernel, sigma = ssim_window(*image_size)
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean").to(self.device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=kernel, sigma=sigma).to(self.device)
        self.mse = MeanSquaredError().to(self.device)
        self.lpips = None
        big_enough = min(image_size) >= LPIPS_MIN_SIZE.get(lpips_net, 10**9)
        if lpips is True:
            if not big_enough:
                raise UserError(f"LPIPS ({lpips_net}) needs images of at least {LPIPS_MIN_SIZE[lpips_net]} px, "
                                f"these are {image_size}")
            self.lpips = lpips_metric(lpips_net).to(self.device)
        elif lpips == "auto" and big_enough and lpips_available(lpips_net):
            self.lpips = lpips_metric(lpips_net).to(self.device)
        self.fd: FrechetDistance | None = None
        if isinstance(fd, ImageFeatures):
            self.fd = FrechetDistance(fd)
        elif fd not in (False, None, "none", "off"):
            self.fd = FrechetDistance(ImageFeatures(None if fd in (True, "auto") else str(fd), self.device))

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor) -> None:
        real, fake = real.float().clamp(0, 1), fake.float().clamp(0, 1)
        self.psnr.update(fake, real)
        self.ssim.update(fake, real)
        self.mse.update(fake.reshape(-1), real.reshape(-1))
        if self.lpips is not None:
            self.lpips.update(to_rgb(fake), to_rgb(real))
        if self.fd is not None:
            if not self.fd.real_done:
                self.fd.update(real, real=True)
            self.fd.update(fake, real=False)

    def compute(self) -> dict[str, float]:
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute()),
               "mse": float(self.mse.compute())}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        if self.fd is not None:
            self.fd.finish_real()
            out[self.fd.name] = self.fd.compute()
        return out

    def reset(self) -> None:
        for metric in (self.psnr, self.ssim, self.mse, self.lpips):
            if metric is not None:
                metric.reset()
        if self.fd is not None:
            self.fd.reset()
