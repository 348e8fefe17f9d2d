"""Predictions of many objects are compact (logits kept, masks made on demand) and give
the same masks, areas, boxes and label images; prompts are checked for absurd values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samscope.core.predict import results
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.results import Prediction


@pytest.fixture
def predictor(random_state_sam):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    image[20:50, 30:80] = (220, 40, 40)
    pred = Predictor(random_state_sam)
    pred.set_image(image)
    return pred


def _boxes(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 110, (n, 2))
    size = rng.uniform(4, 40, (n, 2))
    return np.concatenate([xy, xy + size], axis=1)


def _both(predictor, monkeypatch, **prompts):
    eager = predictor.predict(**prompts)
    monkeypatch.setattr(results, "EAGER_MASK_BYTES", 0)
    compact = predictor.predict(**prompts)
    return eager, compact


@pytest.mark.parametrize("budget", [None, 0])  # packed crops kept, or always made again
def test_compact_prediction_gives_the_same_results(predictor, monkeypatch, budget):
    if budget is not None:
        monkeypatch.setattr(results, "_PACKED_BUDGET", budget)
    eager, compact = _both(predictor, monkeypatch, bboxes=_boxes())
    assert not eager.is_compact and compact.is_compact
    assert len(compact) == len(eager) == 12 and compact.image_size == (90, 130)
    np.testing.assert_array_equal(compact.scores, eager.scores)
    np.testing.assert_array_equal(compact.logits, eager.logits)
    np.testing.assert_array_equal(compact.areas, eager.areas)
    np.testing.assert_array_equal(compact.boxes(), eager.boxes())
    for order in ("area", "score", "index"):
        np.testing.assert_array_equal(compact.to_label_image(order), eager.to_label_image(order))
    for i, mask in enumerate(compact.iter_masks()):
        np.testing.assert_array_equal(mask, eager.masks[i])
    np.testing.assert_array_equal(compact.mask(-1), eager.masks[-1])
    best = compact.best()
    assert not best.is_compact
    np.testing.assert_array_equal(best.masks, eager.best().masks)
    assert compact.is_compact  # nothing above made all the masks
    np.testing.assert_array_equal(compact.masks, eager.masks)  # now made, and kept
    assert not compact.is_compact


def test_compact_multimask_candidates_and_points(predictor, monkeypatch):
    eager, compact = _both(predictor, monkeypatch, points=[[50, 30]], multimask_output=True)
    assert len(compact) == 3 and compact.is_compact
    np.testing.assert_array_equal(compact.masks, eager.masks)


def test_from_logits_decides_by_size(predictor):
    import torch

    up = predictor.mask_upsampler
    low = torch.randn(2, predictor.lowres_size, predictor.lowres_size)
    small = Prediction.from_logits(low, torch.tensor([0.5, 0.6]), up)
    assert not small.is_compact
    forced = Prediction.from_logits(low, torch.tensor([0.5, 0.6]), up, compact=True)
    np.testing.assert_array_equal(forced.masks, small.masks)
    assert "compact" not in repr(small) and "2 masks" in repr(small)


def test_masks_can_still_be_replaced():
    pred = Prediction(np.zeros((2, 4, 4), bool), [0.1, 0.2])
    pred.masks = np.ones((2, 5, 5), bool)
    assert pred.image_size == (5, 5) and pred.areas.tolist() == [25, 25]
    with pytest.raises(ValueError, match="N=2"):
        pred.masks = np.ones((3, 5, 5), bool)


# --- absurd prompts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"points": [[1e308, 10.0]]}, ValueError, "coordinate"),
        ({"points": [[10.0, -2e7]]}, ValueError, "at most"),
        ({"bboxes": [0, 0, 1e9, 10]}, ValueError, "coordinate"),
        ({"points": [[np.inf, 3.0]]}, ValueError, "NaN or infinite"),
        ({"points": [[1.0, 3.0]], "multimask_output": "no"}, TypeError, "multimask_output must be True or False"),
        ({"points": [[1.0, 3.0]], "multimask_output": 1}, TypeError, "multimask_output"),
    ],
)
def test_absurd_prompts_are_refused(predictor, kwargs, error, match):
    with pytest.raises(error, match=match):
        predictor.predict(**kwargs)


def test_far_but_sane_points_and_numpy_bools_are_accepted(predictor):
    pred = predictor.predict(points=[[5e6, -5e6]], multimask_output=np.bool_(False))
    assert len(pred) == 1 and np.isfinite(pred.scores).all()


@pytest.mark.parametrize("multimask", [False, True])
def test_many_objects_are_decoded_a_few_at_a_time_with_the_same_result(
    predictor, monkeypatch, multimask
):
    from napari_samscope.core.predict import object_decode

    whole = predictor.predict(bboxes=_boxes(), multimask_output=multimask)
    monkeypatch.setattr(object_decode, "OBJECTS_PER_DECODE", 5)  # 12 objects: 3 parts
    parts = predictor.predict(bboxes=_boxes(), multimask_output=multimask)
    np.testing.assert_allclose(parts.scores, whole.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts.logits, whole.logits, rtol=1e-4, atol=1e-4)
    assert (parts.masks != whole.masks).mean() < 1e-4
