"""SAM's training losses: focal + dice on masks, MSE on the predicted IoU.

The low-resolution logits ``(N, K, L, L)`` are compared with the targets either at
``L x L`` against the fraction of each low-resolution pixel covered by the object (soft
targets, cheap, the default) or upsampled bilinearly to the model's input frame
``(S, S)`` (the first step of the inference postprocessing), as SAM does.
With several candidate masks (multimask output) only the best one (lowest mask loss)
receives the mask gradient; the IoU head learns the real IoU of every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["FOCAL_WEIGHT", "LOSS_RESOLUTIONS", "focal_loss", "dice_loss", "mask_iou", "MaskLoss", "sam_loss"]

#: SAM weighs focal to dice 20:1.
FOCAL_WEIGHT = 20.0
#: Where masks are compared with their targets (see :func:`sam_loss`).
LOSS_RESOLUTIONS = ("lowres", "input")


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss averaged over the last two axes: ``(..., H, W) -> (...)``.

    ``targets`` may be soft (in [0, 1]); ``alpha`` weighs the foreground (-1: no weighting).
    """
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss over the last two axes: ``(..., H, W) -> (...)``."""
    prob = logits.sigmoid()
    targets = targets.to(prob.dtype)
    inter = (prob * targets).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (2 * inter + eps) / (total + eps)


def mask_iou(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks over the last two axes (1.0 when both are empty)."""
    inter = (predicted & targets).sum(dim=(-2, -1)).float()
    union = (predicted | targets).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass(frozen=True)
class MaskLoss:
    """Result of :func:`sam_loss` for ``N`` objects and ``K`` candidates.

    Attributes:
        loss: scalar to backpropagate (mask loss of the best candidates + IoU MSE).
        best: ``(N,)`` index of the candidate with the lowest mask loss.
        iou: ``(N,)`` real IoU of the best candidates (no gradient).
        masks: ``(N, H, W)`` bool prediction of the best candidates at ``(S, S)``.
    """

    loss: torch.Tensor
    best: torch.Tensor
    iou: torch.Tensor
    masks: torch.Tensor


def sam_loss(
    low_res_logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    targets: torch.Tensor,
    *,
    resolution: str = "lowres",
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_weight: float = FOCAL_WEIGHT,
) -> MaskLoss:
    """Focal + dice on the best of ``K`` candidates plus MSE between predicted and real IoU.

    Args:
        low_res_logits: ``(N, K, L, L)``.
        iou_predictions: ``(N, K)``.
        targets: ``(N, S, S)`` bool masks in the model's (padded) input frame.
        resolution: ``"input"`` upsamples the logits bilinearly to ``S x S`` (as the
            postprocessing does) and compares them with the masks there; ``"lowres"``
            (16x cheaper) compares the logits at ``L x L`` with the fraction of each
            low-resolution pixel covered by the mask (soft targets), whose optimum keeps
            sub-pixel boundary information.
        iou_weight: weight of the IoU-prediction MSE.
        focal_alpha: focal-loss weight of the foreground (-1: none).
        focal_weight: focal : dice ratio (SAM: 20).
    """
    if resolution not in LOSS_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {LOSS_RESOLUTIONS}, not {resolution!r}.")
    logits = low_res_logits.float()
    size = targets.shape[-2:]
    if resolution == "input":
        logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        target = targets[:, None].float()
    else:
        factor = size[0] // logits.shape[-2]
        target = F.avg_pool2d(targets[:, None].float(), factor)
    target = target.expand_as(logits)
    per_mask = focal_weight * focal_loss(logits, target, alpha=focal_alpha) + dice_loss(logits, target)
    best = per_mask.detach().argmin(dim=1)
    rows = torch.arange(per_mask.shape[0], device=per_mask.device)
    with torch.no_grad():
        predicted = (logits > 0).float()
        inter = (predicted * target).sum(dim=(-2, -1))
        union = predicted.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) - inter
        real_iou = torch.where(union > 0, inter / union.clamp(min=1e-6), torch.ones_like(union))
        chosen = logits[rows, best]
        if resolution == "lowres":
            chosen = F.interpolate(chosen[:, None], size, mode="bilinear", align_corners=False)[:, 0]
        masks = chosen > 0
    iou_loss = F.mse_loss(iou_predictions.float(), real_iou)
    loss = per_mask[rows, best].mean() + iou_weight * iou_loss
    return MaskLoss(loss=loss, best=best, iou=real_iou[rows, best], masks=masks)
