"""Prompts whose objects shrink below what the model resolves are warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.resolution import SmallObjectWarning, is_unresolvable


def test_is_unresolvable_measures_boxes_in_model_input_pixels() -> None:
    boxes = [[0, 0, 40, 200], [0, 0, 100, 100]]  # shorter sides 40 and 100 pixels
    assert is_unresolvable(boxes, (256, 256), 64).tolist() == [True, False]  # x0.25: 10 and 25
    assert not is_unresolvable(boxes, (64, 64), 64).any()
    with pytest.raises(ValueError, match="finite"):
        is_unresolvable([[0, 0, np.nan, 5]], (64, 64), 64)


def test_predict_warns_for_small_boxes_and_points_on_a_shrunk_image(tiny_sam_factory) -> None:
    rng = np.random.default_rng(0)
    predictor = Predictor(tiny_sam_factory(img_size=64))
    predictor.set_image(rng.integers(0, 255, (256, 256), dtype=np.uint8))
    with pytest.warns(SmallObjectWarning, match="1 box covers fewer than 16"):
        predictor.predict(bboxes=[[10, 10, 50, 50], [0, 0, 200, 200]])
    with pytest.warns(SmallObjectWarning, match="shrunk 4.0x"):
        predictor.predict(points=[[30, 30]])
    predictor.set_image(rng.integers(0, 255, (100, 100), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallObjectWarning)
        predictor.predict(bboxes=[[10, 10, 90, 90]])  # resolved: no warning
        predictor.predict(points=[[30, 30]])
