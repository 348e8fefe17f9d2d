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


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode=_BORDER, truncate=_TRUNCATE)


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
    foreground = _smooth(arr[0], p.foreground_smoothing)
    center = _smooth(arr[1], p.distance_smoothing)
    boundary = _smooth(arr[2], p.distance_smoothing)
    mask = foreground > p.foreground_threshold
    seeds = (center < p.center_distance_threshold) & (boundary < p.boundary_distance_threshold)
    seeds &= mask
    markers, count = ndimage.label(seeds, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(mask.shape, dtype=np.uint32)
    labels = watershed(boundary, markers=markers, mask=mask, connectivity=1)
    labels = labels.astype(np.uint32, copy=False)
    if p.min_size > 0:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= p.min_size
        keep[0] = False
        lut = np.zeros(sizes.shape, dtype=np.uint32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        labels = lut[labels]
    return labels
