"""Read windows of large arrays without loading them whole.

Any array-like with ``shape``, ``dtype`` and numpy-style slicing works: numpy arrays,
``numpy.memmap``, zarr arrays (including a TIFF opened with ``tifffile``'s ``aszarr``),
dask arrays. Only the requested window is ever converted with ``np.asarray``.

Image layout: ``(..., H, W)`` for greyscale planes, ``(..., H, W, C)`` with ``rgb=True``.
The leading axes (``...``: Z, T, ...) index planes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_samscope.core.tiling.geometry import Window

__all__ = [
    "check_array",
    "open_lazy",
    "data_signature",
    "estimate_contrast_limits",
    "plane_count",
    "plane_index",
    "plane_shape",
    "read_window",
]

#: windows read (per sampled plane) for signatures and contrast limits
_SAMPLE_GRID = 8
_SAMPLE_SIDE = 32
_SAMPLE_PLANES = 8


def check_array(image: Any, rgb: bool) -> None:
    """Refuse what is not a lazily readable image of at least 2 spatial axes."""
    shape = getattr(image, "shape", None)
    if shape is None or not hasattr(image, "__getitem__") or not hasattr(image, "dtype"):
        raise TypeError(
            f"Expected an array (numpy, zarr, dask, memmap) with shape and dtype, "
            f"not {type(image).__name__}."
        )
    need = 3 if rgb else 2
    if len(shape) < need:
        raise ValueError(
            f"The image has shape {tuple(shape)}; it needs at least {need} axes "
            f"({'(H, W, C)' if rgb else '(H, W)'})."
        )
    if rgb and shape[-1] not in (3, 4):
        raise ValueError(f"rgb=True needs 3 or 4 colour channels last, not shape {tuple(shape)}.")


def plane_shape(image: Any, rgb: bool = False) -> tuple[int, int]:
    """``(H, W)`` of the planes of ``image``."""
    shape = tuple(int(s) for s in image.shape)
    return shape[-3:-1] if rgb else shape[-2:]  # type: ignore[return-value]


def _lead(image: Any, rgb: bool) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image.shape)
    return shape[:-3] if rgb else shape[:-2]


def plane_count(image: Any, rgb: bool = False) -> int:
    """Number of 2D planes (the product of the leading axes; 1 for a 2D image)."""
    return int(np.prod(_lead(image, rgb), dtype=np.int64))


def plane_index(image: Any, plane: int | Sequence[int] | None, rgb: bool = False) -> tuple[int, ...]:
    """The leading-axes index of ``plane`` (a flat number, a tuple, or None for a 2D image).

    Raises:
        ValueError: out of range, or missing for a stack.
    """
    lead = _lead(image, rgb)
    if plane is None:
        if lead and int(np.prod(lead)) != 1:
            raise ValueError(
                f"The image has {len(lead)} leading axes {lead}: say which plane with plane=."
            )
        return (0,) * len(lead)
    if isinstance(plane, (int, np.integer)):
        if not 0 <= int(plane) < max(1, int(np.prod(lead))):
            raise ValueError(f"plane {plane} is out of range for leading axes {lead}.")
        return tuple(int(v) for v in np.unravel_index(int(plane), lead)) if lead else ()
    index = tuple(int(v) for v in plane)
    if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead)):
        raise ValueError(f"plane {index} does not index the leading axes {lead}.")
    return index


def flat_plane(image: Any, index: tuple[int, ...], rgb: bool = False) -> int:
    """The flat number of the plane at leading-axes ``index``."""
    lead = _lead(image, rgb)
    return int(np.ravel_multi_index(index, lead)) if lead else 0


def read_window(image: Any, index: tuple[int, ...], window: Window) -> np.ndarray:
    """The ``window`` ``(y0, y1, x0, x1)`` of the plane at ``index``, as a numpy array."""
    y0, y1, x0, x1 = window
    part = image[index + (slice(y0, y1), slice(x0, x1))]
    if hasattr(part, "compute") and not isinstance(part, np.ndarray):  # dask
        part = part.compute()
    return np.asarray(part)


def _sample_windows(shape: tuple[int, int]) -> list[Window]:
    """A fixed grid of small windows spread over a plane."""
    height, width = shape
    side_y, side_x = min(_SAMPLE_SIDE, height), min(_SAMPLE_SIDE, width)
    ys = np.linspace(0, height - side_y, _SAMPLE_GRID).astype(int)
    xs = np.linspace(0, width - side_x, _SAMPLE_GRID).astype(int)
    return sorted({(int(y), int(y) + side_y, int(x), int(x) + side_x) for y in ys for x in xs})


def _sample(image: Any, index: tuple[int, ...], rgb: bool) -> list[np.ndarray]:
    return [read_window(image, index, w) for w in _sample_windows(plane_shape(image, rgb))]


def data_signature(image: Any, rgb: bool = False) -> str:
    """A hash of the shape, the dtype and a fixed sample of the pixels (a grid of small
    windows in up to 8 planes spread over the stack): it tells two images apart without
    reading them whole, like micro-sam's data signature."""
    digest = hashlib.sha1(f"{tuple(int(s) for s in image.shape)};{np.dtype(image.dtype).str}".encode())
    lead = _lead(image, rgb)
    count = plane_count(image, rgb)
    flat = np.unique(np.linspace(0, count - 1, min(count, _SAMPLE_PLANES)).astype(int))
    for f in flat:
        index = tuple(int(v) for v in np.unravel_index(int(f), lead)) if lead else ()
        for part in _sample(image, index, rgb):
            digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:20]


def estimate_contrast_limits(
    image: Any, index: tuple[int, ...], rgb: bool = False, percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float] | None:
    """``(lo, hi)`` percentiles of a sample of the plane at ``index``, used for every tile so
    that all tiles share one intensity mapping (None for 8-bit or bool data, which keep
    their fixed range). A constant sample widens ``hi`` by one so the mapping is defined."""
    dtype = np.dtype(image.dtype)
    if dtype in (np.uint8, np.bool_):
        return None
    values = np.concatenate([p.reshape(-1) for p in _sample(image, index, rgb)]).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def open_lazy(path: Any) -> Any:
    """Open an image file or folder without reading its pixels.

    - ``.tif``/``.tiff``: the first series at full resolution through tifffile's zarr view;
    - a zarr folder: an array, or an OME-Zarr image (its full-resolution level, the first
      dataset of ``multiscales``), or a group whose first array is the image;
    - anything else: read whole with ``predict.image.load_image`` (small formats such as PNG).

    Raises:
        ValueError: the path does not exist or holds no image.
    """
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile
        import zarr

        store = tifffile.imread(str(path), aszarr=True)
        node = zarr.open(store, mode="r")
        return node if hasattr(node, "shape") else _first_level(node, path)
    if path.is_dir():
        import zarr

        try:
            node = zarr.open(str(path), mode="r")
        except Exception as error:
            raise ValueError(f"{str(path)!r} is a folder but not a zarr array or group.") from error
        return node if hasattr(node, "shape") else _first_level(node, path)
    from napari_samscope.core.predict.image import load_image

    return load_image(path)


def _first_level(group: Any, path: Any) -> Any:
    """The full-resolution array of a zarr group (OME-Zarr ``multiscales`` or the first array)."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return group[multiscales[0]["datasets"][0]["path"]]
    arrays = sorted(name for name, _ in group.arrays())
    if not arrays:
        raise ValueError(f"{str(path)!r} holds no image array.")
    return group[arrays[0]]
