"""The UNETR instance decoder of micro-sam, as a pure ``nn.Module`` on the image embedding.

micro-sam trains a convolutional decoder (torch_em's UNETR without skip connections) on
top of SAM's image encoder. It reads only the ``(B, 256, E, E)`` image embedding and
predicts, at the model input size ``S = 16 E``, three maps in [0, 1]: foreground
probability, distance to the object centre and distance to the object boundary (both
normalised per object). :mod:`~napari_samscope.core.instances.postprocess` turns them into
instances.

The layer names follow torch_em's ``UNETR`` so that micro-sam's decoder files load
strictly: ``base``, ``deconv1..4``, ``decoder.samplers/blocks``, ``deconv_out``,
``decoder_head``, ``out_conv``. Shapes for the default widths ``(512, 256, 128, 64)``::

    embedding (C, E)  --base-->  512 @ E  --decoder stage 0/1/2-->  64 @ 8E  --deconv_out-->  64 @ 16E
    embedding --deconv1--> 512 @ 2E --deconv2--> 256 @ 4E --deconv3--> 128 @ 8E --deconv4--> 64 @ 16E
    each decoder stage: upsample x2, concatenate the centre channels of the deconv map of
    that scale, conv block; the head concatenates the last deconv map, conv block, 1x1 conv,
    sigmoid.

Upsampling is bilinear x2 followed by a 1x1 convolution, or a 2x2 transposed convolution
(``conv_transpose=True``; micro-sam's published decoders use this one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNETRDecoder"]


def image_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Normalise each image's channels with their own mean and (biased) variance over ``(H, W)``.

    ``F.instance_norm`` reshapes its input to a contiguous ``(1, B*C, H, W)`` first: on a
    channels-last tensor that is a full copy, and the next convolution copies it back.
    One channels-last image is normalised in place of layout instead: float32 statistics
    from ``torch.var_mean`` (as exact as instance_norm's), reduced-precision activations
    (bf16 under autocast) with batch_norm's channels-last statistics, whose float
    accumulation is far finer than bf16's own rounding. Anything else goes to
    ``F.instance_norm``.
    """
    if x.shape[0] != 1 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.instance_norm(
            x, None, None, weight, bias, use_input_stats=True, momentum=0.0, eps=eps
        )
    if x.dtype in (torch.float32, torch.float64):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
    return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0, eps=eps)


class ImageNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (no affine, no running statistics) computed by :func:`image_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return image_norm(x, None, None, self.eps)


class ConvBlock(nn.Module):
    """Two (InstanceNorm, 3x3 conv, ReLU) layers: ``(B, in, H, W) -> (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ImageNorm(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            ImageNorm(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class InterpolatingUpsampler(nn.Module):
    """Bilinear x2 (``align_corners=False``), then a 1x1 conv: ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class TransposedUpsampler(nn.Module):
    """A 2x2 stride-2 transposed conv: ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _upsampler(in_channels: int, out_channels: int, conv_transpose: bool) -> nn.Module:
    cls = TransposedUpsampler if conv_transpose else InterpolatingUpsampler
    return cls(in_channels, out_channels)


class Conv3x3(nn.Module):
    """A padded 3x3 conv kept under the name ``block`` (torch_em's parameter layout)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ImageStatsBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d that always normalises each image with its own channel statistics.

    micro-sam runs its decoder as built, in training mode, so its BatchNorm layers use
    the statistics of the batch at hand (one image) and never the running averages.
    Doing the same per image reproduces micro-sam's outputs; the running statistics
    stay in the state dict (the files have them) but are not used.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return image_norm(x, self.weight, self.bias, self.eps)


class UpBlock(nn.Module):
    """Upsample x2, 3x3 conv, BatchNorm (image statistics), ReLU:
    ``(B, in, H, W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_channels: int, out_channels: int, conv_transpose: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _upsampler(in_channels, out_channels, conv_transpose),
            Conv3x3(out_channels, out_channels),
            ImageStatsBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def center_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The ``channels`` middle channels of ``(B, C, H, W)`` (how torch_em's decoder crops
    a wider skip input before concatenating it)."""
    start = (x.shape[1] - channels) // 2
    return x[:, start : start + channels]


class DecoderStages(nn.Module):
    """The UNet decoder: per stage, upsample, concatenate a skip map, conv block.

    ``features = (f0, f1, ..., fn)``: stage ``i`` maps ``f_i`` channels to ``f_{i+1}`` at twice
    the resolution; its skip input is cut to its middle ``f_{i+1}`` channels.
    """

    def __init__(self, features: Sequence[int], conv_transpose: bool) -> None:
        super().__init__()
        pairs = list(zip(features[:-1], features[1:]))
        self.blocks = nn.ModuleList([ConvBlock(inc, outc) for inc, outc in pairs])
        self.samplers = nn.ModuleList(
            [_upsampler(inc, outc, conv_transpose) for inc, outc in pairs]
        )

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, center_channels(skip, x.shape[1])], dim=1))
        return x


class UNETRDecoder(nn.Module):
    """Image embedding -> foreground, centre-distance and boundary-distance maps.

    Args:
        embed_dim: channels of the image embedding (256 for every SAM encoder).
        features: widths of the decoder, from the embedding's scale up (four values).
        out_channels: output maps (3: foreground, centre distance, boundary distance).
        conv_transpose: upsample with 2x2 transposed convs instead of bilinear + 1x1 conv.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        features: Sequence[int] = (512, 256, 128, 64),
        out_channels: int = 3,
        conv_transpose: bool = True,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 4:
            raise ValueError(f"features must hold 4 widths, not {len(features)}.")
        self.embed_dim = int(embed_dim)
        self.features = features
        self.out_channels = int(out_channels)
        self.conv_transpose = bool(conv_transpose)
        f0, f1, f2, f3 = features
        self.base = ConvBlock(embed_dim, f0)
        self.decoder = DecoderStages(features, conv_transpose)
        self.deconv1 = UpBlock(embed_dim, f0, conv_transpose)
        self.deconv2 = UpBlock(f0, f1, conv_transpose)
        self.deconv3 = UpBlock(f1, f2, conv_transpose)
        self.deconv4 = UpBlock(f2, f3, conv_transpose)
        self.deconv_out = _upsampler(f3, f3, conv_transpose)
        self.decoder_head = ConvBlock(2 * f3, f3)
        self.out_conv = nn.Conv2d(f3, out_channels, kernel_size=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim, E, E)`` embedding -> ``(B, out_channels, 16E, 16E)`` in [0, 1]."""
        if embedding.ndim != 4 or embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"The instance decoder needs a (B, {self.embed_dim}, E, E) image embedding, "
                f"not {tuple(embedding.shape)}."
            )
        z9 = self.deconv1(embedding)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(embedding), (z9, z6, z3))
        x = self.deconv_out(x)
        x = self.decoder_head(torch.cat([x, z0], dim=1))
        return torch.sigmoid(self.out_conv(x))
