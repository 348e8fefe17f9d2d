"""Segment-everything through the decoder runner's inference fast paths (``core.everything.decode``)
gives the records of the plain decoder graph: masks, IoU predictions, stability scores
and boxes, on a tiny random SAM, with one or several crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core.everything.decode import decode_points
from napari_samscope.core.everything.generator import MaskGenerator
from napari_samscope.core.predict import fast_decode
from napari_samscope.core.predict.predictor import Predictor

# keeps many candidates (thresholds off, no box NMS) so every record is compared
LOW = dict(
    points_per_side=6,
    points_per_batch=10,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
    crop_nms_thresh=1.0,
)


class PlainGraphPredictor(Predictor):
    """Decodes with autograd on: the decoder's training graph (plain projections, no
    prepared image, no folded attention, no mask bands), the official computation. It has
    no decoder runner, so segment-everything decodes through its ``decode``."""

    decoder_runner = None

    def decode(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
               multimask_output=True):
        sam = self.model
        with torch.enable_grad():
            sparse, dense = sam.prompt_encoder(
                points=(point_coords, point_labels), boxes=boxes, masks=mask_input
            )
            low, iou = sam.mask_decoder(
                image_embeddings=self.get_embedding().features,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        return low.detach(), iou.detach()


def _assert_same_records(ours, reference):
    assert len(ours) == len(reference) > 20
    for a, b in zip(ours, reference):
        assert a.point_coords == b.point_coords and a.crop_box == b.crop_box
    np.testing.assert_allclose(ours.scores, reference.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.stability_scores, reference.stability_scores, atol=1e-3)
    boxes_differ = sum(a.bbox != b.bbox for a, b in zip(ours, reference))
    assert boxes_differ <= 1  # a pixel at a logit within rounding of the threshold
    masks, expected = ours.masks, reference.masks
    assert (masks != expected).mean() < 1e-4
    inter = (masks & expected).reshape(len(ours), -1).sum(1)
    union = (masks | expected).reshape(len(ours), -1).sum(1)
    assert (inter / np.maximum(union, 1)).min() > 0.99


@pytest.mark.parametrize("crop_n_layers", [0, 1])
@pytest.mark.parametrize("transform_step", [None, 3])
def test_fast_paths_give_the_plain_graph_records(
    monkeypatch, random_state_sam, crop_n_layers, transform_step
):
    image = np.random.default_rng(3).integers(0, 255, (56, 72, 3), dtype=np.uint8)
    params = dict(LOW, crop_n_layers=crop_n_layers)
    if transform_step is not None:  # the CPU's few-prompts-per-step decoding, 3 per step
        grid = random_state_sam.image_encoder.img_size // 16
        channels = random_state_sam.mask_decoder.transformer_dim
        monkeypatch.setattr(fast_decode, "_CHUNK_BYTES", transform_step * grid * grid * channels * 4)
    prepared = []
    original = fast_decode.prepare_image

    def counting(*args, **kwargs):
        prepared.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast_decode, "prepare_image", counting)
    batches = []
    transform = fast_decode.forward_prepared

    def recording(transformer, image, tokens, **kwargs):
        batches.append(tokens.shape[0])
        return transform(transformer, image, tokens, **kwargs)

    monkeypatch.setattr(fast_decode, "forward_prepared", recording)
    ours = MaskGenerator(Predictor(random_state_sam), **params).generate(image)
    crops = 1 if crop_n_layers == 0 else 5
    # the first block's image side is prepared once per crop, whatever the batches
    assert len(prepared) == crops
    # batches of 10 prompts, decoded in the decoder's steps (never concatenated)
    assert max(batches) == (10 if transform_step is None else 3)
    reference = MaskGenerator(PlainGraphPredictor(random_state_sam), **params).generate(image)
    _assert_same_records(ours, reference)


def test_transform_step_is_unlimited_with_autograd(random_state_sam):
    runner = Predictor(random_state_sam).decoder_runner
    channels = random_state_sam.mask_decoder.transformer_dim
    features = torch.zeros(1, channels, 4, 4)
    sparse = torch.zeros(5, 2, channels)
    with torch.no_grad():
        assert 5 < runner.transform_step(features, sparse) < 1 << 62
    with torch.enable_grad():
        assert runner.transform_step(features, sparse) == 1 << 62


def test_mask_stage_for_no_prompt_is_empty(random_state_sam):
    predictor = Predictor(random_state_sam)
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    iou, lowres = decode_points(predictor, np.array([[3.0, 4.0], [20.0, 30.0]]), True)
    assert iou.shape == (2, 3)
    low = lowres(torch.zeros(0, dtype=torch.int64))
    side = predictor.lowres_size
    assert low.shape == (0, 3, side, side) and low.dtype == torch.float32
    assert lowres(torch.tensor([1])).shape == (1, 3, side, side)


def test_bfloat16_keeps_the_transformer_stage_in_float32(random_state_sam):
    """Under bfloat16 autocast only the mask stage runs in bfloat16: the predicted IoUs
    (transformer + IoU head) are the float32 ones."""
    predictor = Predictor(random_state_sam)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    points = np.random.default_rng(2).uniform(0, 64, (12, 2))
    iou32, low32 = decode_points(predictor, points, True)
    predictor.dtype = torch.bfloat16
    iou16, low16 = decode_points(predictor, points, True)
    torch.testing.assert_close(iou16, iou32, rtol=1e-5, atol=1e-6)
    some = torch.tensor([0, 5, 11])
    assert low16(some).dtype == torch.float32
    assert (low16(some) - low32(some)).abs().max() > 0  # the mask stage did run in bfloat16
    torch.testing.assert_close(low16(some), low32(some), rtol=0.1, atol=0.1)


@torch.no_grad()
def test_mask_groups_pick_the_same_rows_per_prompt_or_in_chunks(monkeypatch, random_state_sam):
    """The CPU's one-view-per-prompt grouping and the device grouping (chunks of indices,
    several steps concatenated) upscale the same prompts in the order asked."""
    from napari_samscope.core.everything import decode as ed

    monkeypatch.setattr(ed, "_MASK_CHUNK", 2)
    sam = random_state_sam
    decoder, encoder = sam.mask_decoder, sam.prompt_encoder
    features = torch.randn(1, decoder.transformer_dim, 4, 4)
    points = torch.rand(7, 1, 2) * 64
    sparse, dense = encoder(points=(points, torch.ones(7, 1, dtype=torch.int)), boxes=None, masks=None)
    pe = encoder.get_dense_pe()
    steps = [decoder.transform(features, pe, sparse[s : s + 3], dense[s : s + 3]) for s in (0, 3, 6)]
    whole = decoder.transform(features, pe, sparse, dense)
    index = torch.tensor([6, 0, 4, 2, 5])
    expected = decoder.upscale_masks(whole[2][index], whole[1][index], 4, 4)
    for per_prompt in (True, False):
        groups = ed._mask_groups(steps, 3, index, per_prompt=per_prompt)
        assert len(groups) == (5 if per_prompt else 3)
        got = torch.cat([decoder.upscale_masks(k[r], t[r], 4, 4) for t, k, r in groups])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
