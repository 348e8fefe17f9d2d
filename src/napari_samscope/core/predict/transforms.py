"""Geometry between the original image and the model frame, both ways.

- Forward: resize the longest side to the model's input size ``S`` with Pillow's
  bilinear filter (exactly the official preprocessing, which resizes through
  torchvision's PIL path), normalise with the model's pixel mean/std and zero-pad at
  the bottom and right to ``S x S``. Prompts in original ``(x, y)`` pixels are scaled
  per axis by ``new / old`` as the official ``apply_coords`` does.
- Backward: :class:`MaskUpsampler` maps low-resolution logits ``(N, L, L)`` to the
  original size. The official postprocessing (bilinear to ``S x S``, crop to the
  resized image, bilinear to the original size, ``align_corners=False``) is linear and
  separable, so it equals ``Ah @ low @ Aw.T`` for two fixed matrices. Each row of those
  matrices has at most a handful of neighbouring non-zeros, so they are stored banded
  and applied with gathers: a few million multiply-adds instead of the two full
  interpolations (or the dense ``Ah @ low @ Aw.T``, which wastes ~1 GFLOP on zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

_CHUNK_ELEMENTS = 1 << 25  # full-resolution float32 logits held at once off the CPU (128 MB)
_BAND_ELEMENTS = 1 << 18  # float32 output values per row band (1 MB: stays in the CPU cache)

__all__ = [
    "resize_longest_side_shape",
    "resize_rgb_uint8",
    "resize_rgb_to",
    "preprocess",
    "preprocess_batch",
    "apply_coords",
    "apply_boxes",
    "postprocess_matrix",
    "postprocess_taps",
    "MaskUpsampler",
    "Taps",
]


def resize_longest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the longest side equal to ``target``, rounded as ``int(x + 0.5)``."""
    if h <= 0 or w <= 0 or target <= 0:
        raise ValueError(f"Sizes must be positive, not h={h}, w={w}, target={target}.")
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_rgb_uint8(image: np.ndarray, target: int) -> np.ndarray:
    """Resize ``(H, W, 3) uint8`` so that its longest side is ``target`` (Pillow BILINEAR).

    Returns ``(new_h, new_w, 3) uint8``; bit-identical to the official preprocessing.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"resize_rgb_uint8 needs an (H, W, 3) uint8 image, not {image.shape} {image.dtype}; "
            "convert it with core.image.to_rgb_uint8 first."
        )
    return resize_rgb_to(image, resize_longest_side_shape(image.shape[0], image.shape[1], target))


def resize_rgb_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3) uint8`` to ``size`` ``(new_h, new_w)`` with Pillow's bilinear
    filter, as the official preprocessing resizes (a no-op copy at the same size)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"resize_rgb_to needs an (H, W, 3) uint8 image, not {image.shape} {image.dtype}; "
            "convert it with core.image.to_rgb_uint8 first."
        )
    new_h, new_w = (int(v) for v in size)
    pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    return np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))


def preprocess(
    resized: np.ndarray,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    img_size: int,
) -> torch.Tensor:
    """``(h, w, 3) uint8`` resized image -> normalised, zero-padded ``(1, 3, S, S)`` float32.

    The tensor lives on the device of ``pixel_mean``. ``pixel_mean``/``pixel_std`` are
    ``(3, 1, 1)`` as in the model; the operation order matches the official one exactly.
    """
    return preprocess_batch([resized], pixel_mean, pixel_std, img_size)


def preprocess_batch(
    resized: Sequence[np.ndarray],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    img_size: int,
) -> torch.Tensor:
    """Several resized ``(h, w, 3) uint8`` images of one size -> ``(B, 3, S, S)`` float32."""
    if len(resized) == 0:
        raise ValueError("preprocess_batch needs at least one image.")
    shapes = {im.shape for im in resized}
    if len(shapes) != 1:
        raise ValueError(f"All images of a batch must have the same size, got {sorted(shapes)}.")
    h, w, _ = resized[0].shape
    if max(h, w) > img_size:
        raise ValueError(f"A resized image of {h}x{w} does not fit the model input {img_size}.")
    device = pixel_mean.device
    x = torch.from_numpy(np.stack(resized)).to(device)  # B,h,w,3 uint8
    x = x.permute(0, 3, 1, 2).float()  # B,3,h,w
    x = (x - pixel_mean.float()) / pixel_std.float()
    return F.pad(x, (0, img_size - w, 0, img_size - h))


def apply_coords(
    coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """``(..., 2)`` ``(x, y)`` in original pixels -> the resized-image frame (float64)."""
    (old_h, old_w), (new_h, new_w) = original_size, input_size
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (new_w / old_w)
    out[..., 1] = out[..., 1] * (new_h / old_h)
    return out


def apply_boxes(
    boxes: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """``(N, 4)`` XYXY boxes in original pixels -> the resized-image frame (float64)."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, input_size).reshape(
        -1, 4
    )


@lru_cache(maxsize=32)
def postprocess_matrix(low: int, img_size: int, crop: int, out: int) -> np.ndarray:
    """The 1D postprocessing along one axis as an ``(out, low)`` float64 matrix.

    It is the official sequence applied to the identity: bilinear ``low -> img_size``,
    keep the first ``crop`` samples, bilinear ``crop -> out`` (``align_corners=False``).
    Each step is run in float32, exactly as the official code runs it, so the
    interpolation weights are the official ones; only their product is formed in float64.
    """
    up = _interp_matrix(low, img_size)[:crop]  # crop x low
    down = _interp_matrix(crop, out)  # out x crop
    return down @ up


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix of float32 bilinear resizing ``n_in -> n_out``."""
    eye = torch.eye(n_in, dtype=torch.float32).reshape(1, n_in, n_in, 1)  # channel k = e_k
    res = F.interpolate(eye, (n_out, 1), mode="bilinear", align_corners=False)
    return res[0, :, :, 0].T.double().numpy()


class Taps:
    """One axis of the postprocessing: an ``(out, low)`` matrix whose rows have
    contiguous support, stored as taps.

    ``index[t, o]`` / ``weight[t, o]`` are the low-resolution sample and the weight of
    tap ``t`` of output ``o`` (weight 0 past a row's support), and ``first[o]`` ..
    ``last[o]`` the samples with a non-zero weight (both non-decreasing along ``o``).
    """

    def __init__(self, matrix: np.ndarray) -> None:
        n_out, n_low = matrix.shape
        nonzero = matrix != 0
        self.first = nonzero.argmax(axis=1)
        self.last = n_low - 1 - nonzero[:, ::-1].argmax(axis=1)
        taps = int((self.last - self.first).max()) + 1
        index = self.first[None, :] + np.arange(taps)[:, None]  # taps x out
        valid = index <= self.last[None, :]
        index = np.minimum(index, n_low - 1)
        weight = np.where(valid, matrix[np.arange(n_out)[None, :], index], 0.0)
        self.index = torch.from_numpy(index)
        self.weight = torch.from_numpy(weight.astype(np.float32))
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, weight)`` on ``device`` (copied there once)."""
        if device not in self._on_device:
            self._on_device[device] = (self.index.to(device), self.weight.to(device))
        return self._on_device[device]

    def outputs_reading(self, lo: int, hi: int) -> tuple[int, int]:
        """``[a, b)``: the outputs whose support meets the samples ``lo..hi``."""
        a = int(np.searchsorted(self.last, lo, side="left"))
        b = int(np.searchsorted(self.first, hi, side="right"))
        return a, max(a, b)


@lru_cache(maxsize=32)
def postprocess_taps(low: int, img_size: int, crop: int, out: int) -> Taps:
    """:class:`Taps` of :func:`postprocess_matrix` (cached per size)."""
    return Taps(postprocess_matrix(low, img_size, crop, out))


class MaskUpsampler:
    """Low-resolution logits -> logits or masks at the original image size.

    Equal (to float32 rounding) to the official ``Sam.postprocess_masks``. Instances
    are cheap to create; the banded matrices are cached per size.

    Args:
        original_size: ``(H, W)`` of the original image.
        input_size: ``(h, w)`` of the resized image inside the ``S x S`` model input.
        img_size: ``S``, the model input side.
        lowres_size: ``L``, the side of the low-resolution logits (``4 * E``).
    """

    def __init__(
        self,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
        img_size: int,
        lowres_size: int,
    ) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.img_size = int(img_size)
        self.lowres_size = int(lowres_size)
        self._rows = postprocess_taps(
            self.lowres_size, self.img_size, self.input_size[0], self.original_size[0]
        )
        self._cols = postprocess_taps(
            self.lowres_size, self.img_size, self.input_size[1], self.original_size[1]
        )

    @property
    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """The dense ``Ah (H, L)`` and ``Aw (W, L)`` (float64), for reference and tests."""
        L, S = self.lowres_size, self.img_size
        return (
            postprocess_matrix(L, S, self.input_size[0], self.original_size[0]),
            postprocess_matrix(L, S, self.input_size[1], self.original_size[1]),
        )

    def logits(self, low: torch.Tensor) -> torch.Tensor:
        """``(..., L, L)`` logits -> ``(..., H, W)`` float32 logits on ``low``'s device."""
        return self._apply(low, None)

    def logits_window(self, low: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
        """``(..., L, L)`` logits -> the ``(..., y1 - y0, x1 - x0)`` output logits of
        ``window`` ``(y0, y1, x0, x1)`` only (the same values as :meth:`logits` there)."""
        y0, y1, x0, x1 = window
        return self._apply(low, None, slice(y0, y1), slice(x0, x1))

    def masks(self, low: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """``(..., L, L)`` logits -> ``(..., H, W)`` bool masks ``logits > threshold``."""
        return self._apply(low, float(threshold))

    def mask_window(self, low: torch.Tensor, threshold: float = 0.0) -> tuple[int, int, torch.Tensor]:
        """One mask, computed only on the window of output pixels that can be in it.

        Every output pixel is a convex combination of low-resolution logits, so outside
        the outputs that read the box of logits ``> threshold`` no pixel is in the mask.
        Inside the window the values are those of :meth:`masks` (the same operations).

        Args:
            low: ``(L, L)`` logits.

        Returns:
            ``(y0, x0, mask)``: ``mask`` is the ``(h, w)`` bool window whose top-left pixel
            is ``(y0, x0)`` in the original image (``(0, 0)`` when the mask is empty).
        """
        above = low > threshold
        rows = torch.nonzero(above.any(dim=1)).flatten().tolist()
        if not rows:
            return 0, 0, torch.zeros((0, 0), dtype=torch.bool, device=low.device)
        cols = torch.nonzero(above.any(dim=0)).flatten().tolist()
        ya, yb = self._rows.outputs_reading(rows[0], rows[-1])
        xa, xb = self._cols.outputs_reading(cols[0], cols[-1])
        window = self._apply(low[None], float(threshold), slice(ya, yb), slice(xa, xb))
        return ya, xa, window[0]

    def _apply(
        self,
        low: torch.Tensor,
        threshold: float | None,
        ys: slice = slice(None),
        xs: slice = slice(None),
    ) -> torch.Tensor:
        """The output rows ``ys`` and columns ``xs`` (default: all) of every mask."""
        L = self.lowres_size
        if low.shape[-2:] != (L, L):
            raise ValueError(
                f"Expected low-resolution logits (..., {L}, {L}), got {tuple(low.shape)}."
            )
        lead = low.shape[:-2]
        flat = low.reshape(-1, L, L).float()
        row_idx, row_w = (t[:, ys] for t in self._rows.on(low.device))
        col_idx, col_w = (t[:, xs] for t in self._cols.on(low.device))
        H, W = row_idx.shape[1], col_idx.shape[1]
        out = torch.empty(
            (flat.shape[0], H, W),
            dtype=torch.float32 if threshold is None else torch.bool,
            device=low.device,
        )
        if low.device.type == "cpu":
            # one mask at a time, in bands of output rows: every intermediate stays in the
            # CPU cache and none is image-sized (fresh pages cost about as much as the sums)
            step, band = 1, max(16, _BAND_ELEMENTS // max(W, 1))
        else:  # an accelerator wants few large kernels; memory bounded by _CHUNK_ELEMENTS
            step, band = max(1, _CHUNK_ELEMENTS // max(H * W, 1)), max(H, 1)
        for start in range(0, flat.shape[0], step):
            masks = slice(start, start + step)
            cols = _upsample_columns(flat[masks], col_idx, col_w)  # (n, L, W)
            for top in range(0, H, band):
                rows = slice(top, min(H, top + band))
                # rows: gathers of whole contiguous rows of the column-upsampled logits
                full = cols.index_select(1, row_idx[0, rows]).mul_(row_w[0, rows, None])
                for t in range(1, row_idx.shape[0]):
                    full.addcmul_(cols.index_select(1, row_idx[t, rows]), row_w[t, rows, None])
                if threshold is None:
                    out[masks, rows] = full
                else:
                    torch.gt(full, threshold, out=out[masks, rows])
        return out.reshape(*lead, H, W)


def _upsample_columns(
    part: torch.Tensor, col_idx: torch.Tensor, col_w: torch.Tensor
) -> torch.Tensor:
    """``(n, L, L)`` logits -> ``(n, L, W)``: the column taps, applied on the transposed
    logits so that every gather copies whole contiguous rows (a gather along the last
    axis is several times slower); the same products and sums, in the same order."""
    low_t = part.transpose(1, 2).contiguous()  # (n, L columns, L rows)
    cols_t = low_t.index_select(1, col_idx[0]).mul_(col_w[0][:, None])
    for t in range(1, col_idx.shape[0]):
        cols_t.addcmul_(low_t.index_select(1, col_idx[t]), col_w[t][:, None])
    return cols_t.transpose(1, 2).contiguous()


