"""VQGAN-style convolutional autoencoder around a vector quantizer, plus the VQGAN adversarial pieces.

Esser, Rombach & Ommer, "Taming Transformers for High-Resolution Image Synthesis", arXiv:2012.09841.
Architecture as the paper's reference code (the VQ-VAE-2 / DDPM-style conv net): the encoder is
``conv_in``, then per resolution level ``num_res_blocks`` residual blocks
``h + Conv(SiLU(GN(Conv(SiLU(GN(h))))))`` and a stride-2 downsampling conv (except at the last level),
a middle ``Res, [Attn], Res``, and ``GN, SiLU, conv_out`` to ``latent_dim`` channels; the decoder
mirrors it with nearest-neighbour x2 upsampling + conv. ``downsample = 2^(levels - 1)``; the level
widths are ``channels * channel_mult[i]``. Capacity (``channels``, ``num_res_blocks``,
``latent_dim``) is the knob for embeddings collapse on real images.

Training objective of the full VQGAN recipe (sec. 3.1, eq. 4-7), all optional beyond reconstruction:

    L = L_rec(x, x_hat) + w_p * LPIPS(x, x_hat) + L_VQ + lambda * w_adv * L_G,
    L_G = -E[D(x_hat)],  L_D = 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])        (hinge)
    lambda = ||grad_{W_L} L_rec'|| / (||grad_{W_L} L_G|| + 1e-4)  clipped to [0, 1e4]  (eq. 7)

where ``W_L`` is the decoder's last layer and ``L_rec'`` the reconstruction (+ perceptual) loss.
``D`` is the pix2pix PatchGAN (:class:`PatchDiscriminator`), switched on after ``disc_start`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqbench.errors import UserError

#: default width multipliers per resolution level; f16 gives (1, 1, 2, 2, 4) as the VQGAN f16 config
DEFAULT_CHANNEL_MULT = (1, 1, 2, 2, 4, 4, 8)


def num_levels(downsample: int) -> int:
    """Resolution levels for a power-of-two ``downsample`` factor: ``log2(downsample) + 1``."""
    if downsample < 1 or downsample & (downsample - 1):
        raise UserError(f"downsample must be a power of two (1, 2, 4, 8, 16 ...), got {downsample}")
    return int(math.log2(downsample)) + 1


def channel_multipliers(downsample: int, channel_mult: Sequence[int] | None) -> tuple[int, ...]:
    levels = num_levels(downsample)
    if channel_mult is None:
        if levels > len(DEFAULT_CHANNEL_MULT):
            raise UserError(f"give channel_mult explicitly for downsample {downsample}")
        return DEFAULT_CHANNEL_MULT[:levels]
    mult = tuple(int(m) for m in channel_mult)
    if len(mult) != levels or min(mult) < 1:
        raise UserError(f"channel_mult must have {levels} positive entries for downsample {downsample} "
                        f"(one per resolution level), got {list(mult)}")
    return mult


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (VQGAN uses 32; fewer when ``channels`` is small or not divisible)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """``skip(x) + Conv(Dropout(SiLU(GN(Conv(SiLU(GN(x)))))))``; ``skip`` is a 1x1 conv when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions: ``x + proj(softmax(q k^T / sqrt(c)) v)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)  # (n, hw, c)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with the reference code's asymmetric (0, 1, 0, 1) padding: H -> H / 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: H -> 2 H."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def checked_multipliers(downsample: int, channel_mult: Sequence[int] | None, channels: int, latent_dim: int,
                        num_res_blocks: int) -> tuple[int, ...]:
    """:func:`channel_multipliers`, after which the widths and depth an :class:`Encoder` / :class:`Decoder` gets are
    checked (a :class:`UserError` saying what is allowed)."""
    mult = channel_multipliers(downsample, channel_mult)
    if channels < 1 or latent_dim < 1 or num_res_blocks < 0:
        raise UserError("channels and latent_dim must be >= 1 and num_res_blocks >= 0")
    return mult


def middle_block(width: int, attention: bool, dropout: float) -> nn.Sequential:
    """The lowest-resolution block of :class:`Encoder` and :class:`Decoder`: ResnetBlock, [AttnBlock,] ResnetBlock."""
    mid: list[nn.Module] = [ResnetBlock(width, width, dropout)]
    if attention:
        mid.append(AttnBlock(width))
    mid.append(ResnetBlock(width, width, dropout))
    return nn.Sequential(*mid)


class Encoder(nn.Module):
    """Images ``(N, in_channels, H, W)`` -> latents ``(N, latent_dim, H / f, W / f)``, ``f = downsample``."""

    def __init__(self, in_channels: int, latent_dim: int, downsample: int = 4, channels: int = 64,
                 channel_mult: Sequence[int] | None = None, num_res_blocks: int = 2, attention: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        mult = checked_multipliers(downsample, channel_mult, channels, latent_dim, num_res_blocks)
        self.downsample, self.latent_dim = downsample, latent_dim
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        width = channels
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, channels * m, dropout))
                width = channels * m
                if attention and level == len(mult) - 1:
                    blocks.append(AttnBlock(width))
            if level != len(mult) - 1:
                blocks.append(Downsample(width))
        self.down, self.mid = nn.Sequential(*blocks), middle_block(width, attention, dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, latent_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents ``(N, latent_dim, h, w)`` -> images ``(N, out_channels, h f, w f)``; mirror of :class:`Encoder`."""

    def __init__(self, out_channels: int, latent_dim: int, downsample: int = 4, channels: int = 64,
                 channel_mult: Sequence[int] | None = None, num_res_blocks: int = 2, attention: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        mult = checked_multipliers(downsample, channel_mult, channels, latent_dim, num_res_blocks)
        width = channels * mult[-1]
        self.conv_in = nn.Conv2d(latent_dim, width, 3, padding=1)
        mid = middle_block(width, attention, dropout)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(mult))):
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, channels * mult[level], dropout))
                width = channels * mult[level]
                if attention and level == len(mult) - 1:
                    blocks.append(AttnBlock(width))
            if level != 0:
                blocks.append(Upsample(width))
        self.mid, self.up = mid, nn.Sequential(*blocks)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> Tensor:
        """The weight the adaptive GAN weight (VQGAN eq. 7) takes gradients with respect to."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class TimmEncoder(nn.Module):
    """A timm backbone (``features_only``) as encoder: the stage whose stride is ``downsample``, then 1x1 conv.

    Pretrained weights come only from a local file ``weights`` (timm's ``pretrained_cfg_overlay=
    {"file": ...}``); nothing is downloaded. Inputs in [-1, 1] are mapped to the backbone's expected
    normalisation ``(x01 - mean) / std`` of its pretrained config.
    """

    def __init__(self, model_name: str, in_channels: int, latent_dim: int, downsample: int,
                 weights: str | None = None) -> None:
        super().__init__()
        import timm

        if weights is not None and not Path(weights).expanduser().is_file():
            raise UserError(f"encoder weights file {weights} does not exist: pass a local timm checkpoint "
                            "(weights are never downloaded)")
        try:
            probe = timm.create_model(model_name, features_only=True, pretrained=False, in_chans=in_channels)
        except RuntimeError as exc:  # unknown model
            raise UserError(f"timm encoder {model_name!r}: {exc}") from None
        reductions = probe.feature_info.reduction()
        if downsample not in reductions:
            raise UserError(f"timm model {model_name!r} has feature strides {reductions}; "
                            f"downsample {downsample} is not one of them")
        index = reductions.index(downsample)
        kwargs: dict[str, Any] = {"features_only": True, "out_indices": (index,), "in_chans": in_channels}
        if weights is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(Path(weights).expanduser())})
        self.backbone = timm.create_model(model_name, **kwargs)
        self.model_name, self.downsample, self.latent_dim = model_name, downsample, latent_dim
        self.feature_channels = int(self.backbone.feature_info.channels()[-1])
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        mean = list(cfg.get("mean", (0.5,) * 3))
        std = list(cfg.get("std", (0.5,) * 3))
        if len(mean) != in_channels:
            mean, std = [sum(mean) / len(mean)] * in_channels, [sum(std) / len(std)] * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.proj = nn.Conv2d(self.feature_channels, latent_dim, 1)

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(N, feature_channels, H / f, W / f)`` of images ``x`` in [-1, 1]."""
        x01 = (x + 1.0) / 2.0
        return self.backbone((x01 - self.mean) / self.std)[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.features(x))


def build_encoder(encoder: str, in_channels: int, latent_dim: int, downsample: int, channels: int,
                  channel_mult: Sequence[int] | None, num_res_blocks: int, attention: bool, dropout: float = 0.0,
                  weights: str | None = None) -> nn.Module:
    """``"vqgan"`` -> :class:`Encoder`; ``"timm:<model>"`` -> :class:`TimmEncoder` (``weights``: local file)."""
    if encoder == "vqgan":
        if weights is not None:
            raise UserError("encoder_weights is for timm encoders (encoder='timm:<model>')")
        return Encoder(in_channels, latent_dim, downsample, channels, channel_mult, num_res_blocks, attention,
                       dropout)
    if encoder.startswith("timm:") and len(encoder) > 5:
        return TimmEncoder(encoder[5:], in_channels, latent_dim, downsample, weights)
    raise UserError(f"unknown encoder {encoder!r}: use 'vqgan' or 'timm:<model name>' (e.g. timm:resnet18)")


@dataclass
class AutoencoderOutput:
    x_hat: Tensor  # (N, C, H, W) reconstruction in model space
    z: Tensor  # (N, latent_dim, h, w) encoder output
    quant: Any  # the quantizer's QuantizeOutput (z_q channel-last, indices (N, h, w), loss, stats)


class VQAutoencoder(nn.Module):
    """``x -> encoder -> quantizer (channel-last) -> decoder -> x_hat``; the quantizer sees NHWC latents."""

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def quantize(self, z: Tensor) -> tuple[Tensor, Any]:
        """NCHW latents -> (NCHW quantized latents, the quantizer's output on the NHWC view)."""
        out = self.quantizer(z.permute(0, 2, 3, 1))
        return out.z_q.permute(0, 3, 1, 2), out

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q)

    def forward(self, x: Tensor) -> AutoencoderOutput:
        z = self.encode(x)
        z_q, out = self.quantize(z)
        return AutoencoderOutput(self.decode(z_q), z, out)

    @torch.no_grad()
    def tokens(self, x: Tensor) -> Tensor:
        """Code ids ``(N, h, w)`` of images ``x`` (model space, [-1, 1])."""
        return self.quantize(self.encode(x))[1].indices

    def decode_tokens(self, indices: Tensor) -> Tensor:
        """Images from code ids ``(N, h, w)`` via ``quantizer.decode_indices`` (NHWC -> NCHW)."""
        codes = self.quantizer.decode_indices(indices)
        return self.decode(codes.permute(0, 3, 1, 2).to(self.decoder.conv_in.weight.dtype))


# -- adversarial pieces ----------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (Isola et al., arXiv:1611.07004) as used by VQGAN: 4x4 convs, BatchNorm, LeakyReLU(0.2).

    ``n_layers`` stride-2 convs then two stride-1 convs; one logit per overlapping patch. Weights are
    initialised N(0, 0.02) (BatchNorm scale N(1, 0.02)), as in the reference code.
    """

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise UserError("disc_layers must be >= 1")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def output_size(size: int, n_layers: int) -> int:
        """Side of the logit map for a ``size`` square input (a 4x4 conv, padding 1: s -> (s - 2) // stride + 1)."""
        for _ in range(n_layers):
            size = (size - 2) // 2 + 1
        for _ in range(2):  # the stride-1 conv and the output conv
            size = size - 1
        return size

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])`` (VQGAN's hinge discriminator loss)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN eq. 7: ``||grad_{W_L} L_rec|| / (||grad_{W_L} L_G|| + 1e-4)``, clipped to ``[0, max_weight]``, detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def frozen_call(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with its parameters detached: gradients reach ``x`` but not the module (generator's term)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))
