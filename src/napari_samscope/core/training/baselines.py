"""Baselines that need no model, against which every evaluation figure is read.

- :func:`otsu_in_box_masks` for prompts: Otsu's threshold of the image inside each
  object's tight box (the baseline of the point and box IoU).
- :func:`threshold_watershed_labels` for automatic instance segmentation: the textbook
  nuclei pipeline of scikit-image (smooth, Otsu threshold, fill holes, split touching
  objects with a watershed of the distance transform). Its parameters were fixed on the
  held-out synthetic set (seed 9000), never on a real image.

A model that barely beats these adds little over a threshold.
"""

from __future__ import annotations

import numpy as np

__all__ = ["otsu_in_box_masks", "threshold_watershed_labels"]


def _grey(image: np.ndarray) -> np.ndarray:
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    if grey.ndim != 2:
        raise ValueError(f"Expected an (H, W) or (H, W, C) image, not shape {np.shape(image)}.")
    if not np.isfinite(grey).all():
        raise ValueError("The image holds NaN or infinite values.")
    return grey


def otsu_in_box_masks(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Otsu's threshold of the image inside each box, nothing outside.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image of any real dtype (channels are averaged).
        boxes: ``(N, 4)`` XYXY boxes, inclusive pixel indices.

    Returns:
        ``(N, H, W)`` bool masks: pixels of the box brighter than the box's Otsu threshold
        (all False for a constant box).
    """
    from skimage.filters import threshold_otsu

    grey = _grey(image)
    masks = np.zeros((len(boxes), *grey.shape), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, np.asarray(boxes, dtype=np.int64)):
        crop = grey[y0 : y1 + 1, x0 : x1 + 1]
        if crop.size and crop.max() > crop.min():
            mask[y0 : y1 + 1, x0 : x1 + 1] = crop > threshold_otsu(crop)
    return masks


def threshold_watershed_labels(
    image: np.ndarray, *, sigma: float = 1.0, h: float = 0.5, min_size: int = 16
) -> np.ndarray:
    """Instances from a threshold alone: bright objects on a dark background, split where
    their outline pinches.

    Steps: Gaussian smoothing (``sigma`` px), Otsu's threshold of the whole image, holes
    filled, components under ``min_size`` pixels dropped; then one seed per ``h``-maximum
    (``h`` px) of the smoothed distance transform, and a watershed of the negated distance
    inside the foreground.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` image of any real dtype (channels are averaged).

    Returns:
        ``(H, W)`` int32 labels, 0 = background (all 0 for a constant image).
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    grey = _grey(image)
    smooth = gaussian(grey, sigma, preserve_range=True)
    if smooth.max() <= smooth.min():
        return np.zeros(grey.shape, dtype=np.int32)
    foreground = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    components, _ = ndi.label(foreground)
    sizes = np.bincount(components.ravel())
    foreground &= (sizes >= min_size)[components] & (components > 0)
    distance = gaussian(ndi.distance_transform_edt(foreground), 1.0, preserve_range=True)
    seeds, _ = ndi.label(h_maxima(distance, h))
    return watershed(-distance, seeds, mask=foreground).astype(np.int32)
