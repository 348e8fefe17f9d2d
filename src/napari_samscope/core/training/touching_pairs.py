"""How well one negative click separates an object from a touching neighbour.

The protocol is what a user does in the napari plugin: click the centre of a nucleus
(a positive point), see the mask spill into the nucleus it touches, press ``T`` and
click the centre of that neighbour (a negative point). Both figures go through the
public :class:`~napari_samscope.core.predict.predictor.Predictor` with the plugin's
default single-mask output:

- ``positive_ious``: the object prompted with its positive point alone;
- ``pair_ious``: the same positive point plus the negative point on the neighbour,
  with the first mask's low-resolution logits as the mask prompt, as the plugin's live
  preview passes a click added to an object (``refine=False``: the two points alone);
- ``neighbour_before`` / ``neighbour_after``: the fraction of the neighbour's pixels
  inside the mask before and after the negative click (what the click is meant to
  remove).

A "touching pair" is an object and the largest other object within ``reach`` pixels of
it; both must have ``min_area`` pixels. A centre is the object's pixel farthest from its
outline (where a person clicks), as ``(x, y)`` for SAM.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_samscope.core.progress import Progress, run

__all__ = ["PairResult", "evaluate_touching_pairs", "evaluate_touching_pairs_iter", "touching_pairs"]


@dataclass
class PairResult:
    """Per-pair IoUs (against the prompted object) and their means."""

    positive_ious: list[float] = field(default_factory=list)
    pair_ious: list[float] = field(default_factory=list)
    neighbour_before: list[float] = field(default_factory=list)
    neighbour_after: list[float] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return len(self.pair_ious)

    def as_dict(self, failed_below: float = 0.7, merged_above: float = 0.2) -> dict[str, float]:
        """Means of the IoUs and of the fraction of the neighbour inside the mask
        before/after the negative click: over all pairs, over the ``failed_`` pairs where
        the positive click alone failed (IoU below ``failed_below``), and over the
        ``merged_`` pairs where its mask held more than ``merged_above`` of the neighbour
        (the case a negative click on the neighbour is for)."""
        mean = lambda v: round(float(np.mean(v)), 4) if len(v) else float("nan")  # noqa: E731
        alone, both = np.asarray(self.positive_ious), np.asarray(self.pair_ious)
        before, after = np.asarray(self.neighbour_before), np.asarray(self.neighbour_after)
        figures: dict[str, float] = {"pairs": self.pairs}
        for prefix, rows in (("", np.ones(len(alone), bool)), ("failed_", alone < failed_below),
                             ("merged_", before > merged_above)):
            if prefix:
                figures[f"{prefix}pairs"] = int(rows.sum())
            figures.update({f"{prefix}positive_iou": mean(alone[rows]), f"{prefix}pair_iou": mean(both[rows]),
                            f"{prefix}neighbour_before": mean(before[rows]),
                            f"{prefix}neighbour_after": mean(after[rows])})
        return figures


def _centre(mask: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the pixel of ``mask`` farthest from its outline."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return int(row), int(col)


def touching_pairs(labels: np.ndarray, *, min_area: int = 30, reach: int = 2) -> list[tuple[int, int]]:
    """``[(object, neighbour)]`` ids: every object with a neighbour within ``reach`` px,
    paired with its largest such neighbour. ``labels`` is ``(H, W)`` integer, 0 = background."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel())
    pairs = []
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or areas[index] < min_area:
            continue
        grown_box = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in box)
        crop = labels[grown_box]
        grown = ndi.binary_dilation(crop == index, np.ones((3, 3), bool), iterations=reach)
        near = [int(v) for v in np.unique(crop[grown]) if v not in (0, index) and areas[v] >= min_area]
        if near:
            pairs.append((index, max(near, key=lambda v: areas[v])))
    return pairs


def evaluate_touching_pairs_iter(
    model: Any,
    images: Iterable[np.ndarray],
    labels: Iterable[np.ndarray],
    *,
    min_area: int = 30,
    n_images: int | None = None,
    refine: bool = True,
) -> Generator[Progress, None, PairResult]:
    """Evaluate ``model`` (anything ``as_predictor`` takes) on the touching pairs of
    ``(H, W)`` label images; a progress job returning a :class:`PairResult`. ``refine``:
    pass the first mask's logits with the negative click (the plugin's way)."""
    from napari_samscope.core.predict.resolve import as_predictor

    predictor = as_predictor(model)
    result = PairResult()
    done = 0
    for index, (image, label) in enumerate(zip(images, labels)):
        yield Progress("touching pairs", index, n_images or 0)
        label = np.asarray(label)
        if label.shape != np.asarray(image).shape[:2]:
            raise ValueError(f"Image {index} is {np.asarray(image).shape} but its labels are {label.shape}.")
        pairs = touching_pairs(label, min_area=min_area)
        if not pairs:
            continue
        predictor.set_image(image)
        for obj, other in pairs:
            target, neighbour = label == obj, label == other
            (r0, c0), (r1, c1) = _centre(target), _centre(neighbour)
            alone = predictor.predict(points=np.array([[c0, r0]], float), labels=np.array([1]))
            previous = alone.logits[0] if refine and alone.logits is not None else None
            both = predictor.predict(points=np.array([[c0, r0], [c1, r1]], float), labels=np.array([1, 0]),
                                     masks=previous)
            for ious, inside, pred in ((result.positive_ious, result.neighbour_before, alone),
                                       (result.pair_ious, result.neighbour_after, both)):
                mask = pred.masks[0]
                union = np.logical_or(mask, target).sum()
                ious.append(float(np.logical_and(mask, target).sum() / max(union, 1)))
                inside.append(float(np.logical_and(mask, neighbour).sum() / neighbour.sum()))
        done += 1
    yield Progress("touching pairs", done, n_images or 0)
    predictor.reset_image()
    return result


def evaluate_touching_pairs(model: Any, images: Iterable[np.ndarray], labels: Iterable[np.ndarray],
                            **kwargs: Any) -> PairResult:
    """Headless :func:`evaluate_touching_pairs_iter` (same arguments)."""
    progress = kwargs.pop("progress", None)
    return run(evaluate_touching_pairs_iter(model, images, labels, **kwargs), progress=progress)
