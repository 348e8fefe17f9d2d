"""Small objects in large images: crop choice and exact paste-back, with a stand-in predictor
that paints each box prompt as its filled rectangle (the geometry, not the model's quality)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from napari_samscope.core.datasets.annotate import annotate_plane, paint_labels
from napari_samscope.core.datasets.detectors import Detections
from napari_samscope.core.predict.crops import (
    MIN_INPUT_PIXELS,
    SmallObjectWarning,
    crop_side,
    image_contrast_limits,
    is_unresolvable,
    plan_crops,
    segment_boxes,
    warn_unresolvable,
)


class RectanglePredictor:
    """Paints each box (XYXY, inclusive pixel corners) as a filled rectangle of the set image."""

    def __init__(self, img_size: int = 1024) -> None:
        self.img_size = img_size
        self.windows: list[tuple[int, int]] = []
        self.limits: list = []
        self._shape = None

    def set_image(self, image, contrast_limits=None):
        self._shape = np.asarray(image).shape[:2]
        self.windows.append(self._shape)
        self.limits.append(contrast_limits)

    def reset_image(self):
        self._shape = None

    def predict(self, bboxes, multimask_output=False):
        assert self._shape is not None, "predict without an image"
        masks = np.zeros((len(bboxes), *self._shape), bool)
        for mask, (x0, y0, x1, y1) in zip(masks, np.asarray(bboxes)):
            assert x0 >= 0 and y0 >= 0 and x1 < self._shape[1] and y1 < self._shape[0], "box left its crop"
            mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        return SimpleNamespace(masks=masks)


def _small_boxes(n: int, size: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, shape[1] - size, n)
    y0 = rng.integers(0, shape[0] - size, n)
    return np.stack([x0, y0, x0 + size - 1, y0 + size - 1], axis=1).astype(float)


def test_which_boxes_are_unresolvable():
    boxes = [[0, 0, 8, 8], [0, 0, 80, 80], [0, 0, 200, 10]]
    assert is_unresolvable(boxes, (4096, 4096), 1024).tolist() == [True, False, True]
    assert not is_unresolvable(boxes[:1], (512, 512), 1024).any()  # magnified 2x: 16 input px
    assert is_unresolvable([[0, 0, MIN_INPUT_PIXELS - 1, 50]], (1024, 1024), 1024).tolist() == [True]


def test_crops_cover_every_box_once_and_hold_it_whole():
    shape = (2048, 1500)
    boxes = _small_boxes(1000, 9, shape)
    side = crop_side(boxes, shape, 1024)
    assert 1024 / 8 <= side <= 1024
    crops = plan_crops(boxes, shape, side)
    indices = sorted(i for crop in crops for i in crop.indices)
    assert indices == list(range(len(boxes)))
    for crop in crops:
        assert 0 <= crop.y0 < crop.y1 <= shape[0] and 0 <= crop.x0 < crop.x1 <= shape[1]
        assert crop.y1 - crop.y0 <= side and crop.x1 - crop.x0 <= side
        for x0, y0, x1, y1 in boxes[list(crop.indices)]:
            assert crop.x0 <= x0 and crop.y0 <= y0 and x1 < crop.x1 and y1 < crop.y1
    # a grid: far fewer crops than boxes when boxes are dense
    assert len(crops) < len(boxes) / 2


def test_a_box_larger_than_the_margin_gets_its_own_crop():
    crops = plan_crops([[100, 100, 400, 130], [10, 10, 15, 15]], (2000, 2000), 128)
    big = next(c for c in crops if c.indices == (0,))
    assert big.x0 <= 100 and big.x1 > 400 and big.y0 <= 100 and big.y1 > 130


def test_paste_back_is_exact():
    shape = (2048, 1536)
    image = np.random.default_rng(1).integers(0, 4000, shape).astype(np.uint16)
    boxes = _small_boxes(200, 7, shape, seed=2)
    predictor = RectanglePredictor(1024)
    results = segment_boxes(predictor, image, boxes)
    assert len(predictor.windows) < len(boxes)  # boxes share crops
    assert all(max(w) <= 1024 for w in predictor.windows)
    for (x0, y0, x1, y1), (offset, piece) in zip(boxes, results):
        assert offset == (int(y0), int(x0)) and piece.shape == (int(y1 - y0) + 1, int(x1 - x0) + 1)
        assert piece.all()
    # every crop was converted with the whole image's limits, not its own
    assert set(predictor.limits) == {image_contrast_limits(image)}


def test_annotate_plane_sends_only_small_boxes_to_crops():
    shape = (4096, 4096)
    image = np.random.default_rng(3).integers(0, 255, shape).astype(np.uint8)
    small = _small_boxes(30, 9, (4096, 2000), seed=4) + [2100, 0, 2100, 0]  # right of the large boxes
    large = np.array([[100, 200, 499, 699], [1000, 1000, 1999, 1499]], float)
    boxes = np.concatenate([small[:10], large, small[10:]])
    detections = Detections.from_arrays(boxes, [0] * len(boxes), np.linspace(1, 0.5, len(boxes)))
    predictor = RectanglePredictor(1024)
    objects = annotate_plane(predictor, image, detections)
    assert len(objects) == len(boxes)
    assert predictor.windows[0] == shape  # the large boxes on the whole image
    assert all(max(w) <= 1024 for w in predictor.windows[1:])
    labels = paint_labels(objects, shape)
    for k, (x0, y0, x1, y1) in enumerate(boxes, start=1):  # objects stay in box order
        assert (labels[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] == k).all()
    assert (labels > 0).sum() == sum((b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in boxes)


def test_unresolvable_prompts_warn_with_their_own_category():
    with pytest.warns(SmallObjectWarning, match="2 boxes cover fewer than"):
        assert warn_unresolvable((4096, 4096), 1024, boxes=[[0, 0, 8, 8], [5, 5, 14, 14], [0, 0, 300, 300]],
                                 what="box")
    with pytest.warns(SmallObjectWarning, match="objects smaller than 64 pixels"):
        warn_unresolvable((4096, 2000), 1024, what="image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_unresolvable((1024, 1024), 1024, what="image")
        assert not warn_unresolvable((4096, 4096), 1024, boxes=[[0, 0, 300, 300]])
