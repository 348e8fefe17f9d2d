"""Exact mask postprocessing restricted to the window where a mask can be.

Segment-everything needs, for each surviving candidate, its stability score and its
mask at the original size. :class:`WindowedUpsampler` computes the official
postprocessing (``transforms.MaskUpsampler``: bilinear to ``S x S``, crop, bilinear to
the original size) only on the window of output pixels that read the low-resolution
logits above the lowest threshold; outside it every value is below every threshold.
"""

from __future__ import annotations

import torch

from napari_samscope.core.predict.transforms import MaskUpsampler

__all__ = ["WindowedUpsampler"]


class WindowedUpsampler(MaskUpsampler):
    """The official mask postprocessing, evaluated only where a mask can be.

    The official postprocessing (bilinear to ``S x S``, crop, bilinear to the original
    size; see ``transforms.MaskUpsampler``) is separable, and every output pixel is a
    convex combination of a few low-resolution logits. So if every low-resolution logit
    outside the box ``rows x cols`` is ``<= t``, every output pixel outside the outputs
    that read that box is ``<= t`` too: :meth:`window` computes only that window (the
    same values as the full computation there), which is what makes stability scores
    and masks cheap for small objects on large images.

    It is a :class:`~napari_samscope.core.predict.transforms.MaskUpsampler` (same
    arguments, same full-image methods) with :meth:`window` added.
    """

    def window(
        self, low: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]
    ) -> tuple[int, int, torch.Tensor]:
        """Upsample the outputs that read the low-resolution box ``rows x cols`` (inclusive).

        Args:
            low: ``(L, L)`` float32 logits.
            rows, cols: inclusive ranges of low-resolution rows / columns.

        Returns:
            ``(y0, x0, logits)``: ``logits`` is ``(h, w)`` float32, the full-resolution
            logits of rows ``y0..y0+h-1`` and columns ``x0..x0+w-1`` (possibly empty).
        """
        ya, yb = self._rows.outputs_reading(*rows)
        xa, xb = self._cols.outputs_reading(*cols)
        if ya == yb or xa == xb:
            return ya, xa, low.new_zeros((yb - ya, xb - xa))
        r_index, r_weight = self._rows.on(low.device)
        c_index, c_weight = self._cols.on(low.device)
        r_index, r_weight = r_index[:, ya:yb], r_weight[:, ya:yb]
        c_index, c_weight = c_index[:, xa:xb], c_weight[:, xa:xb]
        lo, hi = int(self._rows.index[0, ya]), int(self._rows.index[-1, yb - 1])
        # columns first, on the transposed low rows the window reads: gathers of whole
        # contiguous rows are much faster than gathers along the last axis
        part_t = low[lo : hi + 1].T.contiguous()  # (L, n)
        cols_t = part_t.index_select(0, c_index[0])
        cols_t *= c_weight[0][:, None]
        for t in range(1, c_index.shape[0]):
            tap = part_t.index_select(0, c_index[t])
            tap *= c_weight[t][:, None]
            cols_t += tap
        cols_up = cols_t.T.contiguous()  # (n, w)
        r_index = r_index - lo
        out = cols_up.index_select(0, r_index[0])  # (h, w)
        out *= r_weight[0][:, None]
        for t in range(1, r_index.shape[0]):
            tap = cols_up.index_select(0, r_index[t])
            tap *= r_weight[t][:, None]
            out += tap
        return ya, xa, out
