"""Zoom (``zoom``): a box prompt, or the second pass of a refined point, is decoded on a
crop of the image magnified ``zoom`` times more; the result equals that computation done
by hand, stays in whole-image pixels, and applies only where it should."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict.image import to_rgb_uint8
from napari_samscope.core.predict.point_refine import REFINE_PASSES_ZOOMED
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.resolution import SmallObjectWarning
from napari_samscope.core.predict.zoom import (
    MAX_ZOOM_MAGNIFICATION,
    OUTSIDE_LOGIT,
    ZOOM_CACHE,
    ZOOM_CROP_WEIGHT,
    ZoomGrid,
    check_zoom,
    declared_zoom,
)
from napari_samscope.core.weights.registry import lookup


@pytest.fixture
def image():
    return np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8)


BOXES = np.array([[3, 4, 14, 15], [30, 20, 41, 33], [50, 30, 62, 46], [20, 2, 36, 12]], float)


def _zooming(sam, image, zoom=2.0, **kwargs):
    predictor = Predictor(sam, zoom=zoom, **kwargs)
    predictor.set_image(image, scale="fill")
    return predictor


def _on_crop_by_hand(sam, image, window, magnification, weight=ZOOM_CROP_WEIGHT, **prompts):
    """Decode ``prompts`` (whole-image pixels, one object) on the whole image and on the
    crop ``window`` encoded at ``magnification``, with predictors that never zoom; the
    mean of both logits at image pixels, the crop's weighted ``weight``, inside the crop,
    thresholded and pasted."""
    import torch

    y0, y1, x0, x1 = window
    whole = Predictor(sam, zoom=1, refine_points=False)
    whole.set_image(image, scale="fill")
    crop = Predictor(sam, zoom=1, refine_points=False)
    crop.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]), scale=magnification)
    shifted = dict(prompts)
    if "points" in shifted:
        shifted["points"] = np.asarray(shifted["points"], float) - [x0, y0]
    if "bboxes" in shifted:
        shifted["bboxes"] = np.asarray(shifted["bboxes"], float) - [x0, y0, x0, y0]
    if "crop_masks" in shifted:
        shifted["masks"] = shifted.pop("crop_masks")
        prompts = {k: v for k, v in prompts.items() if k != "crop_masks"}
    on_crop, on_whole = crop.predict(**shifted), whole.predict(**prompts)
    best_crop, best_whole = int(np.argmax(on_crop.scores)), int(np.argmax(on_whole.scores))
    mean = ((1 - weight) * whole.mask_upsampler.logits(torch.from_numpy(on_whole.logits[best_whole]))[y0:y1, x0:x1]
            + weight * crop.mask_upsampler.logits(torch.from_numpy(on_crop.logits[best_crop])))
    full = np.zeros(image.shape[:2], dtype=bool)
    full[y0:y1, x0:x1] = mean.numpy() > 0
    return full, (1 - weight) * on_whole.scores[best_whole] + weight * on_crop.scores[best_crop]


@pytest.mark.parametrize("good", [1, 2, 2.5, np.float32(3), np.int64(4)])
def test_check_zoom_takes_numbers_from_1(good):
    assert check_zoom(good) == float(good)


@pytest.mark.parametrize("bad, error", [
    (True, TypeError), ("2", TypeError), (None, TypeError), ([2], TypeError),
    (0.5, ValueError), (0, ValueError), (-2, ValueError), (float("nan"), ValueError),
    (float("inf"), ValueError),
])
def test_check_zoom_refuses_anything_else(bad, error):
    with pytest.raises(error, match="zoom must be"):
        check_zoom(bad)


def test_defaults_come_from_the_wrapper_then_the_registry_entry(random_state_sam):
    from napari_samscope import SAM

    assert lookup("samscope_nuclei").zoom == 2.0
    assert lookup("vit_b").zoom == 1.0 and lookup("vit_t").zoom == 1.0
    model = SAM.from_sam(random_state_sam, "tiny")
    assert model.zoom is None and declared_zoom(model) == 1.0
    assert Predictor(model).zoom == 1.0
    assert Predictor(model, spec=lookup("samscope_nuclei")).zoom == 2.0
    model.zoom = 3
    assert Predictor(model).zoom == 3.0 and Predictor(model, zoom=1.5).zoom == 1.5
    with pytest.raises(ValueError, match="zoom must be"):
        model.zoom = 0.9
    predictor = Predictor(model)
    with pytest.raises(TypeError, match="zoom must be"):
        predictor.zoom = "2"


def test_the_grid_magnifies_zoom_times_and_caps():
    grid = ZoomGrid.plan((512, 512), 1024, 2.0, 2.0)
    assert (grid.side, grid.margin, grid.magnification) == (256, 32, 4.0)
    assert ZoomGrid.plan((512, 512), 1024, 2.0, 1.0) is None  # zoom 1: off
    assert ZoomGrid.plan((512, 512), 1024, 6.0, 4.0).magnification == MAX_ZOOM_MAGNIFICATION
    assert ZoomGrid.plan((512, 512), 1024, MAX_ZOOM_MAGNIFICATION, 2.0) is None
    assert ZoomGrid.plan((100, 600), 1024, 1.7, 2.0).side == 301  # int(1024 // 3.4)


def test_every_window_holds_its_box_inside_the_image():
    grid = ZoomGrid.plan((300, 520), 1024, 2.0, 2.0)  # side 256, margin 32
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = rng.uniform(1, 250, 2)
        x0, y0 = rng.uniform(0, 520 - w), rng.uniform(0, 300 - h)
        window = grid.window_for([x0, y0, x0 + w, y0 + h])
        extent = max(np.ceil(x0 + w) - np.floor(x0), np.ceil(y0 + h) - np.floor(y0)) + 1  # pixels
        assert (window is None) == (extent + 2 * grid.margin > grid.side)
        if window is None:
            continue
        wy0, wy1, wx0, wx1 = window
        assert 0 <= wy0 and wy1 <= 300 and 0 <= wx0 and wx1 <= 520
        assert wy1 - wy0 == min(256, 300) and wx1 - wx0 == 256
        assert wx0 <= x0 and x0 + w < wx1 + 1 and wy0 <= y0 and y0 + h < wy1 + 1
    # neighbouring boxes inside one grid crop share it (one encoding for both)
    assert grid.window_for([10, 10, 40, 40]) == grid.window_for([60, 60, 90, 90])


def test_zoomed_boxes_are_the_crop_decodings_by_hand(random_state_sam, image):
    predictor = _zooming(random_state_sam, image)
    got = predictor.predict(bboxes=BOXES)
    grid = predictor.zoom_source(predictor.get_embedding()).grid
    assert grid.magnification == 2.0 and grid.side == 32
    rgb = to_rgb_uint8(image)
    for k, box in enumerate(BOXES):
        window = grid.window_for(box)
        assert window is not None
        mask, score = _on_crop_by_hand(random_state_sam, rgb, window, 2.0, bboxes=box)
        np.testing.assert_array_equal(got.masks[k], mask)
        np.testing.assert_allclose(got.scores[k], score, atol=1e-5)
    plain = Predictor(random_state_sam, zoom=1)
    plain.set_image(image, scale="fill")
    assert not np.array_equal(plain.predict(bboxes=BOXES).masks, got.masks)  # zoom did something


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_crop_weighs_zoom_crop_weight_in_the_mean(random_state_sam, image, monkeypatch, weight):
    """With the crop's weight changed, masks and scores follow the weighted mean by hand;
    at 0 they are the whole image's alone."""
    from napari_samscope.core.predict import zoom

    monkeypatch.setattr(zoom, "ZOOM_CROP_WEIGHT", weight)
    predictor = _zooming(random_state_sam, image)
    got = predictor.predict(bboxes=BOXES)
    grid = predictor.zoom_source(predictor.get_embedding()).grid
    rgb = to_rgb_uint8(image)
    for k, box in enumerate(BOXES[:2]):
        mask, score = _on_crop_by_hand(random_state_sam, rgb, grid.window_for(box), 2.0, weight, bboxes=box)
        np.testing.assert_array_equal(got.masks[k], mask)
        np.testing.assert_allclose(got.scores[k], score, atol=1e-5)
    if weight == 0.0:
        plain = Predictor(random_state_sam, zoom=1, refine_points=False)
        plain.set_image(image, scale="fill")
        whole = plain.predict(bboxes=BOXES)
        np.testing.assert_allclose(got.scores, whole.scores, atol=1e-5)


def test_zoomed_refinement_is_the_second_pass_on_the_crop(random_state_sam, image, monkeypatch):
    """The second pass of refined points runs on the crop of its box (the boxes of the
    first masks are fixed here: a random model's masks fill the image); an object whose
    first mask gives no box keeps its first pass, decoded on the crop that holds its point
    and on the whole image."""
    from napari_samscope.core.predict import object_decode

    points = np.array([[[8, 9]], [[36, 26]], [[55, 38]]], float)
    labels = np.ones((3, 1), int)
    boxes, ok = BOXES[:3].copy(), np.array([True, True, False])
    seen = []

    def fixed(first_boxes, original_size, input_size):
        seen.append(first_boxes.shape)
        return boxes, ok

    monkeypatch.setattr(object_decode, "refinement_boxes", fixed)
    predictor = _zooming(random_state_sam, image, refine_points=True)
    got = predictor.predict(points=points, labels=labels)
    assert seen == [(3, 4)] * REFINE_PASSES_ZOOMED  # one box pass after another, same boxes here
    grid = predictor.zoom_source(predictor.get_embedding()).grid
    for k in range(2):
        mask, _ = _on_crop_by_hand(random_state_sam, to_rgb_uint8(image), grid.window_for(boxes[k]),
                                   2.0, points=points[k], labels=labels[k], bboxes=boxes[k])
        np.testing.assert_array_equal(got.masks[k], mask)
    point_window = grid.window_for(np.concatenate([points[2, 0], points[2, 0]]))
    mask, score = _on_crop_by_hand(random_state_sam, to_rgb_uint8(image), point_window, 2.0,
                                   points=points[2], labels=labels[2])
    np.testing.assert_array_equal(got.masks[2], mask)
    np.testing.assert_allclose(got.scores[2], score, atol=1e-5)
    first = Predictor(random_state_sam, zoom=1, refine_points=False)
    first.set_image(image, scale="fill")
    assert not np.array_equal(first.predict(points=points, labels=labels).masks[2], mask)


def test_a_clicks_first_pass_is_decoded_on_the_crop_that_holds_all_its_points(
    random_state_sam, image, monkeypatch
):
    """A positive and a negative click: the first pass's crop is the one that holds the
    box around both points (no later pass here: the first mask gives no box)."""
    from napari_samscope.core.predict import object_decode

    monkeypatch.setattr(object_decode, "refinement_boxes",
                        lambda boxes, *_: (np.zeros_like(boxes), np.zeros(len(boxes), bool)))
    points, labels = np.array([[[20.0, 30.0], [30.0, 24.0]]]), np.array([[1, 0]])
    predictor = _zooming(random_state_sam, image, refine_points=True)
    got = predictor.predict(points=points, labels=labels)
    window = predictor.zoom_source(predictor.get_embedding()).grid.window_for(
        np.array([20.0, 24.0, 30.0, 30.0]))
    assert window is not None
    mask, score = _on_crop_by_hand(random_state_sam, to_rgb_uint8(image), window, 2.0,
                                   points=points[0], labels=labels[0])
    np.testing.assert_array_equal(got.masks[0], mask)
    np.testing.assert_allclose(got.scores[0], score, atol=1e-5)


def test_a_row_that_gives_no_box_later_keeps_its_zoomed_mask(random_state_sam, image, monkeypatch):
    """A refined point whose mask after a zoomed box pass gives no box for the next pass
    keeps that mask exactly (its packed crop mask, not one remade from the logits);
    the other rows go on to the next pass."""
    from napari_samscope.core.predict import object_decode, point_refine

    points = np.array([[[8, 9]], [[36, 26]]], float)
    labels = np.ones((2, 1), int)
    plan = [(BOXES[:2].copy(), np.array([True, True])),
            (BOXES[[2, 1]].copy(), np.array([True, False]))]
    calls = []

    def scripted(first_boxes, original_size, input_size):
        calls.append(len(calls))
        return plan[min(len(calls) - 1, 1)]

    monkeypatch.setattr(object_decode, "refinement_boxes", scripted)
    monkeypatch.setattr(object_decode, "REFINE_PASSES_ZOOMED", 1)
    one_pass = _zooming(random_state_sam, image, refine_points=True).predict(points=points, labels=labels)
    calls.clear()
    monkeypatch.setattr(object_decode, "REFINE_PASSES_ZOOMED", 2)
    two_passes = _zooming(random_state_sam, image, refine_points=True).predict(points=points, labels=labels)
    assert calls == [0, 1] and point_refine.REFINE_PASSES_ZOOMED == REFINE_PASSES_ZOOMED
    np.testing.assert_array_equal(two_passes.masks[1], one_pass.masks[1])
    np.testing.assert_array_equal(two_passes.logits[1], one_pass.logits[1])
    assert two_passes.scores[1] == one_pass.scores[1]
    assert not np.array_equal(two_passes.masks[0], one_pass.masks[0])  # its box moved: redone


def test_points_without_refinement_and_one_objects_candidates_are_not_zoomed(random_state_sam, image):
    zooming = _zooming(random_state_sam, image, refine_points=False)
    plain = Predictor(random_state_sam, zoom=1, refine_points=False)
    plain.set_image(image, scale="fill")
    for kwargs in ({"points": [[20, 20]]}, {"bboxes": BOXES[0], "multimask_output": True}):
        a, b = zooming.predict(**kwargs), plain.predict(**kwargs)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    assert zooming.zoom_source(zooming.get_embedding()).encoded == 0


def test_a_mask_prompt_goes_to_the_crop_in_its_frame(random_state_sam, image):
    import torch

    from napari_samscope.core.predict.zoom import resample_logits

    predictor = _zooming(random_state_sam, image)
    previous = predictor.predict(bboxes=BOXES[1]).logits[0]  # whole-image frame
    got = predictor.predict(bboxes=BOXES[1], masks=previous)
    window = predictor.zoom_source(predictor.get_embedding()).grid.window_for(BOXES[1])
    crop = predictor.zoom_source(predictor.get_embedding()).embedding(window, predictor)
    in_crop = resample_logits(torch.from_numpy(previous)[None], (predictor.get_embedding(), (0, 0)),
                              (crop, window[::2]), predictor.img_size)[0].numpy()
    mask, _ = _on_crop_by_hand(random_state_sam, to_rgb_uint8(image), window, 2.0,
                               bboxes=BOXES[1], masks=previous, crop_masks=in_crop)
    np.testing.assert_array_equal(got.masks[0], mask)


def test_several_objects_with_multimask_keep_their_best_candidate_on_the_crop(random_state_sam, image):
    predictor = _zooming(random_state_sam, image)
    got = predictor.predict(bboxes=BOXES[:2], multimask_output=True)
    grid = predictor.zoom_source(predictor.get_embedding()).grid
    for k in range(2):
        mask, _ = _on_crop_by_hand(random_state_sam, to_rgb_uint8(image), grid.window_for(BOXES[k]),
                                   2.0, bboxes=BOXES[k], multimask_output=True)
        np.testing.assert_array_equal(got.masks[k], mask)


def test_crops_are_encoded_once_and_forgotten_with_the_image(random_state_sam, image):
    predictor = _zooming(random_state_sam, image)
    predictor.predict(bboxes=BOXES[0])
    source = predictor.zoom_source(predictor.get_embedding())
    assert source.encoded == 1
    predictor.predict(bboxes=[4, 5, 12, 13])  # the same crop
    assert source.encoded == 1
    predictor.set_image(image[::-1].copy(), scale="fill")
    fresh = predictor.zoom_source(predictor.get_embedding())
    assert fresh is not source and fresh.encoded == 0
    predictor.zoom = 3  # a new zoom: a new grid
    assert predictor.zoom_source(predictor.get_embedding()).grid.magnification == 3.0


def test_the_crop_cache_is_bounded(random_state_sam):
    image = np.random.default_rng(1).integers(0, 255, (256, 256), dtype=np.uint8)
    predictor = Predictor(random_state_sam, zoom=8)  # fill: 0.25x; crops of 32 px at 2x
    predictor.set_image(image, scale="fill")
    boxes = [[x + 10, y + 10, x + 16, y + 16] for x in range(0, 224, 24) for y in range(0, 224, 24)]
    predictor.predict(bboxes=boxes)
    source = predictor.zoom_source(predictor.get_embedding())
    assert source.encoded > ZOOM_CACHE and len(source._cache) == ZOOM_CACHE


def test_an_embedding_zooms_with_its_pixels_and_keeps_its_crops(random_state_sam, image):
    from dataclasses import replace

    from napari_samscope.core.volume import EmbeddingCache

    zooming = _zooming(random_state_sam, image)
    embedding = zooming.get_embedding()
    assert embedding.pixels is not None and embedding.pixels.shape == (48, 64, 3)
    zoomed = zooming.predict(bboxes=BOXES).masks
    source = zooming.zoom_source(embedding)
    encoded = source.encoded
    zooming.set_embedding(embedding)  # the same pixels: the crops encoded so far are kept
    assert zooming.zoom_source(zooming.get_embedding()) is source
    np.testing.assert_array_equal(zooming.predict(bboxes=BOXES).masks, zoomed)
    assert source.encoded == encoded
    stored = EmbeddingCache().put("plane", embedding)  # a cache keeps the pixels too
    other = Predictor(random_state_sam, zoom=2)
    other.set_embedding(stored)
    assert other.zoom_source(other.get_embedding()) is not None
    # features alone (from a store) are decoded on the whole image
    plain = Predictor(random_state_sam, zoom=1)
    plain.set_embedding(embedding)
    zooming.set_embedding(replace(embedding, pixels=None))
    assert zooming.zoom_source(zooming.get_embedding()) is None
    np.testing.assert_array_equal(zooming.predict(bboxes=BOXES).masks, plain.predict(bboxes=BOXES).masks)
    with pytest.raises(ValueError, match="pixels must be the"):
        zooming.set_embedding(replace(embedding, pixels=embedding.pixels[:, :, 0]))


def test_a_tiled_image_is_not_zoomed(random_state_sam, image):
    zooming = Predictor(random_state_sam, zoom=2)
    zooming.set_image(image, tile_shape=32, halo=4, scale="fill")
    plain = Predictor(random_state_sam, zoom=1)
    plain.set_image(image, tile_shape=32, halo=4, scale="fill")
    np.testing.assert_array_equal(zooming.predict(bboxes=BOXES).masks, plain.predict(bboxes=BOXES).masks)
    assert zooming.tiled.predictor.zoom == 1


def test_logits_land_in_the_whole_image_frame(random_state_sam, image):
    predictor = _zooming(random_state_sam, image)
    got = predictor.predict(bboxes=BOXES)
    lowres = predictor.lowres_size
    assert got.logits.shape == (len(BOXES), lowres, lowres)
    window = predictor.zoom_source(predictor.get_embedding()).grid.window_for(BOXES[0])
    plain = Predictor(random_state_sam, zoom=1)
    plain.set_image(image, scale="fill")
    whole = plain.predict(bboxes=BOXES[0]).logits[0]
    assert window[1] < 48  # outside its crop, the frame holds the weighted mean with the background
    expected = (1 - ZOOM_CROP_WEIGHT) * whole[-1, -1] + ZOOM_CROP_WEIGHT * OUTSIDE_LOGIT
    np.testing.assert_allclose(got.logits[0, -1, -1], expected, atol=1e-5)
    again = predictor.predict(bboxes=BOXES[0], masks=got.logits[0])  # fed back: whole image
    assert again.masks.shape == (1, 48, 64)


def test_crop_logits_are_resampled_where_their_pixels_are():
    """A disk drawn in a crop's logits, resampled into the whole image's frame and
    upsampled there, is the same disk in image pixels."""
    from types import SimpleNamespace

    import torch

    from napari_samscope.core.predict.transforms import MaskUpsampler
    from napari_samscope.core.predict.zoom import resample_logits

    whole = SimpleNamespace(original_size=(128, 128), input_size=(256, 256))  # 2x into 256
    crop = SimpleNamespace(original_size=(64, 64), input_size=(256, 256))  # 4x: a cell per pixel
    window = (32, 96, 24, 88)
    centre, radius = np.array([62.5, 66.5]), 12.0
    cells = np.arange(64) + 0.5  # crop pixel centres of the crop's 64 cells
    rows, cols = np.meshgrid(window[0] + cells, window[2] + cells, indexing="ij")
    low = torch.tensor(radius - np.hypot(rows - centre[0], cols - centre[1]), dtype=torch.float32)[None]
    frame = resample_logits(low, (crop, window[::2]), (whole, (0, 0)), 256)
    assert frame.shape == (1, 64, 64)
    mask = MaskUpsampler((128, 128), (256, 256), 256, 64).masks(frame)[0].numpy()
    r, c = np.meshgrid(np.arange(128) + 0.5, np.arange(128) + 0.5, indexing="ij")
    disk = np.hypot(r - centre[0], c - centre[1]) < radius
    assert (mask & disk).sum() / (mask | disk).sum() > 0.95
    assert frame[0, 0, 0] == OUTSIDE_LOGIT and frame[0, 63, 63] == OUTSIDE_LOGIT
    back = resample_logits(frame, (whole, (0, 0)), (crop, window[::2]), 256)  # and into the crop
    inner = slice(8, 56)  # away from the crop's edges, where the frame's cells were clipped
    np.testing.assert_array_equal(back[0, inner, inner] > 0, low[0, inner, inner] > 0)


def test_the_small_box_warning_reads_the_zoomed_magnification(random_state_sam):
    image = np.random.default_rng(2).integers(0, 255, (256, 256), dtype=np.uint8)
    box = [100, 100, 140, 140]  # 40 px at 0.25x: 10 input pixels; at 0.5x, 20
    plain = Predictor(random_state_sam, zoom=1)
    plain.set_image(image, scale="fill")
    with pytest.warns(SmallObjectWarning):
        plain.predict(bboxes=box)
    zooming = Predictor(random_state_sam, zoom=2)
    zooming.set_image(image, scale="fill")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallObjectWarning)
        zooming.predict(bboxes=box)
