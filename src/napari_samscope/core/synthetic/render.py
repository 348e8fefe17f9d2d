"""Object placement, rasterisation and image formation shared by the generators."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from napari_samscope.core.synthetic.optics import psf_blur
from napari_samscope.core.synthetic.style import SyntheticStyle

__all__ = [
    "acquire",
    "as_rng",
    "check_shape",
    "clean_labels",
    "object_signal",
    "place_ellipses",
    "rasterise",
    "smooth_noise",
]


def place_ellipses(
    shape: tuple[int, ...], style: SyntheticStyle, rng: np.random.Generator, ndim: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Choose centres and semi-axes. Returns ``[(centre, axes)]`` in array axis order."""
    lo, hi = style.radius_range
    extent = np.asarray(shape[-ndim:], dtype=float)
    if style.n_objects is not None:
        target = style.n_objects
    else:
        mean_area = math.pi * ((lo + hi) / 2) ** 2 * (1 - style.elongation / 2)
        target = max(1, int(style.density * float(np.prod(extent[-2:])) / mean_area))
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(target * 30):
        if len(placed) >= target:
            break
        major = rng.uniform(lo, hi)
        axes = np.full(ndim, major)
        axes[-2] = major * (1 - rng.uniform(0, style.elongation))
        if ndim == 3:
            axes[0] = major * rng.uniform(0.7, 1.1)
        radius = float(np.exp(np.mean(np.log(axes[-2:]))))
        if placed and rng.random() < style.touching:
            anchor, anchor_axes = placed[rng.integers(len(placed))]
            direction = rng.normal(size=ndim)
            if ndim == 3:
                direction[0] *= 0.3
            direction /= np.linalg.norm(direction) + 1e-9
            anchor_r = float(np.exp(np.mean(np.log(anchor_axes[-2:]))))
            gap = (anchor_r + radius) * (1 - rng.uniform(0, style.overlap))
            centre = anchor + direction * gap
            min_sep = 1 - style.overlap
        else:
            centre = rng.uniform(0, 1, size=ndim) * extent
            min_sep = 1.0
        if np.any(centre < -radius / 2) or np.any(centre > extent + radius / 2):
            continue
        ok = all(
            np.linalg.norm(centre - c)
            >= min_sep * (radius + float(np.exp(np.mean(np.log(a[-2:])))))
            + (0 if min_sep < 1 else 2)
            for c, a in placed
        )
        if ok:
            placed.append((centre, axes))
    return placed


def rasterise(
    shape: tuple[int, ...],
    objects: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    min_area: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ellipses/ellipsoids with a random in-plane rotation into a label image.

    Where objects overlap, each pixel goes to the object whose normalised ellipse
    distance is smallest, so touching objects meet along a natural boundary.

    Returns:
        ``labels`` (uint32, ids 1..N) and ``dist`` (float32, the winning normalised squared
        distance in [0, 1), used for the intensity profile; 1 on the background).
    """
    ndim = len(shape)
    labels = np.zeros(shape, dtype=np.uint32)
    dist = np.ones(shape, dtype=np.float32)
    for index, (centre, axes) in enumerate(objects, start=1):
        reach = float(axes.max()) + 1
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(
            *[np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)],
            indexing="ij",
        )
        theta = rng.uniform(0, math.pi)
        dy, dx = grids[-2], grids[-1]
        u = math.cos(theta) * dx + math.sin(theta) * dy
        v = -math.sin(theta) * dx + math.cos(theta) * dy
        d = (u / axes[-1]) ** 2 + (v / axes[-2]) ** 2
        if ndim == 3:
            d = d + (grids[0] / axes[0]) ** 2
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = d < dist[box]
        dist[box][win] = d[win]
        labels[box][win] = index
    return clean_labels(labels, dist, min_area)


def clean_labels(
    labels: np.ndarray, dist: np.ndarray, min_area: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep each object's largest connected piece, drop tiny ones, renumber 1..N."""
    out = np.zeros_like(labels)
    new_id = 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        pieces, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mask = pieces == (1 + int(np.argmax(sizes)))
        if int(mask.sum()) < min_area:
            continue
        new_id += 1
        out[box][mask] = new_id
    dist = np.where(out > 0, dist, 1.0).astype(np.float32)
    return out, dist


# ---------------------------------------------------------------------------- image formation


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma, 0.5))
    return field / (float(field.std()) + 1e-6)


def object_signal(
    labels: np.ndarray, dist: np.ndarray, style: SyntheticStyle, rng: np.random.Generator
) -> np.ndarray:
    """Relative object brightness (mean amplitude ~1) with texture and dome, before blur."""
    n = int(labels.max())
    bright = np.exp(rng.normal(0.0, style.brightness_spread, size=n + 1)).astype(np.float32)
    dim = rng.random(n + 1) < style.dim_fraction
    bright[dim] /= rng.uniform(3.0, 6.0, size=int(dim.sum()))
    bright[0] = 0.0
    radius = float(np.mean(style.radius_range))
    texture = 0.7 * smooth_noise(labels.shape, radius / 3, rng)
    texture += 0.5 * smooth_noise(labels.shape, radius / 8, rng)
    shade = (1 + style.texture * texture) * (1 - style.dome * dist)
    return bright[labels] * np.clip(shade, 0.05, None)


def acquire(
    signal: np.ndarray, style: SyntheticStyle, rng: np.random.Generator, blur: tuple[float, ...]
) -> np.ndarray:
    """Blur (:func:`~.optics.psf_blur`), add background, add photon + read noise and
    digitise. ``signal`` ~1 on objects; pass ``blur`` zeros for an already blurred one."""
    noise_sd = math.sqrt(style.background_photons + style.read_noise**2)
    amplitude = style.snr * noise_sd
    signal = psf_blur(signal, style, blur)
    shape = signal.shape
    ramp_axis = [np.linspace(-0.5, 0.5, s, dtype=np.float32) for s in shape[-2:]]
    angle = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(angle) * ramp_axis[0][:, None] + math.sin(angle) * ramp_axis[1][None, :]
    # uneven illumination scales signal and background alike; haze is out-of-focus light
    illumination = np.clip(1 + style.background_gradient * ramp, 0.2, None)
    haze = np.exp(0.8 * smooth_noise(shape[-2:], min(shape[-2:]) / 8, rng))
    haze *= style.haze * amplitude / float(haze.mean())
    photons = illumination * (amplitude * signal + style.background_photons + haze)
    counts = rng.poisson(np.clip(photons, 0, None)).astype(np.float32)
    counts += rng.normal(0.0, style.read_noise, size=shape).astype(np.float32)
    if style.dtype == "uint16":
        values = 100.0 + style.uint16_gain * counts
        return np.clip(np.rint(values), 0, 65535).astype(np.uint16)
    top = float(np.percentile(counts, 99.9))
    low = float(np.percentile(counts, 0.5))
    scale = 255.0 * style.uint8_range / max(top, low + 1e-3, 1e-3)
    return np.clip(np.rint(counts * scale), 0, 255).astype(np.uint8)


def as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def check_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or min(shape[-2:]) < 8 or min(shape) < 1:
        raise ValueError(
            f"shape must have {ndim} axes (the last two of at least 8 pixels), not {shape}"
        )
    return shape
