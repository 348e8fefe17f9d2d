"""Small building blocks shared by the SAM encoders and the mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def in_place_allowed() -> bool:
    """Whether a layer may overwrite its own intermediate results: nothing records
    gradients (autograd would need them) and nothing traces the graph for export."""
    return not (
        torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    )


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``, computed in place on ``x`` for inference (:func:`in_place_allowed`).

    ``x`` must be an intermediate result the caller owns (a layer's fresh output). Same
    values bit for bit as ``act(x)``; what it spares is a new buffer the size of ``x``: on
    the CPU a large one is fresh memory from the system, whose pages cost a fault each
    when first written (tens of milliseconds per encoder pass at 1024x1024). GELU and ReLU
    are done in place; any other activation is called as it is.
    """
    if not in_place_allowed():
        return act(x)
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if type(act) is nn.ReLU:
        return x.relu_()
    return act(x)


class MLPBlock(nn.Module):
    """Two-layer perceptron ``lin2(act(lin1(x)))`` acting on the last axis.

    Args:
        embedding_dim: size of the input and output features.
        mlp_dim: size of the hidden layer.
        act: activation class, instantiated without arguments.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., embedding_dim) -> (..., embedding_dim)``."""
        return self.lin2(activate(self.act, self.lin1(x)))


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a ``(B, C, H, W)`` tensor.

    The statistics are computed in float32 even when the input is float16 or
    bfloat16 (autocast), so large activations cannot overflow; the result has
    the input's dtype.

    Args:
        num_channels: ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``, in channels-last memory layout (the channels
        of a pixel are contiguous), which the convolutions around it take as they are."""
        shape = (self.weight.shape[0],)
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            # the CPU kernel accumulates bfloat16 input in float32 by itself
            out = F.layer_norm(x.permute(0, 2, 3, 1), shape, self.weight, self.bias, self.eps)
            return out.permute(0, 3, 1, 2)
        channels_last = x.float().permute(0, 2, 3, 1)  # B,C,H,W -> B,H,W,C (a view if possible)
        out = F.layer_norm(channels_last, shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype).permute(0, 3, 1, 2)
