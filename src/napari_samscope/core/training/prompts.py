"""Prompt sampling for training, following how SAM itself was trained.

All tensors live in the model's input frame (the resized image, ``S x S`` with padding);
points are ``(x, y)`` pixel indices, as the prompt encoder expects (it adds 0.5 to move
them to pixel centres); boxes are XYXY.

- The first prompt of an object is a positive point drawn uniformly inside it, a box
  around it with noise (standard deviation ``10%`` of its side, at most 20 pixels), or a
  box plus a positive point.
- Optionally (``TrainConfig.negative_pair_fraction``) the first prompt is a positive
  point in the object plus a negative point in a touching neighbour, with no mask
  prompt: how a user separates two touching nuclei with one corrective click.
- Each corrective round adds one point drawn uniformly from the error region of the
  previous prediction: positive in a false-negative pixel, negative in a false-positive
  one. The previous low-resolution logits go back in as the mask prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import torch
from scipy import ndimage as ndi

__all__ = [
    "PromptKind",
    "Prompts",
    "random_points_in",
    "boxes_from_masks",
    "jittered_boxes",
    "corrective_points",
    "initial_prompts",
    "pair_prompts",
    "touching_neighbours",
]


class PromptKind(str, Enum):
    """The kind of an object's first prompt."""

    POINT = "point"
    BOX = "box"
    BOX_AND_POINT = "box+point"


@dataclass(frozen=True)
class Prompts:
    """Prompts of ``N`` objects in the model's input frame.

    Attributes:
        points: ``(N, P, 2)`` float ``(x, y)`` or None.
        labels: ``(N, P)`` int (1 positive, 0 negative, -1 ignored) or None.
        boxes: ``(N, 4)`` float XYXY or None.
        masks: ``(N, 1, L, L)`` low-resolution logits from the previous round, or None.
    """

    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def with_point(self, coords: torch.Tensor, labels: torch.Tensor) -> Prompts:
        """Append one ``(N, 2)`` point with its ``(N,)`` labels to every object."""
        coords, labels = coords[:, None, :].float(), labels[:, None].long()
        if self.points is None:
            return replace(self, points=coords, labels=labels)
        return replace(
            self,
            points=torch.cat([self.points, coords], dim=1),
            labels=torch.cat([self.labels, labels], dim=1),
        )

    @property
    def point_tuple(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(points, labels)`` as the prompt encoder takes them, or None."""
        return None if self.points is None else (self.points, self.labels)


def random_points_in(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random ``(x, y)`` pixel inside each of ``(N, H, W)`` non-empty masks.

    Returns:
        ``(N, 2)`` float32. Rows whose mask is empty get ``(0, 0)``.
    """
    n, _, width = masks.shape
    flat = masks.reshape(n, -1).float()
    empty = flat.sum(dim=1) == 0
    flat[empty, 0] = 1.0
    index = torch.multinomial(flat, 1, generator=generator)[:, 0]
    return torch.stack([index % width, index // width], dim=1).float()


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes ``(N, 4)`` (inclusive pixel indices) of ``(N, H, W)`` masks."""
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    height, width = masks.shape[1:]

    def extent(hit: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(size, device=hit.device)
        first = torch.where(hit, idx, size).min(dim=1).values
        last = torch.where(hit, idx, -1).max(dim=1).values
        return first, last

    y0, y1 = extent(rows, height)
    x0, x1 = extent(cols, width)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def jittered_boxes(
    masks: torch.Tensor,
    generator: torch.Generator,
    noise: float = 0.1,
    max_noise: float = 20.0,
    bounds: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes of ``(N, H, W)`` masks with Gaussian noise on each coordinate (as SAM).

    Each coordinate moves by ``N(0, noise * side)`` clipped to ``max_noise`` pixels; the
    box stays inside ``bounds`` = ``(h, w)`` (default the mask size) and keeps x0 <= x1.
    """
    boxes = boxes_from_masks(masks)
    sides = torch.stack(
        [boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, dim=1
    )
    jitter = torch.randn(boxes.shape, generator=generator) * noise * sides
    boxes = boxes + jitter.clamp(-max_noise, max_noise)
    height, width = bounds if bounds is not None else masks.shape[1:]
    x = boxes[:, 0::2].clamp(0, width - 1).sort(dim=1).values
    y = boxes[:, 1::2].clamp(0, height - 1).sort(dim=1).values
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def corrective_points(
    predicted: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next click of each object, drawn uniformly from its error region.

    Args:
        predicted: ``(N, H, W)`` bool masks of the previous round.
        targets: ``(N, H, W)`` bool ground truth.

    Returns:
        ``(N, 2)`` float ``(x, y)`` and ``(N,)`` int labels: 1 for a false-negative pixel,
        0 for a false-positive pixel, -1 (ignored point) when the prediction was perfect.
    """
    error = predicted ^ targets
    coords = random_points_in(error, generator)
    x, y = coords[:, 0].long(), coords[:, 1].long()
    rows = torch.arange(targets.shape[0])
    labels = targets[rows, y, x].long()
    labels[~error.reshape(error.shape[0], -1).any(dim=1)] = -1
    return coords, labels


def initial_prompts(
    kind: PromptKind,
    targets: torch.Tensor,
    generator: torch.Generator,
    bounds: tuple[int, int] | None = None,
) -> Prompts:
    """First prompts of ``(N, H, W)`` target masks for one :class:`PromptKind`."""
    kind = PromptKind(kind)
    prompts = Prompts()
    if kind in (PromptKind.BOX, PromptKind.BOX_AND_POINT):
        prompts = replace(prompts, boxes=jittered_boxes(targets, generator, bounds=bounds))
    if kind in (PromptKind.POINT, PromptKind.BOX_AND_POINT):
        positive = torch.ones(targets.shape[0], dtype=torch.long)
        prompts = prompts.with_point(random_points_in(targets, generator), positive)
    return prompts


def touching_neighbours(labels: np.ndarray, ids: np.ndarray, reach: int = 2) -> np.ndarray:
    """For each object id, the union of the objects within ``reach`` pixels of it.

    Args:
        labels: ``(H, W)`` integer label image (0 = background).
        ids: ``(N,)`` object ids present in ``labels``.
        reach: how close (pixels, 8-connected dilation steps) a neighbour must come.

    Returns:
        ``(N, H, W)`` bool; all False for an object with no neighbour that close.
    """
    out = np.zeros((len(ids), *labels.shape), dtype=bool)
    boxes = ndi.find_objects(labels)
    height, width = labels.shape
    for row, obj in enumerate(np.asarray(ids).tolist()):
        box = boxes[obj - 1] if 0 < obj <= len(boxes) else None
        if box is None:
            continue
        ys = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        xs = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        crop = labels[ys, xs]
        grown = ndi.binary_dilation(crop == obj, np.ones((3, 3), bool), iterations=reach)
        near = np.unique(crop[grown & (crop > 0) & (crop != obj)])
        if near.size:
            out[row] = np.isin(labels, near)
    return out


def pair_prompts(
    targets: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator
) -> Prompts:
    """A positive point inside each target and a negative point inside a touching
    neighbour (label -1, an ignored point, where the object has no neighbour).

    Args:
        targets: ``(N, H, W)`` bool target masks.
        neighbours: ``(N, H, W)`` bool masks of each target's touching neighbours.
    """
    positive = torch.ones(targets.shape[0], dtype=torch.long)
    prompts = Prompts().with_point(random_points_in(targets, generator), positive)
    has = neighbours.reshape(neighbours.shape[0], -1).any(dim=1)
    negative = torch.where(has, 0, -1).long()
    return prompts.with_point(random_points_in(neighbours, generator), negative)
