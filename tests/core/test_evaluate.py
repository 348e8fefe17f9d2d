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


def test_every_mean_comes_with_its_standard_error_and_the_paired_margin() -> None:
    import pytest

    from napari_samscope.core.training.evaluate import standard_error

    result = EvaluationResult(point_ious=[0.2, 0.4, 0.9], point_multimask_ious=[0.5, 0.5, 0.5],
                              box_ious=[0.9, 0.8, 0.4], otsu_box_ious=[0.5, 0.7, 0.3], images=1)
    figures = result.as_dict()
    # sample standard deviation (ddof=1) over sqrt(n), by hand
    assert figures["point_iou_se"] == pytest.approx(np.sqrt(((0.2 - 0.5) ** 2 + 0.1**2 + 0.4**2) / 2 / 3), abs=1e-4)
    assert figures["point_multimask_iou_se"] == 0.0
    assert figures["box_iou_se"] == pytest.approx(np.std([0.9, 0.8, 0.4], ddof=1) / np.sqrt(3), abs=1e-4)
    # paired: the margins 0.4, 0.1, 0.1 vary less than either mean's objects
    assert figures["box_minus_otsu"] == pytest.approx(0.2, abs=1e-4)
    assert figures["box_minus_otsu_se"] == pytest.approx(0.1, abs=1e-4)
    assert figures["box_minus_otsu_se"] < figures["box_iou_se"]
    assert np.isnan(standard_error([0.7])) and np.isnan(standard_error([]))
    assert np.isnan(EvaluationResult(box_ious=[0.5], otsu_box_ious=[0.4]).as_dict()["box_iou_se"])


def test_paired_differences_of_two_results_and_a_mismatch_refused() -> None:
    import pytest

    from napari_samscope.core.training.evaluate import paired_differences

    base = EvaluationResult(point_ious=[0.5, 0.6, 0.9], point_multimask_ious=[0.5, 0.5, 0.5],
                            box_ious=[0.7, 0.8, 0.9], otsu_box_ious=[0.1, 0.1, 0.1], images=1)
    other = EvaluationResult(point_ious=[0.6, 0.7, 0.9], point_multimask_ious=[0.5, 0.5, 0.5],
                             box_ious=[0.8, 0.8, 0.8], otsu_box_ious=[0.1, 0.1, 0.1], images=1)
    diffs = paired_differences(base, other)
    assert diffs["point_iou_diff"] == pytest.approx(0.0667, abs=1e-4)
    # differences 0.1, 0.1, 0: their own spread, far below the spread of either set of IoUs
    assert diffs["point_iou_diff_se"] == pytest.approx(np.std([0.1, 0.1, 0.0], ddof=1) / np.sqrt(3), abs=1e-4)
    assert diffs["point_multimask_iou_diff"] == 0.0 and diffs["point_multimask_iou_diff_se"] == 0.0
    assert diffs["box_iou_diff"] == pytest.approx(0.0, abs=1e-9)
    assert diffs["box_iou_diff_se"] == pytest.approx(0.1 / np.sqrt(3), abs=1e-4)  # 0.1, 0, -0.1
    fewer = EvaluationResult(point_ious=[0.5], point_multimask_ious=[0.5], box_ious=[0.7],
                             otsu_box_ious=[0.1], images=1)
    with pytest.raises(ValueError, match="same images, min_area and seed"):
        paired_differences(base, fewer)


def _discs(centres: list[tuple[int, int]], radius: int, shape=(64, 96)) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


def test_threshold_watershed_splits_two_touching_discs_and_keeps_separate_ones() -> None:
    from napari_samscope.core.training.baselines import threshold_watershed_labels
    from napari_samscope.core.training.instance_eval import instance_scores

    truth = _discs([(20, 20), (20, 37), (45, 70)], radius=9)  # the first two touch
    image = np.where(truth > 0, 200.0, 20.0) + np.random.default_rng(0).normal(0, 5, truth.shape)
    predicted = threshold_watershed_labels(image)
    assert predicted.dtype == np.int32 and predicted.shape == truth.shape
    scores = instance_scores([predicted], [truth])
    assert scores["predicted"] == 3 and scores["f1"] == 1.0
    assert scores["mean_matched_iou"] > 0.8


def test_threshold_watershed_drops_specks_and_handles_constant_and_rgb_images() -> None:
    from napari_samscope.core.training.baselines import threshold_watershed_labels

    image = np.zeros((40, 40), dtype=np.uint16)
    image[5:7, 5:7] = 1000  # 4 pixels: under min_size
    image[20:30, 20:30] = 1000
    labels = threshold_watershed_labels(image)
    assert not labels[5:7, 5:7].any() and len(np.unique(labels[20:30, 20:30])) == 1
    assert not threshold_watershed_labels(np.full((16, 16), 7.0)).any()
    rgb = np.repeat(image[..., None], 3, axis=-1)
    assert np.array_equal(threshold_watershed_labels(rgb) > 0, labels > 0)


def test_baselines_refuse_nan_and_wrong_shapes() -> None:
    import pytest

    from napari_samscope.core.training.baselines import threshold_watershed_labels

    image = np.ones((10, 10))
    image[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        threshold_watershed_labels(image)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        otsu_in_box_masks(np.ones((2, 3, 4, 5)), np.array([[0, 0, 1, 1]]))
