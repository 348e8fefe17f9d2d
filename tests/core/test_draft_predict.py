"""Drafts (``Predictor.predict(..., draft=True)``): one decoder pass on the image as it is,
the same computation as a predictor without flip averaging, point refinement or zoom, on
the same embedding; the full result stays what it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core.predict.object_decode import draft_is_cheaper
from napari_samscope.core.predict.predictor import Predictor

S = 64  # the tiny models' input side
POINTS = np.array([[[10.0, 20.0]], [[40.0, 33.0]]])
BOXES = np.array([[4.0, 10.0, 30.0, 28.0], [30.0, 25.0, 55.0, 50.0]])


@pytest.fixture
def square_image():
    return np.random.default_rng(5).integers(0, 255, (S, S, 3), dtype=np.uint8)


def _plain_on(embedding_of, sam):
    """A predictor that neither flips, refines nor zooms, set to the first orientation
    of ``embedding_of``'s current embedding (the very same feature tensor)."""
    from dataclasses import replace

    emb = embedding_of.get_embedding()
    plain = Predictor(sam, flips=1, refine_points=False, zoom=1)
    plain.set_embedding(replace(emb, flipped=()))
    assert plain.get_embedding().features is emb.features
    return plain


@pytest.mark.parametrize("prompt", [
    {"points": POINTS}, {"bboxes": BOXES}, {"points": POINTS, "bboxes": BOXES},
    {"points": POINTS[:1, 0]},
])
def test_a_draft_is_the_plain_decoding_of_the_first_orientation(random_state_sam, square_image, prompt):
    full = Predictor(random_state_sam, flips=2, refine_points=True, zoom=2)
    full.set_image(square_image, scale=1.0)
    assert draft_is_cheaper(full, full.get_embedding())
    draft = full.predict(**prompt, draft=True)
    expected = _plain_on(full, random_state_sam).predict(**prompt)
    assert torch.equal(torch.from_numpy(draft.logits), torch.from_numpy(expected.logits))
    np.testing.assert_array_equal(draft.masks, expected.masks)
    np.testing.assert_array_equal(draft.scores, expected.scores)
    # the full result is another computation, and asking for a draft did not change it
    before = full.predict(**prompt)
    assert not np.allclose(before.logits, draft.logits, atol=1e-3)
    np.testing.assert_array_equal(full.predict(**prompt).logits, before.logits)


def test_a_draft_does_not_encode_crops(random_state_sam, square_image):
    small = np.array([[3.0, 4.0, 14.0, 15.0], [30.0, 20.0, 41.0, 33.0]])  # each fits a crop
    full = Predictor(random_state_sam, flips=1, refine_points=True, zoom=2)
    full.set_image(square_image, scale=1.0)
    full.predict(bboxes=small, draft=True)
    full.predict(points=POINTS, draft=True)
    assert full.zoom_source(full.get_embedding()).encoded == 0
    full.predict(bboxes=small)
    assert full.zoom_source(full.get_embedding()).encoded > 0


def test_multimask_drafts_give_candidates(random_state_sam, square_image):
    full = Predictor(random_state_sam, flips=4)
    full.set_image(square_image)
    draft = full.predict(points=[20, 12], multimask_output=True, draft=True)
    expected = _plain_on(full, random_state_sam).predict(points=[20, 12], multimask_output=True)
    assert draft.masks.shape == (3, S, S)
    np.testing.assert_array_equal(draft.logits, expected.logits)


def test_a_draft_is_only_cheaper_when_the_full_result_does_more(random_state_sam, square_image):
    plain = Predictor(random_state_sam, flips=1, refine_points=False, zoom=1)
    plain.set_image(square_image)
    assert not draft_is_cheaper(plain, plain.get_embedding())
    np.testing.assert_array_equal(plain.predict(points=POINTS, draft=True).logits,
                                  plain.predict(points=POINTS).logits)
    for options in ({"flips": 2}, {"refine_points": True}, {"zoom": 2}):
        other = Predictor(random_state_sam, **{"flips": 1, "refine_points": False, "zoom": 1, **options})
        other.set_image(square_image)
        assert draft_is_cheaper(other, other.get_embedding()), options


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_draft_must_be_a_bool(random_state_sam, square_image, bad):
    predictor = Predictor(random_state_sam)
    predictor.set_image(square_image)
    with pytest.raises(TypeError, match="draft must be True or False"):
        predictor.predict(points=[20, 12], draft=bad)
