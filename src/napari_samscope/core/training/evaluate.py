"""Mean IoU of a model for one random interior point and for the box prompt.

The evaluation goes through the public :class:`~napari_samscope.core.predict.predictor.Predictor`
(exactly what users run): each image is encoded once, then every instance is prompted

- with **one positive point** drawn uniformly at random among the object's pixels
  (``multimask_output=False``, the API default; the multimask variant, keeping the
  candidate with the highest predicted IoU, is reported as ``point_multimask_iou``);
- with its **tight bounding box** (XYXY, inclusive pixel indices).

IoU is computed at the original image size against the label image. Objects smaller
than ``min_area`` pixels are skipped. Draws are reproducible from ``seed``.

Every figure is read against a baseline that needs no model: an Otsu threshold of the
image inside the same tight box (``otsu_box_iou``). A model whose box IoU barely beats it
adds little over a threshold.

Every mean comes with its standard error over the objects (``*_se``: the sample standard
deviation divided by the square root of the number of objects), and the box prompt's
margin over the baseline is also reported object by object (``box_minus_otsu``, paired,
so its error is smaller than the two means' errors suggest). On one real image of 125
nuclei the box IoU's standard error is about 0.01: two models whose means differ by less
than that are not told apart by it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_samscope.core.progress import Progress, run
from napari_samscope.core.training.baselines import otsu_in_box_masks

__all__ = [
    "EvaluationResult",
    "evaluate",
    "evaluate_iter",
    "otsu_in_box_masks",
    "paired_differences",
    "standard_error",
    "synthetic_eval_set",
]


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values``: sample standard deviation (``ddof=1``)
    over the square root of their number; NaN for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / np.sqrt(values.size))


@dataclass
class EvaluationResult:
    """Per-object IoUs and their means.

    Attributes:
        point_ious: IoU of the single-mask prediction from one random interior point.
        point_multimask_ious: IoU of the best-scored of 3 candidates from the same point.
        box_ious: IoU of the prediction from the tight box.
        otsu_box_ious: IoU of the baseline: the image thresholded with Otsu's method inside
            the same tight box (no model).
        images: number of images evaluated.
    """

    point_ious: list[float] = field(default_factory=list)
    point_multimask_ious: list[float] = field(default_factory=list)
    box_ious: list[float] = field(default_factory=list)
    otsu_box_ious: list[float] = field(default_factory=list)
    images: int = 0

    @property
    def point_iou(self) -> float:
        return float(np.mean(self.point_ious)) if self.point_ious else float("nan")

    @property
    def point_multimask_iou(self) -> float:
        return float(np.mean(self.point_multimask_ious)) if self.point_multimask_ious else float("nan")

    @property
    def box_iou(self) -> float:
        return float(np.mean(self.box_ious)) if self.box_ious else float("nan")

    @property
    def otsu_box_iou(self) -> float:
        return float(np.mean(self.otsu_box_ious)) if self.otsu_box_ious else float("nan")

    @property
    def objects(self) -> int:
        return len(self.box_ious)

    @property
    def box_minus_otsu_ious(self) -> np.ndarray:
        """Per object, the box prompt's IoU minus the baseline's (paired)."""
        return np.asarray(self.box_ious, dtype=np.float64) - np.asarray(self.otsu_box_ious, dtype=np.float64)

    @property
    def box_minus_otsu(self) -> float:
        margins = self.box_minus_otsu_ious
        return float(margins.mean()) if margins.size else float("nan")

    def standard_errors(self) -> dict[str, float]:
        """The standard error of each mean over the objects (:func:`standard_error`)."""
        return {
            "point_iou_se": standard_error(self.point_ious),
            "point_multimask_iou_se": standard_error(self.point_multimask_ious),
            "box_iou_se": standard_error(self.box_ious),
            "otsu_box_iou_se": standard_error(self.otsu_box_ious),
            "box_minus_otsu_se": standard_error(self.box_minus_otsu_ious),
        }

    def as_dict(self) -> dict[str, float]:
        """Means, their standard errors (``*_se``) and counts, JSON-able (NaN where
        undefined)."""
        return {
            "point_iou": round(self.point_iou, 4),
            "point_multimask_iou": round(self.point_multimask_iou, 4),
            "box_iou": round(self.box_iou, 4),
            "otsu_box_iou": round(self.otsu_box_iou, 4),
            "box_minus_otsu": round(self.box_minus_otsu, 4),
            **{key: round(value, 4) for key, value in self.standard_errors().items()},
            "objects": self.objects,
            "images": self.images,
        }


def paired_differences(base: EvaluationResult, other: EvaluationResult) -> dict[str, float]:
    """``other`` minus ``base``, object by object, with the standard error of each mean
    difference (``point_iou_diff``, ``point_iou_diff_se``, and the same for
    ``point_multimask_iou`` and ``box_iou``; rounded to 4 decimals).

    Both results must come from the same images, ``min_area`` and ``seed`` (then every
    object gets the same interior point in both), as two :func:`evaluate` calls with the
    same arguments but the model give. Pairing removes what the objects share (an object
    hard for one model is mostly hard for the other), so a difference is measured far more
    precisely than the two means' standard errors suggest.

    Raises:
        ValueError: if the two results do not cover the same number of objects and images.
    """
    if (len(base.box_ious), base.images) != (len(other.box_ious), other.images):
        raise ValueError(
            f"Cannot pair {len(base.box_ious)} objects in {base.images} images with "
            f"{len(other.box_ious)} objects in {other.images} images: compare results of the "
            "same images, min_area and seed."
        )
    figures: dict[str, float] = {}
    for name in ("point_iou", "point_multimask_iou", "box_iou"):
        base_values = np.asarray(getattr(base, f"{name}s"), dtype=np.float64)
        other_values = np.asarray(getattr(other, f"{name}s"), dtype=np.float64)
        diff = other_values - base_values
        figures[f"{name}_diff"] = round(float(diff.mean()), 4) if diff.size else float("nan")
        figures[f"{name}_diff_se"] = round(standard_error(diff), 4)
    return figures


def _iou(masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
    inter = np.logical_and(masks, targets).sum(axis=(1, 2))
    union = np.logical_or(masks, targets).sum(axis=(1, 2))
    return inter / np.maximum(union, 1)


def _objects(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids with at least ``min_area`` pixels and their tight XYXY boxes."""
    from scipy import ndimage as ndi

    counts = np.bincount(labels.ravel())
    boxes, ids = [], []
    for index, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or counts[index] < min_area:
            continue
        ids.append(index)
        boxes.append([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1])
    return np.asarray(ids, dtype=np.int64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def evaluate_iter(
    model: Any,
    images: Iterable[np.ndarray],
    labels: Iterable[np.ndarray],
    *,
    seed: int = 0,
    min_area: int = 10,
    batch: int = 32,
    n_images: int | None = None,
) -> Generator[Progress, None, EvaluationResult]:
    """Evaluate ``model`` on image / label pairs (a progress job).

    Args:
        model: anything :func:`~napari_samscope.core.predict.resolve.as_predictor` takes
            (a name or path, a ``SAM``, a ``Sam`` module or a ``Predictor``).
        images: 2D images (any dtype ``set_image`` accepts).
        labels: matching ``(H, W)`` integer label images.
        seed: seeds the random interior points.
        min_area: objects with fewer pixels are skipped.
        batch: objects decoded per call.
        n_images: the number of pairs, for the progress total (optional).
    """
    from napari_samscope.core.predict.resolve import as_predictor

    predictor = as_predictor(model)
    rng = np.random.default_rng(seed)
    result = EvaluationResult()
    total = n_images or 0
    for index, (image, label) in enumerate(zip(images, labels)):
        yield Progress("evaluating", index, total)
        label = np.asarray(label)
        if label.shape != np.asarray(image).shape[:2]:
            raise ValueError(
                f"Image {index} is {np.asarray(image).shape} but its labels are {label.shape}."
            )
        ids, boxes = _objects(label, min_area)
        if len(ids) == 0:
            continue
        predictor.set_image(image)
        for start in range(0, len(ids), batch):
            chunk, chunk_boxes = ids[start : start + batch], boxes[start : start + batch]
            targets = label[None] == chunk[:, None, None]
            points = []
            for target in targets:
                rows, cols = np.nonzero(target)
                pick = rng.integers(len(rows))
                points.append([[cols[pick], rows[pick]]])
            points = np.asarray(points, dtype=np.float64)
            ones = np.ones(points.shape[:2], dtype=np.int64)
            single = predictor.predict(points=points, labels=ones)
            multi = predictor.predict(points=points, labels=ones, multimask_output=True)
            boxed = predictor.predict(bboxes=chunk_boxes)
            if len(chunk) == 1:  # one object: the multimask result holds its candidates
                best = int(np.argmax(multi.scores))
                multi_masks = multi.masks[best : best + 1]
            else:
                multi_masks = multi.masks
            result.point_ious += _iou(single.masks, targets).tolist()
            result.point_multimask_ious += _iou(multi_masks, targets).tolist()
            result.box_ious += _iou(boxed.masks, targets).tolist()
            result.otsu_box_ious += _iou(otsu_in_box_masks(image, chunk_boxes), targets).tolist()
        result.images += 1
    yield Progress("evaluating", result.images, total)
    predictor.reset_image()
    return result


def evaluate(
    model: Any,
    images: Iterable[np.ndarray],
    labels: Iterable[np.ndarray],
    *,
    seed: int = 0,
    min_area: int = 10,
    progress: Callable[[Progress], Any] | str | None = None,
    **kwargs: Any,
) -> EvaluationResult:
    """Headless :func:`evaluate_iter`."""
    return run(
        evaluate_iter(model, images, labels, seed=seed, min_area=min_area, **kwargs),
        progress=progress,
    )


def synthetic_eval_set(
    n: int,
    seed: int,
    *,
    shape: tuple[int, int] = (512, 512),
    uint16: bool = False,
    low_snr: bool = False,
    boundary: str = "geometric",
) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray]]:
    """The held-out synthetic nuclei set used to report the default model's quality.

    ``n`` images of :func:`~napari_samscope.core.synthetic.make_nuclei_2d` with seeds
    ``seed, seed+1, ...`` and its default statistics (radius 8-18 px, SNR 15, blur 1,
    30% touching, uint8), or ``uint16`` / ``low_snr`` (SNR 3, more read noise) variants.
    ``boundary="half_contrast"`` outlines the same nuclei where annotators draw them (see
    :class:`~napari_samscope.core.synthetic.SyntheticStyle`); the images are identical.
    """
    from napari_samscope.core.synthetic import make_nuclei_2d

    kwargs: dict[str, Any] = {"dtype": "uint16" if uint16 else "uint8", "boundary": boundary}
    if low_snr:
        kwargs.update(snr=3.0, read_noise=6.0, background_photons=10.0)
    pairs = [make_nuclei_2d(shape, seed=seed + i, **kwargs) for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
