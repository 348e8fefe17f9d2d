"""Automatic instance segmentation (AIS) from the decoder's maps: seeded watershed.

The recipe and the parameter names and defaults are micro-sam's
(``InstanceSegmentationWithDecoder.generate``):

1. smooth the foreground map (Gaussian, ``foreground_smoothing``) and both distance maps
   (``distance_smoothing``);
2. foreground = smoothed foreground > ``foreground_threshold``;
3. seeds = connected components (8-connected) of centre distance < ``center_distance_threshold``
   and boundary distance < ``boundary_distance_threshold``, inside the foreground;
4. seeded watershed (4-connected) of the boundary-distance map inside the foreground;
5. objects smaller than ``min_size`` pixels are removed and the ids made consecutive.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

__all__ = ["AISParams", "NumberParams", "instances_from_maps"]

# Gaussian support of +-3 sigma with mirrored borders, as vigra's gaussianSmoothing
# (which micro-sam uses) does.
_TRUNCATE = 3.0
_BORDER = "mirror"


class NumberParams:
    """Base of the frozen parameter dataclasses whose every field is a finite number >= 0
    (AIS, APG): the checks and the keyword constructor they share."""

    #: how the parameters are named in error messages
    kind = "instance segmentation"

    def _check_numbers(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{f.name} must be a number, not {type(value).__name__}.")
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, not {value}.")

    @classmethod
    def from_kwargs(cls, **params: Any) -> Any:
        """Build from keyword arguments; an unknown name is a clear error."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"Unknown {cls.kind} parameter(s) {unknown}; valid: {sorted(known)}.")
        return cls(**params)


@dataclass(frozen=True)
class AISParams(NumberParams):
    """Parameters of :func:`instances_from_maps`, with micro-sam's names and defaults.

    Attributes:
        center_distance_threshold: seeds where the centre distance is below this.
        boundary_distance_threshold: ... and the boundary distance is below this.
        foreground_threshold: foreground where the (smoothed) foreground map is above this.
        foreground_smoothing: Gaussian sigma for the foreground map (0: none).
        distance_smoothing: Gaussian sigma for both distance maps (0: none).
        min_size: objects with fewer pixels are removed (0: keep all).
    """

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0

    def __post_init__(self) -> None:
        self._check_numbers()
        if int(self.min_size) != self.min_size:
            raise ValueError(f"min_size must be a whole number of pixels, not {self.min_size}.")


    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Images with fewer pixels are smoothed on one thread (the pool would cost more than it saves).
_PARALLEL_PIXELS = 256 * 256


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode=_BORDER, truncate=_TRUNCATE)


def _smooth_rows(image: np.ndarray, sigma: float, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``_smooth(image, sigma)``, computed from those rows and the
    kernel's radius of rows around them: every output pixel reads the same input pixels
    with the same weights in the same order, so the rows are identical to the whole
    image's (the mirrored border only ever applies at the image's own edges)."""
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    lo, hi = max(0, start - radius), min(image.shape[0], stop + radius)
    return _smooth(image[lo:hi], sigma)[start - lo : stop - lo]


def _threads() -> int:
    """How many threads the post-processing uses: torch's intra-op setting, the budget
    the model itself runs with (``torch.set_num_threads``)."""
    import torch

    return max(1, int(torch.get_num_threads()))


def _smooth_all(images: Sequence[np.ndarray], sigmas: Sequence[float], threads: int) -> list[np.ndarray]:
    """``_smooth`` of each image, in row bands on ``threads`` threads (scipy's filters
    release the GIL); identical to smoothing each image whole."""
    if threads < 2 or images[0].size < _PARALLEL_PIXELS:
        return [_smooth(im, s) for im, s in zip(images, sigmas)]
    height = images[0].shape[0]
    cuts = np.linspace(0, height, threads + 1).astype(int)
    bands = list(zip(cuts[:-1], cuts[1:]))
    with ThreadPoolExecutor(threads) as pool:
        parts = [
            [pool.submit(_smooth_rows, im, s, int(a), int(b)) for a, b in bands] if s > 0 else None
            for im, s in zip(images, sigmas)
        ]
        return [
            im if jobs is None else np.concatenate([j.result() for j in jobs], axis=0)
            for im, jobs in zip(images, parts)
        ]


def _check_maps(maps: Any) -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(
            "maps must have shape (3, H, W) (foreground, centre distance, boundary distance), "
            f"not {arr.shape}."
        )
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"maps must be numeric, not {arr.dtype}.")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"maps are empty: shape {arr.shape}.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("maps contain NaN or infinite values.")
    return arr


def _watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, threads: int) -> np.ndarray:
    """skimage's seeded watershed (4-connected) of ``image`` inside ``mask``, as int32 labels.

    Flooding never leaves the 4-connected component of the mask it starts in, so the
    components are independent: on two or more threads they are split into a top and a
    bottom group of about equal area, each flooded in its own row band (skimage's
    flooding releases the GIL). Within a component the flooding order is the same; only
    a pixel with two seeds as 4-neighbours could go the other way, as the order in which
    seeds leave skimage's heap is not fixed when their keys tie.
    """
    if threads < 2 or mask.size < _PARALLEL_PIXELS:
        return watershed(image, markers=markers, mask=mask, connectivity=1)
    components, count = ndimage.label(mask)  # 4-connected, as the flooding
    if count < 2:
        return watershed(image, markers=markers, mask=mask, connectivity=1)
    rows = np.array([(box[0].start, box[0].stop) for box in ndimage.find_objects(components)])
    area = np.bincount(components.ravel(), minlength=count + 1)[1:]
    order = np.argsort(rows.sum(axis=1), kind="stable")  # by the middle row of each box
    cumulative = np.cumsum(area[order])
    split = int(np.clip(np.searchsorted(cumulative, cumulative[-1] / 2) + 1, 1, count - 1))
    in_top = np.zeros(count + 1, dtype=bool)
    in_top[order[:split] + 1] = True
    top = in_top[components]
    top_rows = slice(0, int(rows[order[:split], 1].max()))
    bottom_rows = slice(int(rows[order[split:], 0].min()), mask.shape[0])
    bands = ((top_rows, top), (bottom_rows, mask & ~top))
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(watershed, image[band], markers=markers[band], mask=part[band], connectivity=1)
            for band, part in bands
        ]
        labels = np.zeros(mask.shape, dtype=np.int32)
        for (band, _part), job in zip(bands, jobs):
            labels[band] += job.result()  # the two groups never share a pixel
    return labels


def instances_from_maps(maps: Any, **params: Any) -> np.ndarray:
    """Instances from the decoder's ``(3, H, W)`` maps (foreground, centre distance,
    boundary distance), by micro-sam's seeded watershed; see the module docstring.

    Args:
        maps: ``(3, H, W)`` array, values in [0, 1] (from ``model.instance_maps(image)``).
        **params: :class:`AISParams` fields (``center_distance_threshold=0.5``,
            ``boundary_distance_threshold=0.5``, ``foreground_threshold=0.5``,
            ``foreground_smoothing=1.0``, ``distance_smoothing=1.6``, ``min_size=0``).

    Returns:
        ``(H, W)`` uint32 labels, 0 background, objects numbered 1..N.

    Raises:
        ValueError / TypeError: bad maps or parameters.
    """
    p = AISParams.from_kwargs(**params)
    arr = _check_maps(maps)
    threads = _threads()
    foreground, center, boundary = _smooth_all(
        arr, (p.foreground_smoothing, p.distance_smoothing, p.distance_smoothing), threads
    )
    mask = foreground > p.foreground_threshold
    seeds = (center < p.center_distance_threshold) & (boundary < p.boundary_distance_threshold)
    seeds &= mask
    markers, count = ndimage.label(seeds, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(mask.shape, dtype=np.uint32)
    labels = _watershed(boundary, markers, mask, threads).astype(np.uint32, copy=False)
    if p.min_size > 0:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= p.min_size
        keep[0] = False
        lut = np.zeros(sizes.shape, dtype=np.uint32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        labels = lut[labels]
    return labels
