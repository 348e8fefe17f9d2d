"""The parts of image formation that make synthetic nuclei look like real ones.

- :func:`psf_blur`: a point-spread function with a wide tail (a sharp core plus scattered
  and out-of-focus light), applied to the noise-free signal before any noise;
- :func:`defocus_objects`: some nuclei lie above or below the focal plane and are seen
  blurred and dim;
- :func:`chromatin_texture`: fine speckled texture inside nuclei;
- :func:`half_contrast_labels`: the ground-truth outline where an annotator draws it, at
  half of the object's contrast in the blurred image, not at the drawn ellipse.

All arrays are ``(H, W)`` or ``(Z, Y, X)`` float32 signal in relative units (~1 on an
object) with the matching uint32 label image (0 = background).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from napari_samscope.core.synthetic.style import SyntheticStyle

__all__ = ["chromatin_texture", "defocus_objects", "half_contrast_labels", "psf_blur"]


def psf_blur(signal: np.ndarray, style: SyntheticStyle, blur: tuple[float, ...]) -> np.ndarray:
    """Blur ``signal`` with a Gaussian core of standard deviation ``blur`` (per axis) and,
    when ``style.psf_tail > 0``, a wide Gaussian carrying that fraction of the light.

    With ``psf_tail == 0`` the result is exactly ``ndi.gaussian_filter(signal, blur)``
    (``signal`` itself when every ``blur`` is 0).
    """
    core = ndi.gaussian_filter(signal, blur) if max(blur) > 0 else signal
    if style.psf_tail <= 0:
        return core
    wide = tuple(style.psf_tail_sigma * max(b, 1.0) for b in blur)
    tail = ndi.gaussian_filter(signal, wide)
    return ((1.0 - style.psf_tail) * core + style.psf_tail * tail).astype(np.float32)


def defocus_objects(
    signal: np.ndarray, labels: np.ndarray, style: SyntheticStyle, rng: np.random.Generator
) -> np.ndarray:
    """Blur and dim the light of a random ``style.defocus_fraction`` of the objects.

    An out-of-focus nucleus spreads the same light over a wider area: its signal is
    blurred by ``style.defocus_blur`` times the PSF width (at least 2 px) and its peak
    drops accordingly. Consumes ``rng`` only when ``defocus_fraction > 0``.
    """
    if style.defocus_fraction <= 0 or labels.max() == 0:
        return signal
    n = int(labels.max())
    chosen = np.flatnonzero(rng.random(n) < style.defocus_fraction) + 1
    if chosen.size == 0:
        return signal
    away = np.isin(labels, chosen)
    sigma = max(style.blur, 1.0) * style.defocus_blur - max(style.blur, 0.0)
    spread = ndi.gaussian_filter(np.where(away, signal, 0.0).astype(np.float32), max(sigma, 2.0))
    return np.where(away, 0.0, signal).astype(np.float32) + spread


def chromatin_texture(
    signal: np.ndarray, labels: np.ndarray, style: SyntheticStyle, rng: np.random.Generator
) -> np.ndarray:
    """Modulate object signal by fine speckles (scale ~ radius / 10) of relative amplitude
    ``style.chromatin``. Consumes ``rng`` only when ``chromatin > 0``."""
    if style.chromatin <= 0:
        return signal
    scale = max(0.6, float(np.mean(style.radius_range)) / 10.0)
    speckle = ndi.gaussian_filter(rng.standard_normal(signal.shape).astype(np.float32), scale)
    speckle /= float(speckle.std()) + 1e-6
    factor = np.clip(1.0 + style.chromatin * speckle, 0.1, None)
    return np.where(labels > 0, signal * factor, signal).astype(np.float32)


def half_contrast_labels(
    labels: np.ndarray, blurred: np.ndarray, min_area: int, reach: int = 3,
    whole: Collection[int] = (),
) -> np.ndarray:
    """Outline each object where its blurred, noise-free image falls to half its level.

    Args:
        labels: ``(H, W)`` or ``(Z, Y, X)`` uint32 geometric labels (the drawn shapes).
        blurred: the noise-free signal after the PSF (same shape), background 0.
        min_area: objects with fewer pixels are dropped.
        reach: how far (pixels) an outline may grow past the drawn shape into background.
        whole: ids kept with all their pieces and down to 4 pixels (condensed chromatin
            figures: small, and a fragmented apoptotic nucleus is one object of several
            bodies).

    Each object keeps the pixels of its territory (its shape grown by ``reach`` into the
    background, never into a neighbour) where ``blurred >= 0.5 * level``; ``level`` is the
    median of ``blurred`` over the object's interior (its shape eroded by 2 px, or the whole
    shape when that is empty). Holes are filled and only the largest piece kept, so a
    touching pair still meets along the drawn boundary.

    Returns:
        uint32 labels, ids renumbered 1..N in the order of the input ids.
    """
    territory = expand_labels(labels, distance=reach) if reach > 0 else labels
    out = np.zeros(labels.shape, dtype=np.uint32)
    new_id = 0
    for index, box in enumerate(ndi.find_objects(territory), start=1):
        if box is None:
            continue
        own = labels[box] == index
        if not own.any():
            continue
        inner = ndi.binary_erosion(own, iterations=2)
        values = blurred[box]
        level = float(np.median(values[inner if inner.any() else own]))
        mask = (territory[box] == index) & (values >= 0.5 * level)
        mask = ndi.binary_fill_holes(mask)
        keep_all = index in whole
        pieces, n = ndi.label(mask)
        if n > 1 and not keep_all:
            mask = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        if int(mask.sum()) < (4 if keep_all else min_area):
            continue
        new_id += 1
        out[box][mask] = new_id
    return out
