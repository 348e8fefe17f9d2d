"""TinyViT, the MobileSAM (ViT-T) image encoder.

Four stages: a convolutional (MBConv) stage at ``S/4`` then three windowed
attention stages at ``S/8``, ``S/16`` and ``S/16`` (the last patch merging keeps
the resolution), then the same neck as SAM's ViT. Module and parameter names
match MobileSAM's ``tiny_vit_sam.py`` so that its checkpoints load strictly
(its unused classifier ``head`` / ``norm_head`` are not built).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_samscope.core.modeling.common import LayerNorm2d, activate, in_place_allowed
from napari_samscope.core.modeling.image_encoder import window_partition, window_unpartition


class ConvBN(nn.Sequential):
    """Bias-free convolution ``c`` followed by BatchNorm ``bn`` (MobileSAM's ``Conv2d_BN``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False),
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C', H', W')``. For inference (eval mode, no autograd) the
        BatchNorm is folded into the convolution: one pass over the activations."""
        conv, bn = self.c, self.bn
        if self.training or torch.is_grad_enabled() or not bn.track_running_stats:
            return bn(conv(x))
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: ``(B, 3, S, S) -> (B, embed_dim, S/4, S/4)``."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, act, second = self.seq
        return second(activate(act, first(x)))


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on ``(B, C, H, W)``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, kernel_size=1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, stride=1, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, kernel_size=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = activate(self.act1, self.conv1(x))
        out = activate(self.act2, self.conv2(out))
        out = self.conv3(out)
        if in_place_allowed() and torch.result_type(out, x) == out.dtype:
            out = out.add_(x)
        else:
            out = out + x
        return activate(self.act3, out)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 conv with ``stride``, 1x1 conv: ``(B, C, H, W) -> (B, C', H/s, W/s)``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1, 1, 0)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = activate(self.act, self.conv1(x))
        x = activate(self.act, self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then a patch merging, on ``(B, C, H, W)``."""

    def __init__(self, dim: int, depth: int, out_dim: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Attention(nn.Module):
    """Window self-attention with a learned bias per head and |dy|, |dx| offset.

    ``attention_biases`` ``(heads, ws * ws)`` is a parameter; the index buffer
    ``attention_bias_idxs`` ``(ws * ws, ws * ws)`` is rebuilt, not stored.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TinyViT stage width {dim} must be divisible by its heads {num_heads}.")
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            "attention_bias_idxs", torch.empty(0, dtype=torch.long), persistent=False
        )
        self._bias_cache: tuple[tuple, torch.Tensor] | None = None
        self.reset_constant_buffers()

    @torch.no_grad()
    def reset_constant_buffers(self, device: torch.device | None = None) -> None:
        """(Re)compute the offset index buffer: ``idx[i, j] = |dy| * ws + |dx|``."""
        if device is None:
            device = self.attention_biases.device
        if device.type == "meta":
            device = torch.device("cpu")
        ws = self.window_size
        coords = torch.arange(ws * ws, device=device)
        ys, xs = coords // ws, coords % ws
        idxs = (ys[:, None] - ys[None, :]).abs() * ws + (xs[:, None] - xs[None, :]).abs()
        self.attention_bias_idxs = idxs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)`` with ``N = ws * ws``."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x))
        # per head: [q | k | v] -> B, heads, N, key_dim each
        q, k, v = (
            qkv.view(batch, tokens, self.num_heads, 3 * self.key_dim)
            .permute(0, 2, 1, 3)
            .split(self.key_dim, dim=3)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias(q.dtype))
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj(out)


    def _bias(self, dtype: torch.dtype) -> torch.Tensor:
        """``(1, heads, N, N)`` attention bias (4D: the CPU then uses its fused kernel).

        For inference it is gathered once and reused while the parameter, the index
        buffer, the device and the dtype stay the same (as MobileSAM does in eval mode).
        """
        table, idxs = self.attention_biases, self.attention_bias_idxs
        if self.training or torch.is_grad_enabled() or torch.jit.is_tracing():
            return table[:, idxs].to(dtype).unsqueeze(0)
        key = (table._version, table.data_ptr(), idxs.data_ptr(), table.device, dtype)
        entry = self._bias_cache  # one read: another thread may replace it meanwhile
        if entry is None or entry[0] != key:
            entry = (key, table[:, idxs].to(dtype).unsqueeze(0))
            self._bias_cache = entry
        return entry[1]


class Mlp(nn.Module):
    """LayerNorm then ``fc2(GELU(fc1(x)))`` on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activate(self.act, self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, 3x3 depthwise local conv, MLP; on channels-last ``(B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        ws = self.window_size
        windows, padded_hw = window_partition(x, ws)  # zero padding, as MobileSAM
        windows = self.attn(windows.reshape(-1, ws * ws, channels)).view(-1, ws, ws, channels)
        x = x + window_unpartition(windows, ws, padded_hw, (height, width))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # via B,C,H,W
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Attention stage on ``(B, C, H, W)``: TinyViT blocks then an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        out_dim: int | None,
        stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # B,C,H,W -> B,H,W,C
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM image encoder: ``(B, 3, S, S)`` -> ``(B, out_chans, S/16, S/16)``.

    Args:
        img_size: input side ``S``, divisible by 16.
        embed_dims, depths, num_heads, window_sizes: per stage (4 stages); stage 0 is
            convolutional, so its heads and window are unused.
        mlp_ratio: MLP width of the attention blocks relative to the stage width.
        out_chans: neck output channels (the prompt embedding width).
        mbconv_expand_ratio: expansion of the stage-0 MBConv blocks.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        mbconv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if not all(len(seq) == 4 for seq in (embed_dims, depths, num_heads, window_sizes)):
            raise ValueError("TinyViT needs exactly 4 stages of embed_dims/depths/num_heads/window_sizes.")
        if img_size % 16:
            raise ValueError(f"TinyViT img_size must be divisible by 16, got {img_size}.")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        # Merging strides: /2 after stages 0 and 1, none before the last stage.
        strides = (2, 2, 1)
        self.layers = nn.ModuleList()
        self.layers.append(
            ConvLayer(embed_dims[0], depths[0], embed_dims[1], strides[0], mbconv_expand_ratio)
        )
        for i in range(1, 4):
            last = i == 3
            self.layers.append(
                BasicLayer(
                    dim=embed_dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    out_dim=None if last else embed_dims[i + 1],
                    stride=1 if last else strides[i],
                )
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float -> ``(B, out_chans, S/16, S/16)``.

        The activations are kept channels-last (the channels of a pixel contiguous):
        the convolutions run faster on it, and the attention stages, which work on
        ``(B, H, W, C)`` tokens, get them without copies.

        For inference on the CPU (eval mode, no autograd, no tracing) the convolutional
        stage (patch embedding and stage 0, whose activations are the largest: ``(B, 4 *
        embed_dims[0], S/4, S/4)``) runs one image at a time. The values are those of the
        batched stage up to the order of a convolution's sums (bit for bit for the default
        model in bf16); but a batch of two 1024x1024 inputs in bf16 (an image and its
        flip) would hold 33 MB activations, above the largest block glibc's malloc reuses,
        so each one would be fresh pages and a page fault per 4 KB (see
        ``core.host_memory``). Other devices keep the batch: their allocators cache blocks.
        """
        per_image = x.device.type == "cpu" and not self.training and in_place_allowed()
        if x.shape[0] > 1 and per_image:
            x = torch.cat([self._conv_stage(image) for image in x.split(1)])
        else:
            x = self._conv_stage(x)
        for layer in self.layers[1:]:
            x = layer(x)
        return self.neck(x).contiguous()  # the neck's LayerNorm2d works channels-last

    def _conv_stage(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S) -> (B, embed_dims[1], S/8, S/8)`` channels-last: the patch
        embedding and stage 0."""
        return self.layers[0](self.patch_embed(x.contiguous(memory_format=torch.channels_last)))
