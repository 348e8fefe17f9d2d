"""Object-level scores of an instance segmentation against ground-truth labels.

A predicted object and a true object match when their IoU is at least ``iou`` (0.5 by
default; above 0.5 a match is necessarily one-to-one, so no assignment search is needed).
F1 = 2 TP / (2 TP + FP + FN); the mean matched IoU averages the IoU of the matched pairs.
:func:`synthetic_instance_scores` runs a segmentation function on the held-out synthetic
nuclei of ``samscope evaluate --synthetic N --seed S`` (uint8, and uint16 low-SNR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["match_instances", "instance_scores", "synthetic_instance_scores", "synthetic_ais_scores"]


def _check_labels(labels: Any, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise ValueError(f"{what} must be a 2D integer label image, not {arr.dtype} {arr.shape}.")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{what} must be >= 0 (0 = background).")
    return arr


def match_instances(
    predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5
) -> tuple[int, int, int, np.ndarray]:
    """Match the objects of two ``(H, W)`` label images (0 = background).

    Returns:
        ``(tp, fp, fn, matched_ious)``: true positives, false positives, false negatives
        and the IoU of each matched pair.

    Raises:
        ValueError: not 2D integer labels, shapes differ, or ``iou`` not in [0.5, 1].
    """
    pred = _check_labels(predicted, "predicted")
    true = _check_labels(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"predicted {pred.shape} and truth {true.shape} must have the same shape.")
    if not 0.5 <= iou <= 1.0:
        raise ValueError(f"iou must be in [0.5, 1] (one-to-one matches), not {iou}.")
    _, pred_ids = np.unique(pred, return_inverse=True)
    _, true_ids = np.unique(true, return_inverse=True)
    pred_ids, true_ids = pred_ids.ravel(), true_ids.ravel()
    n_pred, n_true = int(pred_ids.max()) + 1, int(true_ids.max()) + 1
    pred_bg = int(pred.min() != 0)  # index of background in the compacted ids: 0 if present
    true_bg = int(true.min() != 0)
    pred_sizes = np.bincount(pred_ids, minlength=n_pred)
    true_sizes = np.bincount(true_ids, minlength=n_true)
    both = (pred.ravel() != 0) & (true.ravel() != 0)
    pairs = pred_ids[both].astype(np.int64) * n_true + true_ids[both]
    keys, inter = np.unique(pairs, return_counts=True)
    p, t = keys // n_true, keys % n_true
    ious = inter / (pred_sizes[p] + true_sizes[t] - inter)
    good = ious >= iou if iou > 0.5 else ious > 0.5
    n_pred_obj = n_pred - (1 - pred_bg)
    n_true_obj = n_true - (1 - true_bg)
    tp = int(good.sum())
    return tp, n_pred_obj - tp, n_true_obj - tp, ious[good].astype(np.float64)


def instance_scores(
    predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], iou: float = 0.5
) -> dict[str, float]:
    """Object F1, precision, recall and mean matched IoU pooled over image pairs."""
    if len(predicted) != len(truth) or not len(truth):
        raise ValueError("instance_scores needs as many predictions as truths, at least one.")
    tp = fp = fn = 0
    matched: list[np.ndarray] = []
    for pred, true in zip(predicted, truth):
        a, b, c, ious = match_instances(pred, true, iou)
        tp, fp, fn = tp + a, fp + b, fn + c
        matched.append(ious)
    all_ious = np.concatenate(matched)
    return {
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "mean_matched_iou": float(all_ious.mean()) if all_ious.size else 0.0,
        "objects": float(tp + fn),
        "predicted": float(tp + fp),
    }


#: The two held-out sets: (name, uint16, low_snr), as ``samscope evaluate`` makes them.
SETS = (("uint8", False, False), ("uint16_low_snr", True, True))


def synthetic_instance_scores(
    segment: Callable[[np.ndarray], np.ndarray], n: int, seed: int, size: int = 512
) -> dict[str, dict[str, float]]:
    """:func:`instance_scores` of ``segment(image) -> labels`` on each held-out synthetic set
    (``synthetic_eval_set(n, seed, ...)``: uint8, and uint16 low-SNR)."""
    from napari_samscope.core.training.evaluate import synthetic_eval_set

    scores = {}
    for name, uint16, low_snr in SETS:
        images, labels = synthetic_eval_set(n, seed, shape=(size, size), uint16=uint16, low_snr=low_snr)
        scores[name] = instance_scores([segment(im) for im in images], labels)
    return scores


def synthetic_ais_scores(model: Any, n: int, seed: int, **params: Any) -> dict[str, dict[str, float]]:
    """:func:`synthetic_instance_scores` of ``model.segment_instances(image, mode="ais")``."""
    return synthetic_instance_scores(lambda im: model.segment_instances(im, mode="ais", **params), n, seed)
