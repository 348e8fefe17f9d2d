"""Flip averaging (``flips``): exact geometry, the same result as flipping by hand, the
plain computation untouched, and the settings, caches and refusals around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests._decoder_model import count_encodings, tiny_sam_with_decoder

from napari_samscope.core.predict.flips import (
    FLIPS,
    check_flips,
    flip_boxes,
    flip_image,
    flip_points,
)
from napari_samscope.core.predict.predictor import Predictor

S = 64  # the tiny models' input side


@pytest.mark.parametrize("good", [1, 2, 4, np.int64(2)])
def test_check_flips_takes_1_2_4(good):
    assert check_flips(good) == int(good) and type(check_flips(good)) is int


@pytest.mark.parametrize(("bad", "error"), [
    (0, ValueError), (3, ValueError), (8, ValueError), (-1, ValueError),
    (True, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError),
])
def test_check_flips_refuses_anything_else(bad, error):
    with pytest.raises(error, match="flips must be 1, 2 or 4"):
        check_flips(bad)


@pytest.mark.parametrize("flip", FLIPS)
def test_points_and_boxes_flip_with_the_image(flip):
    """A pixel at (x, y) of the S x S input lands at flip_points((x, y)) once the image is
    flipped, and a box's rectangle at flip_boxes(box)'s rectangle."""
    image = torch.zeros(S, S)
    image[9, 50] = 1.0  # row 9, column 50: (x, y) = (50, 9)
    flipped = flip_image(image, flip)
    row, col = divmod(int(flipped.argmax()), S)
    x, y = flip_points(torch.tensor([[50.0, 9.0]]), flip, S)[0].tolist()
    assert (col, row) == (x, y)

    box = torch.tensor([[3.0, 10.0, 20.0, 40.0]])  # XYXY, inclusive
    rect = torch.zeros(S, S)
    rect[10:41, 3:21] = 1.0
    x0, y0, x1, y1 = (int(v) for v in flip_boxes(box, flip, S)[0].tolist())
    expected = torch.zeros(S, S)
    expected[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    assert x0 <= x1 and y0 <= y1
    assert torch.equal(flip_image(rect, flip), expected)
    assert torch.equal(flip_image(flip_image(rect, flip), flip), rect)  # its own inverse


@pytest.fixture
def square_image():
    return np.random.default_rng(5).integers(0, 255, (S, S, 3), dtype=np.uint8)


def _by_hand(sam, image, points, boxes, n):
    """The flip average computed outside the predictor: each flipped image encoded alone
    (flips=1), the flipped prompts decoded on it, the logits flipped back and averaged."""
    total = None
    for flip in FLIPS[:n]:
        rows, cols = flip
        view = image[::-1] if rows else image
        view = view[:, ::-1] if cols else view
        plain = Predictor(sam, flips=1)
        plain.set_image(np.ascontiguousarray(view), scale="fill")
        p = flip_points(torch.as_tensor(points, dtype=torch.float32), flip, S).numpy()
        b = flip_boxes(torch.as_tensor(boxes, dtype=torch.float32), flip, S).numpy()
        logits = torch.as_tensor(plain.predict(points=p, bboxes=b).logits)
        logits = flip_image(logits, flip)
        total = logits if total is None else total + logits
    return total / n


@pytest.mark.parametrize("n", [2, 4])
def test_flip_average_equals_flipping_by_hand(random_state_sam, square_image, n):
    """An S x S image fills the input exactly, so the image's flips are the input's flips."""
    points = np.array([[[10.0, 20.0]], [[40.0, 33.0]]])
    boxes = np.array([[4.0, 10.0, 30.0, 28.0], [30.0, 25.0, 55.0, 50.0]])
    predictor = Predictor(random_state_sam, flips=n)
    predictor.set_image(square_image, scale="fill")
    assert predictor.get_embedding().flips == n
    result = predictor.predict(points=points, bboxes=boxes)
    expected = _by_hand(random_state_sam, square_image, points, boxes, n)
    np.testing.assert_allclose(result.logits, expected.numpy(), atol=2e-4)
    plain = Predictor(random_state_sam, flips=1)
    plain.set_image(square_image, scale="fill")
    assert not np.allclose(plain.predict(points=points, bboxes=boxes).logits, result.logits, atol=1e-3)


def test_flips_1_is_the_plain_decoder_bit_for_bit(random_state_sam, square_image):
    predictor = Predictor(random_state_sam, flips=1)
    predictor.set_image(square_image[:40, :50])
    emb = predictor.get_embedding()
    assert emb.flips == 1 and emb.flipped == ()
    coords = torch.tensor([[[12.0, 7.0], [30.0, 20.0]]])
    labels = torch.tensor([[1, 0]], dtype=torch.int)
    low, iou = predictor.decode(coords, labels, multimask_output=True)
    low_ref, iou_ref = predictor.decoder_runner.decode(emb.features, coords, labels, None, None, True)
    assert torch.equal(low, low_ref) and torch.equal(iou, iou_ref)


def test_flips_work_on_padded_images_and_mask_prompts(random_state_sam, square_image):
    """A non-square image (padded input) and a mask prompt: masks stay in image pixels."""
    image = square_image[:30, :50]
    predictor = Predictor(random_state_sam, flips=4)
    predictor.set_image(image)
    first = predictor.predict(points=[20, 12])
    again = predictor.predict(points=[20, 12], masks=first.logits[0])
    assert first.masks.shape == again.masks.shape == (1, 30, 50)
    assert first.logits.shape == (1, 16, 16) and np.isfinite(again.logits).all()
    multi = predictor.predict(points=[20, 12], multimask_output=True)
    assert multi.masks.shape == (3, 30, 50) and multi.scores.shape == (3,)


def test_the_flips_are_encoded_in_one_batch(random_state_sam, square_image):
    from napari_samscope import SAM

    model = SAM.from_sam(random_state_sam, "tiny")
    calls = count_encodings(model)
    Predictor(model, flips=4).set_image(square_image)
    Predictor(model, flips=1).set_image(square_image)
    Predictor(model, flips=2).encode([square_image] * 3, batch_size=4)  # 2 images x 2, then 1 x 2
    Predictor(model, flips=4).encode([square_image] * 2, batch_size=2)  # never above 4 inputs
    assert calls == [4, 1, 4, 2, 4, 4]


def test_the_embedding_carries_its_orientations(random_state_sam, square_image):
    """An embedding decodes as it was encoded, whatever the flips of the predictor it is
    set on; the plane cache keeps every orientation (in its dtype)."""
    from napari_samscope.core.volume import EmbeddingCache

    flipped = Predictor(random_state_sam, flips=2)
    flipped.set_image(square_image)
    expected = flipped.predict(points=[30, 30]).logits
    cache = EmbeddingCache(dtype=torch.float32)
    stored = cache.put("plane", flipped.get_embedding())
    assert stored.flips == 2 and stored.nbytes == 2 * stored.features.numel() * 4 + stored.pixels.nbytes
    other = Predictor(random_state_sam, flips=1)
    other.set_embedding(cache.get("plane"))
    np.testing.assert_array_equal(other.predict(points=[30, 30]).logits, expected)


def test_embeddings_with_a_wrong_set_of_orientations_are_refused(random_state_sam, square_image):
    import dataclasses

    predictor = Predictor(random_state_sam, flips=4)
    predictor.set_image(square_image)
    emb = predictor.get_embedding()
    with pytest.raises(ValueError, match="1, 2 or 4 orientations, not 3"):
        predictor.set_embedding(dataclasses.replace(emb, flipped=emb.flipped[:2]))
    with pytest.raises(ValueError, match="needs"):
        predictor.set_embedding(dataclasses.replace(emb, flipped=(emb.features[:, :4],) * 3))


def test_defaults_come_from_the_wrapper_then_the_registry_entry(random_state_sam):
    from dataclasses import replace

    from napari_samscope import SAM
    from napari_samscope.core.weights.registry import lookup as get_spec

    spec = get_spec("samscope_nuclei")
    assert spec.flips == 2 and get_spec("vit_b").flips == 1
    model = SAM.from_sam(random_state_sam, "tiny", spec=replace(spec, input_scale=None))
    assert model.flips is None and Predictor(model).flips == 2
    model.flips = 4
    assert Predictor(model).flips == 4 and Predictor(model, flips=1).flips == 1
    assert Predictor(random_state_sam).flips == 1  # a bare module: the plain computation
    # a bare module with its registry entry, as as_predictor builds it from a model name
    assert Predictor(random_state_sam, spec=spec).flips == 2
    assert Predictor(random_state_sam, spec=get_spec("vit_b")).flips == 1
    with pytest.raises(ValueError, match="flips must be 1, 2 or 4"):
        model.flips = 3
    with pytest.raises(TypeError, match="flips must be 1, 2 or 4"):
        Predictor(model).flips = "4"


def test_cache_keys_differ_by_flips(random_state_sam):
    from napari_samscope.core.predict.input_scale import embedding_key

    one, two = Predictor(random_state_sam, flips=1), Predictor(random_state_sam, flips=2)
    assert embedding_key(one) == one.embedding_key != embedding_key(two)
    two.flips = 1
    assert embedding_key(two) == embedding_key(one)


def test_tiles_segment_everything_and_instances_encode_the_plain_image_only(square_image):
    model = tiny_sam_with_decoder()
    model.flips = 4
    calls = count_encodings(model)
    image = np.random.default_rng(0).integers(0, 255, (48, 56), dtype=np.uint8)
    model.segment_instances(image, mode="ais")
    model(image, points_per_side=4)  # segment everything
    predictor = Predictor(model)
    predictor.set_image(np.zeros((150, 150), np.uint8) + image[:1, :1], tile_shape=48, halo=8)
    predictor.predict(points=[20, 20])
    assert calls and set(calls) == {1}
    with pytest.raises(ValueError, match="flips apply to untiled images"):
        predictor.set_image(image, tile_shape=32, flips=2)


def test_instances_from_a_flipped_embedding_decode_the_plain_orientation(square_image):
    """An embedding cached with flips (napari's plane cache) gives the same AIS and APG
    objects as the plain one: instance work never averages orientations."""
    model = tiny_sam_with_decoder()
    image = square_image[..., 0]
    flipped = Predictor(model, flips=4)
    flipped.set_image(image)
    plain = Predictor(model, flips=1)
    plain.set_image(image)
    for mode in ("ais", "apg"):
        a = model.segment_instances(flipped.get_embedding(), mode=mode)
        b = model.segment_instances(plain.get_embedding(), mode=mode)
        np.testing.assert_array_equal(a, b)
