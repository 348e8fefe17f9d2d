"""core.predictor and core.results with tiny random models: prompt kinds, batches, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from napari_samscope.core.predict.predictor import ImageEmbedding, Predictor, model_key
from napari_samscope.core.predict.results import Prediction

H, W = 48, 80  # non-square: the model input (64) is padded at the bottom


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[10:30, 20:50] = (200, 60, 60)  # something to segment
    return img


@pytest.fixture
def predictor(random_state_sam, image):
    pred = Predictor(random_state_sam)
    pred.set_image(image)
    return pred


def _reference(sam, image, points=None, labels=None, box=None, mask=None, multimask=True):
    """The official pipeline written out step by step (PIL resize, pad, decode, 2x bilinear)."""
    S, (h, w) = sam.img_size, image.shape[:2]
    scale = S / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    x = (torch.from_numpy(resized).permute(2, 0, 1)[None].float() - sam.pixel_mean) / sam.pixel_std
    x = F.pad(x, (0, S - nw, 0, S - nh))
    factors = torch.tensor([nw / w, nh / h], dtype=torch.float64)
    pts = None
    if points is not None:
        coords = (torch.as_tensor(points, dtype=torch.float64) * factors).float()[None]
        pts = (coords, torch.as_tensor(labels, dtype=torch.int)[None])
    boxes = None
    if box is not None:
        boxes = (torch.as_tensor(box, dtype=torch.float64).reshape(2, 2) * factors).float()
        boxes = boxes.reshape(1, 4)
    masks = None if mask is None else torch.as_tensor(mask, dtype=torch.float32)[None, None]
    with torch.no_grad():
        features = sam.image_encoder(x)
        sparse, dense = sam.prompt_encoder(points=pts, boxes=boxes, masks=masks)
        low, iou = sam.mask_decoder(
            image_embeddings=features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
    full = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)[..., :nh, :nw]
    full = F.interpolate(full, (h, w), mode="bilinear", align_corners=False)
    return full[0] > 0, iou[0], low[0]


def _check_against_reference(result, ref):
    masks, iou, low = ref
    torch.testing.assert_close(torch.from_numpy(result.scores), iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(result.logits), low, atol=1e-4, rtol=1e-4)
    agree = (torch.from_numpy(result.masks) == masks).float().mean().item()
    assert agree > 0.999


# ----------------------------------------------------------------------------- images


def test_set_image_sizes_and_reset(random_state_sam, image):
    pred = Predictor(random_state_sam)
    assert not pred.is_image_set and pred.original_size is None
    pred.set_image(image)
    assert pred.is_image_set
    assert pred.original_size == (H, W) and pred.input_size == (38, 64)
    assert pred.features.shape == (1, 32, 4, 4) and pred.features.dtype == torch.float32
    pred.reset_image()
    assert not pred.is_image_set and pred.input_size is None
    with pytest.raises(ValueError, match="No image is set"):
        pred.predict(points=[1, 1])


def test_set_image_from_a_file(predictor, image, tmp_path):
    Image.fromarray(image).save(tmp_path / "img.png")
    other = Predictor(predictor.model)
    other.set_image(tmp_path / "img.png")
    torch.testing.assert_close(other.features, predictor.features, rtol=0, atol=0)


def test_set_image_normalises_microscope_images(random_state_sam):
    from napari_samscope.core.predict.image import to_rgb_uint8

    img = np.random.default_rng(3).integers(0, 4000, (2, 40, 40), dtype=np.uint16)
    a, b = Predictor(random_state_sam), Predictor(random_state_sam)
    a.set_image(img, channel_axis=0, contrast_limits=(0, 4000))
    b.set_image(to_rgb_uint8(img, channel_axis=0, contrast_limits=(0, 4000)))
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)


def test_bad_image_keeps_the_previous_one(predictor):
    before = predictor.features.clone()
    with pytest.raises(ValueError, match="NaN"):
        predictor.set_image(np.full((10, 10), np.nan))
    assert predictor.is_image_set
    torch.testing.assert_close(predictor.features, before, rtol=0, atol=0)


def test_constant_images_are_refused_by_set_image_but_encoded_in_batches(random_state_sam):
    pred = Predictor(random_state_sam)
    blank = np.zeros((H, W, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="constant"):
        pred.set_image(blank)
    assert not pred.is_image_set
    (embedding,) = pred.encode([blank])  # a blank plane of a stack, an empty crop
    assert embedding.original_size == (H, W)
    with pytest.raises(ValueError, match="constant"):
        pred.encode([blank], allow_constant=False)
    pred.set_image(blank, contrast_limits=(0, 255))
    assert pred.is_image_set


def test_encode_batches_without_changing_state(random_state_sam, image):
    pred = Predictor(random_state_sam)
    images = [image, image[::-1].copy(), image[:20, :30].copy()]
    embeddings = pred.encode(images, batch_size=2)
    assert not pred.is_image_set
    assert [e.original_size for e in embeddings] == [(H, W), (H, W), (20, 30)]
    for img, emb in zip(images, embeddings):
        pred.set_image(img)
        torch.testing.assert_close(emb.features, pred.features, atol=1e-5, rtol=1e-4)
        assert emb.input_size == pred.input_size and emb.model_key == pred.model_key
    with pytest.raises(TypeError, match="sequence"):
        pred.encode(image)
    with pytest.raises(ValueError, match="batch_size"):
        pred.encode([image], batch_size=0)


def test_mobile_sam_encoder_works_too(random_state_mobile_sam, image):
    pred = Predictor(random_state_mobile_sam)
    pred.set_image(image)
    result = pred.predict(points=[[30, 20]], labels=[1], multimask_output=True)
    ref = _reference(random_state_mobile_sam, image, [[30, 20]], [1])
    _check_against_reference(result, ref)


# ----------------------------------------------------------------------------- prompts


def test_points_positive_and_negative_match_the_reference(predictor, image):
    pts, lab = [[30, 20], [5, 40]], [1, 0]
    result = predictor.predict(points=pts, labels=lab, multimask_output=True)
    assert result.masks.shape == (3, H, W) and result.masks.dtype == bool
    assert result.scores.shape == (3,) and result.logits.shape == (3, 16, 16)
    _check_against_reference(result, _reference(predictor.model, image, pts, lab))
    flipped = predictor.predict(points=pts, labels=[1, 1], multimask_output=True)
    assert not np.allclose(flipped.logits, result.logits)


def test_one_point_in_every_form_and_default_labels(predictor):
    a = predictor.predict(points=[30, 20], labels=[1])
    b = predictor.predict(points=[[30, 20]])
    c = predictor.predict(points=[[[30, 20]]], labels=[[1]])
    assert len(a) == 1
    for other in (b, c):
        np.testing.assert_array_equal(a.masks, other.masks)
        np.testing.assert_array_equal(a.logits, other.logits)


def test_multimask_off_returns_one_mask(predictor, image):
    result = predictor.predict(points=[[30, 20]], multimask_output=False)
    assert result.masks.shape == (1, H, W)
    ref = _reference(predictor.model, image, [[30, 20]], [1], multimask=False)
    _check_against_reference(result, ref)


def test_box_and_corner_order(predictor, image):
    result = predictor.predict(bboxes=[20, 10, 50, 30], multimask_output=True)
    _check_against_reference(result, _reference(predictor.model, image, box=[20, 10, 50, 30]))
    swapped = predictor.predict(bboxes=[50, 30, 20, 10], multimask_output=True)
    np.testing.assert_array_equal(result.logits, swapped.logits)


def test_box_plus_points(predictor, image):
    result = predictor.predict(points=[[30, 20], [45, 28]], labels=[1, 0], bboxes=[20, 10, 50, 30])
    ref = _reference(
        predictor.model, image, [[30, 20], [45, 28]], [1, 0], box=[20, 10, 50, 30], multimask=False
    )
    _check_against_reference(result, ref)


def test_mask_feedback(predictor, image):
    first = predictor.predict(points=[[30, 20]], multimask_output=True)
    best = first.logits[first.scores.argmax()]
    again = predictor.predict(points=[[30, 20]], masks=best)
    ref = _reference(predictor.model, image, [[30, 20]], [1], mask=best, multimask=False)
    _check_against_reference(again, ref)
    assert not np.allclose(again.logits[0], first.logits[first.scores.argmax()])
    mask_only = predictor.predict(masks=best[None])
    _check_against_reference(
        mask_only, _reference(predictor.model, image, mask=best, multimask=False)
    )


def test_several_objects_from_points_get_their_best_candidate(predictor):
    pts = np.array([[[30, 20], [5, 40]], [[60, 10], [70, 40]]], dtype=float)
    lab = np.array([[1, 0], [1, 1]])
    batch = predictor.predict(points=pts, labels=lab, multimask_output=True)
    assert batch.masks.shape == (2, H, W) and batch.scores.shape == (2,)
    for i in range(2):
        alone = predictor.predict(points=pts[i], labels=lab[i], multimask_output=True)
        k = int(alone.scores.argmax())
        np.testing.assert_allclose(batch.scores[i], alone.scores[k], atol=1e-5)
        np.testing.assert_allclose(batch.logits[i], alone.logits[k], atol=1e-4)


def test_one_object_per_box_and_shared_points(predictor):
    boxes = [[20, 10, 50, 30], [0, 0, 30, 25], [40, 5, 79, 47]]
    result = predictor.predict(bboxes=boxes)
    assert result.masks.shape == (3, H, W)
    for i, box in enumerate(boxes):
        alone = predictor.predict(bboxes=box)
        np.testing.assert_allclose(result.logits[i], alone.logits[0], atol=1e-4)
    shared = predictor.predict(points=[[30, 20]], labels=[1], bboxes=boxes)
    explicit = predictor.predict(points=[[[30, 20]]] * 3, labels=[[1]] * 3, bboxes=boxes)
    np.testing.assert_allclose(shared.logits, explicit.logits, atol=1e-5)
    feedback = predictor.predict(bboxes=boxes, masks=result.logits)
    assert feedback.masks.shape == (3, H, W)


def test_points_outside_the_image_are_allowed(predictor):
    result = predictor.predict(points=[[-10, 200]], labels=[1])
    assert result.masks.shape == (1, H, W)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "at least one prompt"),
        ({"labels": [1]}, "without points"),
        ({"points": []}, "no point"),
        ({"points": np.zeros((0, 2))}, "no point"),
        ({"points": [[1, 2, 3]]}, "\\(2,\\), \\(P, 2\\)"),
        ({"points": np.zeros((1, 1, 1, 2))}, "\\(N, P, 2\\)"),
        ({"points": [[np.nan, 2]]}, "NaN"),
        ({"points": [[1, 2]], "labels": [1, 0]}, "one label per point"),
        ({"points": [[[1, 2]], [[3, 4]]], "labels": [1, 1]}, "one label per point"),
        ({"points": [[1, 2]], "labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"points": [[1, 2]], "labels": [np.inf]}, "NaN"),
        ({"points": "here"}, "numbers"),
        ({"bboxes": [1, 2, 3]}, "\\(4,\\) or \\(N, 4\\)"),
        ({"bboxes": np.zeros((0, 4))}, "no box"),
        ({"bboxes": [5, 5, 5, 20]}, "no width or height"),
        ({"bboxes": [1, 2, np.nan, 4]}, "NaN"),
        ({"points": [[[1, 2]]] * 2, "bboxes": [[0, 0, 9, 9]] * 3}, "shared by every box"),
        ({"masks": np.zeros((8, 8))}, "low-resolution logits of shape \\(16, 16\\)"),
        ({"masks": np.zeros((16, 16), dtype=bool)}, "not a bool mask"),
        ({"masks": np.full((16, 16), np.nan)}, "NaN"),
        ({"points": [[1, 2]], "masks": np.zeros((3, 16, 16))}, "one low-resolution mask"),
    ],
)
def test_bad_prompts_raise_value_error(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_decode_checks_its_inputs(predictor):
    with pytest.raises(ValueError, match="together"):
        predictor.decode(point_coords=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="at least one prompt"):
        predictor.decode()
    low, iou = predictor.decode(boxes=torch.tensor([[1.0, 1.0, 30.0, 30.0]] * 4))
    assert low.shape == (4, 3, 16, 16) and iou.shape == (4, 3)


# ----------------------------------------------------------------------------- embeddings


def test_embedding_round_trip(predictor):
    before = predictor.predict(points=[[30, 20]], multimask_output=True)
    emb = predictor.get_embedding()
    assert isinstance(emb, ImageEmbedding) and emb.nbytes == 32 * 16 * 4 + emb.pixels.nbytes
    predictor.reset_image()
    cached = dataclasses.replace(emb, features=emb.features.half())  # a float16 cache
    predictor.set_embedding(cached)
    assert predictor.features.dtype == torch.float32
    predictor.set_embedding(emb)
    after = predictor.predict(points=[[30, 20]], multimask_output=True)
    np.testing.assert_array_equal(before.masks, after.masks)
    np.testing.assert_array_equal(before.logits, after.logits)


def test_embedding_of_another_model_is_refused(predictor, tiny_sam_factory):
    emb = predictor.get_embedding()
    other = Predictor(tiny_sam_factory("vit", 64, seed=5))
    assert other.model_key != predictor.model_key
    with pytest.raises(ValueError, match="different model"):
        other.set_embedding(emb)
    with pytest.raises(ValueError, match="shape"):
        predictor.set_embedding(dataclasses.replace(emb, features=emb.features[:, :8]))
    with pytest.raises(ValueError, match="input_size"):
        predictor.set_embedding(dataclasses.replace(emb, input_size=(64, 64)))
    with pytest.raises(TypeError, match="ImageEmbedding"):
        predictor.set_embedding(emb.features)


def test_model_key_follows_the_weights(random_state_sam):
    key = model_key(random_state_sam)
    assert key == model_key(random_state_sam)
    with torch.no_grad():
        random_state_sam.image_encoder.neck[0].weight.mul_(1.01)
    assert model_key(random_state_sam) != key


# ----------------------------------------------------------------------------- device, dtype


def test_predictor_accepts_only_models(random_state_sam):
    with pytest.raises(TypeError, match="SAM"):
        Predictor("sam_b.pt")
    pred = Predictor(random_state_sam, device="cpu")
    assert pred.device == torch.device("cpu") and pred.dtype is None


def test_bfloat16_autocast_returns_float32(random_state_sam, image):
    pred = Predictor(random_state_sam, dtype="bfloat16")
    assert pred.dtype == torch.bfloat16
    pred.set_image(image)
    assert pred.features.dtype == torch.float32
    result = pred.predict(bboxes=[20, 10, 50, 30], multimask_output=True)
    assert result.scores.dtype == np.float32 and result.logits.dtype == np.float32
    assert result.masks.dtype == bool and np.isfinite(result.logits).all()


# ----------------------------------------------------------------------------- results


def test_prediction_label_image_keeps_small_objects_visible():
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, :, :] = True  # big, first
    masks[1, 2:4, 2:4] = True  # small, inside the big one
    masks[2, 6:9, 6:9] = True
    pred = Prediction(masks, np.array([0.9, 0.5, 0.7]))
    labels = pred.to_label_image()
    assert labels.dtype == np.uint32 and labels.shape == (10, 10)
    assert labels[3, 3] == 2 and labels[7, 7] == 3 and labels[0, 0] == 1
    reverse = Prediction(masks[::-1], np.array([0.7, 0.5, 0.9]))
    assert reverse.to_label_image(order="index")[3, 3] == 3  # the big mask is painted last
    assert reverse.to_label_image(order="area")[3, 3] == 2  # the big mask is painted first
    assert pred.to_label_image(order="score")[3, 3] == 1  # the most confident wins
    with pytest.raises(ValueError, match="order"):
        pred.to_label_image(order="size")


def test_prediction_boxes_len_and_best():
    masks = np.zeros((2, 10, 12), dtype=bool)
    masks[0, 2:5, 3:9] = True
    pred = Prediction(masks, [0.2, 0.8], np.zeros((2, 4, 4)))
    assert len(pred) == 2 and pred.image_size == (10, 12)
    boxes = pred.boxes()
    np.testing.assert_array_equal(boxes[0], [3, 2, 8, 4])
    assert np.isnan(boxes[1]).all()
    np.testing.assert_array_equal(pred.areas, [18, 0])
    best = pred.best()
    assert len(best) == 1 and best.scores[0] == pytest.approx(0.8)
    assert (pred.to_label_image() == 1).sum() == 18


def test_prediction_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="\\(N, H, W\\)"):
        Prediction(np.zeros((4, 4), bool), [0.1])
    with pytest.raises(ValueError, match="scores"):
        Prediction(np.zeros((2, 4, 4), bool), [0.1])
    with pytest.raises(ValueError, match="logits"):
        Prediction(np.zeros((2, 4, 4), bool), [0.1, 0.2], np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="no masks"):
        Prediction(np.zeros((0, 4, 4), bool), []).best()


def test_cached_positional_encoding_follows_the_weights(predictor, image):
    before = predictor.predict(points=[[30, 20]], multimask_output=True)
    with torch.no_grad():
        predictor.model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(1.5)
    after = predictor.predict(points=[[30, 20]], multimask_output=True)
    assert not np.allclose(before.logits, after.logits)
    _check_against_reference(after, _reference(predictor.model, image, [[30, 20]], [1]))


def test_set_image_prepares_the_decoder_for_the_first_prompt(monkeypatch, predictor, image):
    from napari_samscope.core.predict import fast_decode

    runner = predictor.decoder_runner
    prepared = runner.prepared_image  # made by set_image
    assert prepared is not None and runner.prepare(predictor.features) is prepared
    made = []
    original = fast_decode.prepare_image
    monkeypatch.setattr(
        fast_decode, "prepare_image", lambda *args: made.append(1) or original(*args)
    )
    first = predictor.predict(points=[[20, 15]], multimask_output=True)
    assert not made and runner.prepared_image is prepared  # the first prompt used it
    runner.clear()  # the runner prepares the image again by itself
    again = predictor.predict(points=[[20, 15]], multimask_output=True)
    assert made == [1]
    np.testing.assert_array_equal(again.masks, first.masks)
    np.testing.assert_allclose(again.logits, first.logits, atol=1e-6, rtol=0)
    upsampler = predictor.mask_upsampler
    assert predictor.mask_upsampler is upsampler  # made once per image
    predictor.set_image(image[::-1].copy())  # a new image replaces it
    assert runner.prepared_image is not prepared and made == [1, 1]
    predictor.reset_image()
    assert runner.prepared_image is None  # its memory is freed


def test_set_embedding_prepares_the_decoder_too(random_state_sam, predictor):
    other = Predictor(random_state_sam)
    other.set_embedding(predictor.get_embedding())
    assert other.decoder_runner.prepared_image is not None
    points = [[20, 15]]
    np.testing.assert_array_equal(other.predict(points=points).masks, predictor.predict(points=points).masks)


def test_set_image_decodes_one_point_and_leaves_no_trace(monkeypatch, random_state_sam, image):
    """The warm-up decode in set_image (for a fast first prompt) changes no result."""
    predictor = Predictor(random_state_sam)
    runner = predictor.decoder_runner
    calls = []
    original = runner.decode
    monkeypatch.setattr(runner, "decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    predictor.set_image(image)
    assert calls == [1]
    first = predictor.predict(points=[[20, 15]], multimask_output=True)
    cold = Predictor(random_state_sam)
    cold.set_embedding(predictor.get_embedding())  # no warm-up
    expected = cold.predict(points=[[20, 15]], multimask_output=True)
    np.testing.assert_array_equal(first.masks, expected.masks)
    np.testing.assert_array_equal(first.logits, expected.logits)
