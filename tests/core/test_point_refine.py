"""Point refinement (``refine_points``): the second pass is exactly "the same points plus
the grown box of the first mask", it applies only where it should, and the settings and
refusals around it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_samscope.core.predict.point_refine import (
    REFINE_MARGIN,
    REFINE_PASSES,
    check_refine_points,
    refinement_boxes,
)
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.weights.registry import lookup


@pytest.fixture
def image():
    return np.random.default_rng(11).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def _passes_by_hand(sam, image, points, labels, masks=None):
    """The refinement computed outside: a predictor that never refines decodes the points,
    then, REFINE_PASSES times, the box of the mask before is grown by the margin
    (model-input pixels converted to image pixels here, per axis) and the points are
    decoded again with it; a mask that gives no box stops there."""
    plain = Predictor(sam, refine_points=False)
    plain.set_image(image, scale="fill")
    height, width = image.shape[:2]
    in_h, in_w = plain.input_size
    mx, my = REFINE_MARGIN * width / in_w, REFINE_MARGIN * height / in_h
    expected = []
    for i in range(len(points)):
        kwargs = {} if masks is None else {"masks": masks[i]}
        result = plain.predict(points=points[i], labels=labels[i], **kwargs)
        for _ in range(REFINE_PASSES):
            rows, cols = np.nonzero(result.masks[0])
            if len(rows) == 0 or rows.min() == rows.max() or cols.min() == cols.max():
                break
            box = [max(cols.min() - mx, 0), max(rows.min() - my, 0),
                   min(cols.max() + mx, width - 1), min(rows.max() + my, height - 1)]
            result = plain.predict(points=points[i], labels=labels[i], bboxes=box, **kwargs)
        expected.append((result.logits[0], result.scores[0]))
    return expected


def test_refined_prediction_is_the_box_passes_by_hand(random_state_sam, image):
    """Five objects of one or two clicks (one negative), decoded together: each equals
    its own passes by hand (stopping where a mask is no box)."""
    points = np.array([[[5, 6], [30, 20]], [[40, 30], [41, 31]], [[60, 44], [2, 2]],
                       [[10, 40], [50, 5]], [[33, 12], [20, 20]]], dtype=float)
    labels = np.array([[1, 0], [1, 1], [1, 0], [1, 1], [1, 0]])
    refining = Predictor(random_state_sam, refine_points=True)
    refining.set_image(image, scale="fill")
    got = refining.predict(points=points, labels=labels)
    expected = _passes_by_hand(random_state_sam, image, points, labels)
    once = Predictor(random_state_sam, refine_points=False)
    once.set_image(image, scale="fill")
    first = once.predict(points=points, labels=labels)
    changed = 0
    for i, (logits, score) in enumerate(expected):
        np.testing.assert_allclose(got.logits[i], logits, atol=2e-5)
        np.testing.assert_allclose(got.scores[i], score, atol=2e-5)
        changed += not np.allclose(got.logits[i], first.logits[i], atol=1e-4)
    assert changed > 0  # the box passes did change something
    assert got.masks.shape == (5, 48, 64)


def test_more_box_passes_each_take_the_box_they_are_given(random_state_sam, image, monkeypatch):
    """With two box passes (the zoomed default's count, here without zoom) each pass
    decodes the points with the boxes made from the pass before; a row whose mask gives
    no box for the third pass keeps the second. The boxes are scripted: a random model's
    masks span the whole image, so the boxes of its masks would never move."""
    from napari_samscope.core.predict import object_decode

    points = np.array([[[5, 6]], [[40, 30]], [[33, 12]]], dtype=float)
    labels = np.ones((3, 1), int)
    second = np.array([[0, 0, 20, 20], [30, 20, 50, 40], [20, 5, 45, 25]], float)
    third = np.array([[2, 3, 15, 14], [0, 0, 0, 0], [25, 8, 40, 20]], float)
    plan = iter([(second, np.array([True, True, True])), (third, np.array([True, False, True]))])
    seen = []

    def scripted(boxes, original_size, input_size):
        seen.append(np.asarray(boxes).copy())
        return next(plan)

    monkeypatch.setattr(object_decode, "refinement_boxes", scripted)
    monkeypatch.setattr(object_decode, "REFINE_PASSES", 2)
    refining = Predictor(random_state_sam, refine_points=True)
    refining.set_image(image, scale="fill")
    got = refining.predict(points=points, labels=labels)
    plain = Predictor(random_state_sam, refine_points=False)
    plain.set_image(image, scale="fill")
    after_two = plain.predict(points=points, labels=labels, bboxes=second)
    np.testing.assert_array_equal(seen[1], after_two.boxes())  # the third pass saw the second's masks
    for i, boxes in ((0, third), (1, second), (2, third)):
        expected = plain.predict(points=points[i], labels=labels[i], bboxes=boxes[i])
        np.testing.assert_allclose(got.logits[i], expected.logits[0], atol=2e-5)
        np.testing.assert_array_equal(got.masks[i], expected.masks[0])
    assert not np.allclose(got.logits[0], after_two.logits[0], atol=1e-4)  # the third pass ran


def test_a_mask_prompt_stays_in_the_second_pass(random_state_sam, image):
    refining = Predictor(random_state_sam, refine_points=True)
    refining.set_image(image, scale="fill")
    previous = refining.predict(points=[[20, 20]]).logits  # (1, L, L)
    got = refining.predict(points=[[20, 20], [25, 22]], labels=[1, 1], masks=previous[0])
    expected = _passes_by_hand(
        random_state_sam, image, np.array([[[20, 20], [25, 22]]], float),
        np.array([[1, 1]]), masks=previous,
    )
    np.testing.assert_allclose(got.logits[0], expected[0][0], atol=2e-5)


@pytest.mark.parametrize("call", [
    {"bboxes": [4, 4, 40, 30]},
    {"points": [[20, 20]], "bboxes": [4, 4, 40, 30]},
    {"points": [[20, 20]], "multimask_output": True},
    {"points": [[[20, 20]], [[30, 30]]], "multimask_output": True},
])
def test_boxes_and_multimask_are_decoded_once(random_state_sam, image, call):
    results = []
    for refine in (True, False):
        predictor = Predictor(random_state_sam, refine_points=refine)
        predictor.set_image(image, scale="fill")
        results.append(predictor.predict(**call))
    np.testing.assert_array_equal(results[0].logits, results[1].logits)
    np.testing.assert_array_equal(results[0].scores, results[1].scores)


def test_an_empty_first_mask_keeps_its_first_result(random_state_sam, image):
    random_state_sam.mask_threshold = 1e9  # every mask empty: no box to refine with
    results = []
    for refine in (True, False):
        predictor = Predictor(random_state_sam, refine_points=refine)
        predictor.set_image(image, scale="fill")
        results.append(predictor.predict(points=[[[20, 20]], [[30, 30]]]))
    assert not results[0].masks.any()
    np.testing.assert_array_equal(results[0].logits, results[1].logits)


def test_refinement_boxes_grow_clip_and_drop_non_boxes():
    boxes = np.array([
        [10, 20, 30, 40],  # a box: grown by 4 input px = 2 image px at 2x
        [0, 0, 5, 5],  # clipped at the top-left corner
        [90, 50, 99, 59],  # clipped at the bottom-right corner
        [np.nan] * 4,  # an empty mask
        [7, 3, 7, 9],  # one column thick
        [7, 3, 12, 3],  # one row thick
    ])
    out, ok = refinement_boxes(boxes, (60, 100), (120, 200))
    assert ok.tolist() == [True, True, True, False, False, False]
    np.testing.assert_array_equal(out[0], [8, 18, 32, 42])
    np.testing.assert_array_equal(out[1], [0, 0, 7, 7])
    np.testing.assert_array_equal(out[2], [88, 48, 99, 59])
    assert not out[~ok].any()
    # the margin is in model-input pixels: an axis shown at 1x grows by 4 image pixels
    out, _ = refinement_boxes(boxes[:1], (60, 100), (60, 200))
    np.testing.assert_array_equal(out[0], [8, 16, 32, 44])


@pytest.mark.parametrize("good", [True, False, np.bool_(True)])
def test_check_refine_points_takes_bools(good):
    assert check_refine_points(good) is bool(good)


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_check_refine_points_refuses_anything_else(bad):
    with pytest.raises(TypeError, match="refine_points must be True or False"):
        check_refine_points(bad)


def test_defaults_come_from_the_wrapper_then_the_registry_entry(random_state_sam):
    from napari_samscope import SAM

    spec = lookup("samscope_nuclei")
    assert spec.refine_points is True
    assert lookup("vit_b").refine_points is False and lookup("vit_b_lm").refine_points is False
    assert Predictor(random_state_sam).refine_points is False  # bare module: official
    assert Predictor(random_state_sam, spec=spec).refine_points is True  # as_predictor(name)
    model = SAM.from_sam(random_state_sam, "tiny", spec=replace(spec, input_scale=None))
    assert model.refine_points is None and Predictor(model).refine_points is True
    model.refine_points = False
    assert Predictor(model).refine_points is False
    assert Predictor(model, refine_points=True).refine_points is True
    predictor = Predictor(model)
    predictor.refine_points = True
    assert predictor.refine_points is True
    with pytest.raises(TypeError, match="refine_points must be True or False"):
        model.refine_points = "on"
    with pytest.raises(TypeError, match="refine_points must be True or False"):
        predictor.refine_points = 1
    with pytest.raises(TypeError, match="refine_points must be True or False"):
        Predictor(random_state_sam, refine_points="off")


@pytest.mark.parametrize("refine", [True, False])
def test_a_tiled_image_is_refined_as_its_predictor_says(random_state_sam, refine):
    """The tiles' own predictor takes the given predictor's setting, not the default."""
    image = np.random.default_rng(3).integers(0, 255, (100, 130), dtype=np.uint8)
    predictor = Predictor(random_state_sam, refine_points=refine)
    predictor.set_image(image, tile_shape=48, halo=8)
    assert predictor.tiled.predictor.refine_points is refine
    tiled = predictor.predict(points=[[70, 40]])
    tile = Predictor(random_state_sam, refine_points=not refine)
    tile.set_image(image, tile_shape=48, halo=8)
    other = tile.predict(points=[[70, 40]])
    assert tiled.masks.shape == other.masks.shape == (1, 100, 130)
    assert not np.array_equal(tiled.logits, other.logits)
