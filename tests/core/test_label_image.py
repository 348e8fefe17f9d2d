"""One way to paint masks into a label image (largest first), and packed masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict.label_image import (
    PackedMask,
    PaintOrder,
    paint_labels,
    paint_order,
)


def _masks() -> np.ndarray:
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[0] = True  # big
    masks[1, 2:4, 2:4] = True  # small, inside the big one (area 4)
    masks[2, 6:8, 6:8] = True  # the same area as mask 1
    masks[3, 7:9, 7:9] = True  # equal area, overlapping mask 2
    return masks


def test_the_largest_mask_is_painted_first_and_later_masks_win_ties():
    masks = _masks()
    labels = paint_labels(masks)
    assert labels.dtype == np.uint32 and labels.shape == (12, 12)
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and labels[7, 7] == 4
    # the same from a list of masks and from packed masks
    np.testing.assert_array_equal(paint_labels(list(masks)), labels)
    packed = [PackedMask.from_mask(m, 0, 0, m.shape) for m in masks]
    np.testing.assert_array_equal(paint_labels(packed, (12, 12)), labels)
    # the napari labels' rule: of equal areas the earlier one wins
    assert paint_labels(masks, earlier_wins_ties=True)[7, 7] == 3


def test_orders_values_and_dtype():
    masks = _masks()
    scores = np.array([0.9, 0.1, 0.5, 0.4])
    assert paint_labels(masks, order="index")[3, 3] == 2
    assert paint_labels(masks, order=PaintOrder.SCORE, scores=scores)[3, 3] == 1
    labels = paint_labels(masks[1:3], values=[7, 9], dtype=np.uint8)
    assert labels.dtype == np.uint8 and labels[3, 3] == 7 and labels[7, 7] == 9
    np.testing.assert_array_equal(paint_order([5, 9, 9, 1]), [1, 2, 0, 3])
    np.testing.assert_array_equal(paint_order([5, 9, 9, 1], earlier_wins_ties=True), [2, 1, 0, 3])
    with pytest.raises(ValueError, match="order must be one of"):
        paint_labels(masks, order="size")
    with pytest.raises(ValueError, match="scores"):
        paint_labels(masks, order="score")
    with pytest.raises(ValueError, match="shape"):
        paint_labels([])
    assert paint_labels([], (3, 4)).shape == (3, 4)


def test_packed_mask_round_trip_and_offset():
    mask = np.zeros((9, 7), dtype=bool)
    mask[2:5, 1:3] = True
    mask[6, 4] = True
    packed = PackedMask.from_mask(mask, 10, 20, (30, 40))
    assert packed.bbox == (21, 12, 3, 4) and packed.area == 7
    assert packed.box_xyxy == (21, 12, 24, 16)
    full = packed.full_mask()
    assert full.shape == (30, 40) and full.sum() == 7
    np.testing.assert_array_equal(full[10:19, 20:27], mask)
    empty = PackedMask.from_mask(np.zeros((3, 3), bool), 0, 0, (5, 5))
    assert empty.area == 0 and not empty.mask.any() and empty.crop_mask.shape == (0, 0)


def test_everything_records_paint_through_the_same_function():
    from napari_samscope.core.everything.records import EverythingResult, MaskRecord

    masks = _masks()
    fields = dict(predicted_iou=0.9, stability_score=0.95, point_coords=(1.0, 1.0),
                  crop_box=(0, 0, 12, 12))
    records = [MaskRecord.from_mask(m, 0, 0, (12, 12), **fields) for m in masks]
    assert isinstance(records[0], PackedMask)
    np.testing.assert_array_equal(EverythingResult(records, (12, 12)).to_label_image(),
                                  paint_labels(masks))
