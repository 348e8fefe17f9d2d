"""The public generators: 2D nuclei, membrane-stained cells and 3D nuclei stacks."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_samscope.core.synthetic.figures import cell_cycle_figures
from napari_samscope.core.synthetic.optics import (
    chromatin_texture,
    defocus_objects,
    half_contrast_labels,
    psf_blur,
)
from napari_samscope.core.synthetic.render import (
    acquire,
    as_rng,
    check_shape,
    clean_labels,
    object_signal,
    place_ellipses,
    rasterise,
    smooth_noise,
)
from napari_samscope.core.synthetic.style import Dtype, SyntheticStyle

__all__ = ["render_nuclei_2d", "make_nuclei_2d", "make_membrane_cells_2d", "make_nuclei_3d"]


def render_nuclei_2d(
    style: SyntheticStyle, shape: tuple[int, int] = (512, 512), seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render fluorescent nuclei with the statistics of ``style``.

    Returns:
        ``image`` ``(H, W)`` of ``style.dtype`` and ``labels`` ``(H, W)`` uint32 (0 = background).
    """
    shape = check_shape(shape, 2)
    rng = as_rng(seed)
    objects = place_ellipses(shape, style, rng, ndim=2)
    min_area = max(6, int(0.25 * math.pi * style.radius_range[0] ** 2))
    labels, dist = rasterise(shape, objects, rng, min_area)
    signal = object_signal(labels, dist, style, rng)
    labels, signal, figures = cell_cycle_figures(labels, signal, style, rng)
    signal = chromatin_texture(signal, labels, style, rng)
    signal = defocus_objects(signal, labels, style, rng)
    blurred = psf_blur(signal, style, (style.blur, style.blur))
    if style.boundary == "half_contrast":
        labels = half_contrast_labels(labels, blurred, min_area, whole=tuple(figures))
    return acquire(blurred, style, rng, (0.0, 0.0)), labels


def make_nuclei_2d(
    shape: tuple[int, int] = (512, 512),
    n: int | None = None,
    radius_range: tuple[float, float] = (8.0, 18.0),
    dtype: Dtype = "uint8",
    snr: float = 15.0,
    blur: float = 1.0,
    background_gradient: float = 0.3,
    touching: bool | float = True,
    seed: int | np.random.Generator = 0,
    **style_overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescent nuclei: textured ellipses, some touching, on a graded noisy background.

    Args:
        shape: ``(H, W)`` of the image.
        n: number of nuclei to place, or None to cover about 30% of the area.
        radius_range: (min, max) major semi-axis in pixels.
        dtype: ``"uint8"`` or ``"uint16"``.
        snr: mean nucleus amplitude over background noise standard deviation.
        blur: Gaussian PSF standard deviation in pixels.
        background_gradient: relative background change across the image.
        touching: True (30% of nuclei placed against another), False, or a probability.
        seed: integer seed or ``numpy.random.Generator``.
        **style_overrides: any other :class:`SyntheticStyle` field.

    Returns:
        ``image`` ``(H, W)`` ``uint8``/``uint16`` and ``labels`` ``(H, W)`` uint32, ids 1..N.
    """
    style = replace(
        SyntheticStyle(),
        n_objects=n,
        radius_range=(float(radius_range[0]), float(radius_range[1])),
        dtype=dtype,
        snr=snr,
        blur=blur,
        background_gradient=background_gradient,
        touching=0.3 if touching is True else float(touching),
        **style_overrides,
    )
    return render_nuclei_2d(style, shape, seed)


def make_membrane_cells_2d(
    shape: tuple[int, int] = (512, 512),
    n: int | None = None,
    radius_range: tuple[float, float] = (14.0, 28.0),
    dtype: Dtype = "uint8",
    snr: float = 10.0,
    blur: float = 1.0,
    membrane_width: float = 2.0,
    cytoplasm: float = 0.15,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells stained at the membrane: packed, Voronoi-like cells drawn as bright rings.

    Args:
        shape: ``(H, W)`` of the image.
        n: number of cells, or None to fill the image with cells of ``radius_range``.
        radius_range: (min, max) cell radius in pixels (sets the seed spacing and the
            largest distance of a cell pixel from its seed).
        dtype, snr, blur, seed: as in :func:`make_nuclei_2d`.
        membrane_width: ring thickness in pixels.
        cytoplasm: relative brightness of the cell interior (0 = dark interior).

    Returns:
        ``image`` ``(H, W)`` and ``labels`` ``(H, W)`` uint32, one id per cell (ring included).
    """
    shape = check_shape(shape, 2)
    rng = as_rng(seed)
    lo, hi = float(radius_range[0]), float(radius_range[1])
    style = SyntheticStyle(radius_range=(lo, hi), dtype=dtype, snr=snr, blur=blur, texture=0.2)
    target = n if n is not None else max(1, int(0.8 * shape[0] * shape[1] / (math.pi * hi * hi)))
    seeds: list[np.ndarray] = []
    for _ in range(target * 50):
        if len(seeds) >= target:
            break
        p = rng.uniform(0, 1, 2) * np.asarray(shape)
        if all(np.linalg.norm(p - q) >= 1.6 * lo for q in seeds):
            seeds.append(p)
    seed_image = np.ones(shape, dtype=bool)
    reach = np.zeros(len(seeds) + 1, dtype=np.float32)
    for i, p in enumerate(seeds, start=1):
        r, c = np.clip(p.astype(int), 0, np.asarray(shape) - 1)
        seed_image[r, c] = False
        reach[i] = rng.uniform(lo, hi) * 1.2
    distance, (rows, cols) = ndi.distance_transform_edt(seed_image, return_indices=True)
    id_image = np.zeros(shape, dtype=np.uint32)
    for i, p in enumerate(seeds, start=1):
        r, c = np.clip(p.astype(int), 0, np.asarray(shape) - 1)
        id_image[r, c] = i
    owner = id_image[rows, cols]
    labels = np.where(distance <= reach[owner], owner, 0).astype(np.uint32)
    labels, _ = clean_labels(labels, np.zeros(shape, np.float32), int(math.pi * lo * lo / 4))
    edge = np.zeros(shape, dtype=np.float32)
    for axis in (0, 1):
        change = np.diff(labels.astype(np.int64), axis=axis) != 0
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, 1)
        edge = np.maximum(edge, np.pad(change, pad))
        pad[axis] = (1, 0)
        edge = np.maximum(edge, np.pad(change, pad))
    edge = (ndi.distance_transform_edt(edge == 0) < membrane_width / 2 + 0.5) & (labels > 0)
    signal = np.where(edge, 1.0, np.where(labels > 0, cytoplasm, 0.0)).astype(np.float32)
    signal *= np.clip(1 + style.texture * smooth_noise(shape, lo / 3, rng), 0.05, None)
    return acquire(signal, style, rng, (blur, blur)), labels


def make_nuclei_3d(
    shape: tuple[int, int, int] = (32, 256, 256),
    n: int | None = None,
    radius_range: tuple[float, float] = (8.0, 14.0),
    dtype: Dtype = "uint16",
    snr: float = 12.0,
    blur: float = 1.0,
    z_anisotropy: float = 2.0,
    touching: bool | float = True,
    seed: int | np.random.Generator = 0,
    **style_overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(Z, Y, X)`` stack of ellipsoidal nuclei with a volumetric (anisotropic) PSF.

    Args:
        shape: ``(Z, Y, X)`` of the stack.
        n: number of nuclei, or None to cover about 30% of each plane's area on average.
        radius_range: (min, max) semi-axis in the XY plane, in pixels.
        dtype, snr, touching, seed: as in :func:`make_nuclei_2d`.
        blur: lateral PSF standard deviation in pixels; the axial one is 2.5x larger in
            physical units, i.e. ``2.5 * blur / z_anisotropy`` planes.
        z_anisotropy: z step divided by the XY pixel size (objects look flatter in planes).
        **style_overrides: any other :class:`SyntheticStyle` field.

    Returns:
        ``volume`` ``(Z, Y, X)`` ``uint8``/``uint16`` and ``labels`` ``(Z, Y, X)`` uint32.
    """
    shape = check_shape(shape, 3)
    if z_anisotropy <= 0:
        raise ValueError(f"z_anisotropy must be > 0, not {z_anisotropy}")
    rng = as_rng(seed)
    style = replace(
        SyntheticStyle(),
        n_objects=n,
        radius_range=(float(radius_range[0]), float(radius_range[1])),
        dtype=dtype,
        snr=snr,
        blur=blur,
        touching=0.3 if touching is True else float(touching),
        **style_overrides,
    )
    if n is None:
        depth_fraction = min(1.0, 2 * radius_range[1] / z_anisotropy / shape[0])
        mean_area = math.pi * float(np.mean(radius_range)) ** 2
        per_plane = style.density * shape[1] * shape[2] / mean_area
        style = replace(style, n_objects=max(1, int(per_plane / depth_fraction)))
    # place in physical units (XY pixels), then convert z to planes
    physical = (shape[0] * z_anisotropy, shape[1], shape[2])
    scale = np.array([z_anisotropy, 1.0, 1.0])
    objects = [(c / scale, a / scale) for c, a in place_ellipses(physical, style, rng, ndim=3)]
    min_voxels = max(8, int(0.25 * math.pi * radius_range[0] ** 2))
    labels, dist = rasterise(shape, objects, rng, min_voxels)
    signal = object_signal(labels, dist, style, rng)
    axial = 2.5 * blur / z_anisotropy
    return acquire(signal, style, rng, (axial, blur, blur)), labels
