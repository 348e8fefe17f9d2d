"""The evaluation's Otsu-in-box baseline and its figures."""

from __future__ import annotations

import numpy as np

from napari_samscope.core.training.evaluate import EvaluationResult, otsu_in_box_masks


def test_otsu_in_box_finds_a_bright_disc_and_nothing_outside_the_box() -> None:
    image = np.full((40, 50), 10.0)
    rows, cols = np.ogrid[:40, :50]
    disc = (rows - 20) ** 2 + (cols - 15) ** 2 <= 36
    image[disc] = 200.0
    image[5, 45] = 255.0  # bright pixel outside the box
    (mask,) = otsu_in_box_masks(image, np.array([[8, 13, 22, 27]]))
    assert np.array_equal(mask, disc)
    assert not mask[5, 45]


def test_otsu_in_box_averages_channels_and_leaves_constant_boxes_empty() -> None:
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    image[5:10, 5:10] = (0, 90, 255)
    masks = otsu_in_box_masks(image, np.array([[3, 3, 12, 12], [14, 14, 19, 19]]))
    assert masks[0, 5:10, 5:10].all() and masks[0].sum() == 25
    assert not masks[1].any()


def test_the_result_reports_the_baseline_next_to_the_model() -> None:
    result = EvaluationResult(box_ious=[0.9, 0.8], otsu_box_ious=[0.5, 0.7], images=1)
    figures = result.as_dict()
    assert figures["otsu_box_iou"] == 0.6
    assert figures["box_iou"] == 0.85
    assert np.isnan(EvaluationResult().otsu_box_iou)
