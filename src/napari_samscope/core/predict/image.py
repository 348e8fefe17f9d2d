"""Microscope images -> the 8-bit RGB ``(H, W, 3)`` image that SAM expects.

Rules (the contract every caller relies on):

- **8-bit data is never stretched** unless ``contrast_limits`` is given. 8-bit RGB
  ``(H, W, 3) uint8`` passes through with its values unchanged (this keeps numerical
  parity with the official predictor), RGBA drops its alpha, and 8-bit greyscale is
  replicated to three channels as it is, for consistency with RGB.
- **Every other dtype** (uint16, int, float) is mapped to 0..255 *per channel*
  (:class:`Normalization`): by default between its 0.5 and 99.5 percentiles
  (``"percentile"``), or between its minimum and maximum (``"minmax"``), or between
  explicit ``contrast_limits`` (one ``(lo, hi)`` for all channels or one pair per
  channel; the napari plugin passes the layer's contrast limits; ``"contrast limits"``
  says that they are required). When the percentiles of a channel
  coincide although the channel is not constant (sparse bright spots on a flat
  background), that channel falls back to min/max.
- **bool** images map False -> 0 and True -> 255.
- NaN and +-inf are ignored when the limits are computed and become 0 in the output.
- A numpy masked array: masked pixels are background. They are left out when the limits
  are computed and become 0 in the output (per channel, as NaN does); 8-bit data keeps
  its values elsewhere.
- Greyscale is replicated to R, G and B; two channels map to R and G (B stays 0);
  three channels map to R, G, B; more than three require ``channels=(i, j, k)``.
- A last axis of length 3 or 4 without ``channel_axis`` is read as RGB / RGBA (the
  same guess napari makes for ``rgb`` layers).
- A constant image has nothing to segment and raises ``ValueError`` unless
  ``contrast_limits`` is given or ``allow_constant=True`` (then a constant channel
  becomes 0, or keeps its value for 8-bit data). Batch encoding
  (``Predictor.encode``) allows constant images: blank planes of a stack and empty
  crops are legitimate there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_samscope.core.choices import Choice

__all__ = ["NORMALIZATIONS", "Normalization", "to_rgb_uint8", "load_image"]


class Normalization(Choice):
    """How an image's intensities are mapped to 0..255 (strings are accepted too)."""

    #: automatic 0.5-99.5 percentiles, per channel (8-bit data is never stretched)
    PERCENTILE = "percentile"
    #: explicit contrast limits (napari: the layer's, what the user sees); required
    CONTRAST = "contrast limits"
    #: minimum and maximum, per channel
    MINMAX = "minmax"


#: The automatic normalizations (those that need no ``contrast_limits``).
NORMALIZATIONS = (Normalization.PERCENTILE.value, Normalization.MINMAX.value)

_TIFF_SUFFIXES = {".tif", ".tiff"}
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def to_rgb_uint8(
    image: np.ndarray,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    normalization: Normalization | str = Normalization.PERCENTILE,
    contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    allow_constant: bool = False,
) -> np.ndarray:
    """Convert a 2D microscope image to 8-bit RGB (see the module docstring for the rules).

    Args:
        image: ``(H, W)`` greyscale, ``(H, W, 3|4)`` RGB(A), or a multichannel 2D image
            whose channel axis is ``channel_axis``. Any real dtype or bool.
        channel_axis: the axis holding the channels (negative values allowed).
        channels: indices of 1 to 3 channels to use, in R, G, B order (required when
            there are more than 3 channels). Needs ``channel_axis``.
        normalization: a :class:`Normalization` or its string: ``"percentile"`` or
            ``"minmax"`` (ignored for uint8 and bool data and when ``contrast_limits`` is
            given), or ``"contrast limits"`` (then ``contrast_limits`` is required).
        contrast_limits: ``(lo, hi)`` for every channel, or one pair per input channel
            or per selected channel.
        percentiles: the lower and upper percentile for ``"percentile"``.
        allow_constant: convert a constant image instead of refusing it.

    Returns:
        ``(H, W, 3) uint8``, C-contiguous. A new array unless the input already was a
        contiguous 8-bit RGB image without ``contrast_limits``.

    Raises:
        ValueError: for anything that is not a valid 2D image (see the module docstring).
    """
    norm = Normalization.parse(normalization, "normalization")
    if norm is Normalization.CONTRAST and contrast_limits is None:
        raise ValueError(
            "normalization='contrast limits' needs contrast_limits=(low, high); or use "
            "'percentile' or 'minmax'."
        )
    raw, masked = _split_masked(image)
    data = _as_numeric_array(raw)
    lo_p, hi_p = _check_percentiles(percentiles)
    planes = _split_channels(data, channel_axis, channels)  # list of (H, W), 1 to 3
    hidden = None if masked is None else _split_channels(masked, channel_axis, channels)
    limits = _per_channel_limits(contrast_limits, planes, data, channel_axis, channels)

    if (
        limits is None
        and data.dtype == np.uint8
        and len(planes) == 3
        and channel_axis is None
        and channels is None
    ):
        rgb = data[..., :3]
        if hidden is not None:
            rgb = rgb.copy()
            rgb[np.stack(hidden, axis=-1)] = 0
        if not allow_constant:
            _raise_if_constant(rgb)
        return np.ascontiguousarray(rgb)

    out = np.zeros(planes[0].shape + (3,), dtype=np.uint8)
    fixed_dtype = data.dtype == np.uint8 or data.dtype == np.bool_
    spans = []
    for c, plane in enumerate(planes):
        if limits is not None:
            lo, hi = limits[c]
        elif data.dtype == np.bool_:
            lo, hi = 0.0, 1.0
        elif data.dtype == np.uint8:
            lo, hi = 0.0, 255.0
        else:
            shown = plane if hidden is None else plane[~hidden[c]]
            lo, hi = _auto_limits(shown, norm, lo_p, hi_p) if shown.size else (0.0, 0.0)
        spans.append((lo, hi))
        out[..., c] = _rescale(plane, lo, hi)
        if hidden is not None:
            out[..., c][hidden[c]] = 0
    if limits is None and not allow_constant:
        _raise_if_constant_planes(planes, spans, fixed_dtype)
    if len(planes) == 1:
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
    return out


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as a numpy array (``.tif``/``.tiff`` with tifffile, others with Pillow).

    The array is returned as stored (no EXIF rotation, so that coordinates agree with
    what napari displays); pass it to :func:`to_rgb_uint8` to get 8-bit RGB. Palette
    and other exotic Pillow modes are converted to RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as an image.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No image file at {str(path)!r}; check the path.")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not an image file.")
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as pil:
                if pil.mode not in ("1", "L", "I;16", "I", "F", "RGB", "RGBA"):
                    pil = pil.convert("RGB")
                return np.array(pil)
        except UnidentifiedImageError as exc:
            known = ", ".join(sorted(_TIFF_SUFFIXES | _PIL_SUFFIXES))
            raise ValueError(
                f"Could not read {str(path)!r} as an image (supported: {known})."
            ) from exc
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("Could not read"):
            raise
        raise ValueError(f"Could not read {str(path)!r} as an image: {exc}") from exc


# --------------------------------------------------------------------------- helpers


def _split_masked(image: object) -> tuple[object, np.ndarray | None]:
    """``(data, mask)`` of a numpy masked array (``mask`` None when nothing is masked);
    ``(image, None)`` for anything else."""
    if not isinstance(image, np.ma.MaskedArray):
        return image, None
    mask = np.ma.getmaskarray(image)
    if mask.all():
        raise ValueError("Every pixel of the masked array is masked; there is nothing to segment.")
    return np.ma.getdata(image), (mask if mask.any() else None)


def _as_numeric_array(image: object) -> np.ndarray:
    data = np.asarray(image)
    if np.iscomplexobj(data):
        raise ValueError("Complex images are not supported; pass a real part or magnitude.")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise ValueError(f"The image must be numeric or bool, not dtype {data.dtype}.")
    if data.size == 0:
        raise ValueError(f"The image is empty (shape {data.shape}).")
    if data.ndim < 2:
        raise ValueError(
            f"The image must be 2D (H, W) or 2D with channels, not {data.ndim}D "
            f"(shape {data.shape})."
        )
    return data


def _check_percentiles(percentiles: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be two numbers, not {percentiles!r}.") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles!r}.")
    return lo, hi


def _split_channels(
    data: np.ndarray, channel_axis: int | None, channels: Sequence[int] | None
) -> list[np.ndarray]:
    """Return 1 to 3 ``(H, W)`` planes in R, G, B order."""
    if channel_axis is None:
        if channels is not None:
            raise ValueError("channels=... needs channel_axis=... to say which axis holds them.")
        if data.ndim == 2:
            return [data]
        if data.ndim == 3 and data.shape[-1] in (3, 4):
            return [data[..., c] for c in range(3)]  # RGB, or RGBA without alpha
        raise ValueError(
            f"Cannot tell the axes of a {data.ndim}D image of shape {data.shape}: pass "
            "channel_axis=... for a multichannel 2D image, or one 2D plane of a stack."
        )
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ValueError(f"channel_axis must be an integer, not {channel_axis!r}.")
    if data.ndim != 3:
        raise ValueError(
            f"With channel_axis the image must have 3 axes (two spatial and one channel "
            f"axis), but it has shape {data.shape}."
        )
    if not -data.ndim <= channel_axis < data.ndim:
        raise ValueError(
            f"channel_axis={channel_axis} is out of range for an image of shape {data.shape}."
        )
    stack = np.moveaxis(data, int(channel_axis), 0)
    n = stack.shape[0]
    if channels is None:
        if n > 3:
            raise ValueError(
                f"The image has {n} channels; choose 3 of them (R, G, B) with "
                "channels=(i, j, k), or fewer with channels=(i,) or (i, j)."
            )
        return list(stack)
    chosen = [int(c) for c in np.atleast_1d(np.asarray(channels))]
    if not 1 <= len(chosen) <= 3:
        raise ValueError(f"channels must name 1 to 3 channels, not {len(chosen)}.")
    for c in chosen:
        if not -n <= c < n:
            raise ValueError(f"Channel {c} does not exist; the image has {n} channels.")
    return [stack[c] for c in chosen]


def _per_channel_limits(
    contrast_limits: object,
    planes: list[np.ndarray],
    data: np.ndarray,
    channel_axis: int | None,
    channels: Sequence[int] | None,
) -> list[tuple[float, float]] | None:
    if contrast_limits is None:
        return None
    arr = np.asarray(contrast_limits, dtype=np.float64)
    if arr.shape == (2,):
        pairs = [arr] * len(planes)
    elif arr.ndim == 2 and arr.shape[1] == 2:
        n_in = data.shape[channel_axis] if channel_axis is not None else None
        if arr.shape[0] == len(planes):
            pairs = list(arr)
        elif channels is not None and arr.shape[0] == n_in:
            pairs = [arr[int(c)] for c in np.atleast_1d(np.asarray(channels))]
        else:
            raise ValueError(
                f"contrast_limits has {arr.shape[0]} pairs, but {len(planes)} channels are used."
            )
    else:
        raise ValueError(
            f"contrast_limits must be (low, high) or one (low, high) per channel, "
            f"not shape {arr.shape}."
        )
    out = []
    for lo, hi in pairs:
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"contrast_limits need finite low < high, not ({lo}, {hi}).")
        out.append((float(lo), float(hi)))
    return out


def _auto_limits(
    plane: np.ndarray, normalization: Normalization, lo_p: float, hi_p: float
) -> tuple[float, float]:
    values = plane
    if np.issubdtype(plane.dtype, np.floating):
        finite = np.isfinite(plane)
        if not finite.all():
            if not finite.any():
                raise ValueError("The image holds only NaN or infinite values.")
            values = plane[finite]
    vmin, vmax = float(values.min()), float(values.max())
    if normalization is Normalization.PERCENTILE and vmax > vmin:
        lo, hi = (float(v) for v in np.percentile(values, [lo_p, hi_p]))
        if hi > lo:
            return lo, hi
    return vmin, vmax


def _rescale(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 255]`` (clipped, rounded); non-finite -> 0; ``hi <= lo`` -> 0."""
    if hi <= lo:
        return np.zeros(plane.shape, dtype=np.uint8)
    if plane.dtype == np.uint8 and lo == 0.0 and hi == 255.0:
        return plane
    if plane.dtype == np.bool_:
        plane = plane.view(np.uint8)
    work = plane.astype(np.float32) if plane.dtype.itemsize <= 4 else plane.astype(np.float64)
    work -= np.asarray(lo, dtype=work.dtype)
    work *= np.asarray(255.0 / (hi - lo), dtype=work.dtype)
    np.clip(work, 0.0, 255.0, out=work)
    np.nan_to_num(work, copy=False, nan=0.0)  # clip keeps NaN; +-inf are already clipped
    out = np.rint(work).astype(np.uint8)
    if np.issubdtype(plane.dtype, np.floating):
        out[~np.isfinite(plane)] = 0
    return out


def _raise_if_constant(rgb: np.ndarray) -> None:
    if rgb.min() == rgb.max():
        raise ValueError(
            f"The image is constant (every value is {rgb.flat[0]}); there is nothing to "
            "segment. Pass contrast_limits=(low, high) to encode it anyway."
        )


def _raise_if_constant_planes(
    planes: list[np.ndarray], spans: list[tuple[float, float]], fixed_dtype: bool
) -> None:
    if fixed_dtype:
        if all(p.min() == p.max() for p in planes) and len({p.flat[0] for p in planes}) == 1:
            _raise_if_constant(planes[0])
        return
    if all(hi <= lo for lo, hi in spans):
        raise ValueError(
            f"The image is constant (every finite value is {spans[0][0]}); there is nothing "
            "to segment. Pass contrast_limits=(low, high) to encode it anyway."
        )
