"""Segment-everything (``core.everything``) on images with known objects.

A tiny random SAM makes arbitrary masks, so most tests use a *model that segments by
design*: :class:`SegmentingPredictor` is the real :class:`Predictor` (real resizing,
padding, coordinate transforms and embedding checks) with two doubles:

- the image encoder is :class:`BrightMapEncoder`: it marks the pixels brighter than the
  mean (the normalised red channel > 0), averages them down to the ``L x L``
  low-resolution grid and packs that map into the embedding's first 16 channels;
- ``decode`` unpacks the map, labels its connected bright regions and, for each prompt
  point, returns three candidates: the region under the point (logit +60 inside, -60
  outside; predicted IoU 0.95), the region dilated by 2 low-res pixels (0.8) and all
  bright regions together (0.6). A point on the background gets the background (0.5).

With the default thresholds (IoU > 0.88, stability >= 0.95) every bright disc must then
be found exactly once, and nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi  # noqa: F401  (skimage depends on scipy)
from skimage.measure import label

from napari_samscope.core.everything.generator import EverythingResult, MaskGenerator, MaskRecord
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.progress import Progress

DISCS = [(30, 30, 12), (30, 95, 10), (90, 40, 14), (95, 100, 9), (62, 68, 8)]  # (row, col, r)


def disc_image(shape=(128, 160), discs=DISCS) -> np.ndarray:
    """Dark noisy RGB image with bright discs; returns uint8 (H, W, 3)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(40, 5, shape)
    for r, c, rad in discs:
        img[(yy - r) ** 2 + (xx - c) ** 2 <= rad * rad] = 220
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def disc_masks(shape=(128, 160), discs=DISCS) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.stack([(yy - r) ** 2 + (xx - c) ** 2 <= rad * rad for r, c, rad in discs])


class BrightMapEncoder(torch.nn.Module):
    """Encoder double: ``(B, 3, S, S)`` -> ``(B, C, E, E)`` holding the bright-pixel map."""

    def __init__(self, img_size: int, channels: int) -> None:
        super().__init__()
        self.img_size, self.channels = img_size, channels
        self.register_buffer("unused", torch.zeros(1))  # gives model_key something to hash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lowres = self.img_size // 4
        bright = (x[:, :1] > 0).float()
        fraction = torch.nn.functional.adaptive_avg_pool2d(bright, lowres)  # B,1,L,L
        packed = torch.nn.functional.pixel_unshuffle(fraction, 4)  # B,16,E,E
        pad = self.channels - packed.shape[1]
        return torch.nn.functional.pad(packed, (0, 0, 0, 0, 0, pad))


class SegmentingPredictor(Predictor):
    """The real Predictor whose decoder segments the bright region under each point."""

    decoder_runner = None  # segment-everything decodes through decode() below

    def __init__(self, sam) -> None:
        sam.image_encoder = BrightMapEncoder(sam.img_size, sam.prompt_encoder.embed_dim)
        super().__init__(sam)
        self.decode_calls = 0

    @torch.no_grad()
    def decode(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output=True,
    ):
        self.decode_calls += 1
        features = self.features[:, :16]
        bright = torch.nn.functional.pixel_shuffle(features, 4)[0, 0].numpy() > 0.5  # L,L
        regions = label(bright, connectivity=1)
        dilated = ndi.binary_dilation
        scale = self.lowres_size / self.img_size
        lows, ious = [], []
        for x, y in point_coords[:, 0].numpy() * scale:
            region = regions[min(int(y), regions.shape[0] - 1), min(int(x), regions.shape[1] - 1)]
            if region:
                own = regions == region
                cands = [own, dilated(own, iterations=2), bright]
                scores = [0.95, 0.8, 0.6]
            else:
                cands, scores = [~bright] * 3, [0.5] * 3
            lows.append(np.stack([np.where(c, 60.0, -60.0) for c in cands]))
            ious.append(scores)
        low = torch.as_tensor(np.stack(lows), dtype=torch.float32)
        iou = torch.as_tensor(ious, dtype=torch.float32)
        return (low, iou) if multimask_output else (low[:, :1], iou[:, :1])


@pytest.fixture
def segmenting(tiny_sam_factory):
    return SegmentingPredictor(tiny_sam_factory("vit", 256))


def _best_iou(masks: np.ndarray, target: np.ndarray) -> np.ndarray:
    inter = (masks[:, None] & target[None]).sum((2, 3))
    union = (masks[:, None] | target[None]).sum((2, 3))
    return inter / np.maximum(union, 1)


def test_every_disc_found_exactly_once(segmenting):
    image = disc_image()
    result = MaskGenerator(segmenting, points_per_side=16).generate(image)
    assert isinstance(result, EverythingResult) and len(result) == len(DISCS)
    iou = _best_iou(result.masks, disc_masks())
    assert (iou.max(axis=0) > 0.85).all(), iou  # every disc found
    assert sorted(iou.argmax(axis=1).tolist()) == list(range(len(DISCS)))  # once each
    assert segmenting.decode_calls == 4  # 256 points / 64 per batch
    assert not segmenting.is_image_set  # the predictor was left as it was found


def test_records_labels_and_boxes_are_consistent(segmenting):
    result = MaskGenerator(segmenting, points_per_side=16).generate(disc_image())
    masks, labels, boxes = result.masks, result.to_label_image(), result.boxes()
    assert masks.shape == (len(result), 128, 160) and masks.dtype == bool
    assert labels.dtype == np.uint32 and labels.shape == (128, 160)
    assert set(np.unique(labels)) == set(range(len(result) + 1))
    for i, record in enumerate(result):
        assert isinstance(record, MaskRecord)
        mask = masks[i]
        assert record.area == mask.sum() > 0
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert record.bbox == (cols[0], rows[0], cols[-1] - cols[0], rows[-1] - rows[0])
        np.testing.assert_array_equal(boxes[i], [cols[0], rows[0], cols[-1], rows[-1]])
        np.testing.assert_array_equal(record.mask, mask)
        np.testing.assert_array_equal(labels == i + 1, mask)  # discs do not overlap
        assert record.crop_box == (0, 0, 160, 128)
        assert record.predicted_iou == pytest.approx(0.95)
        assert 0.95 <= record.stability_score <= 1.0
        x, y = record.point_coords
        assert mask[int(y), int(x)]  # the point that made it lies inside
    np.testing.assert_allclose(result.scores, 0.95)
    prediction = result.to_prediction()
    np.testing.assert_array_equal(prediction.masks, masks)


def test_label_image_paints_large_masks_first():
    big = np.zeros((10, 10), bool)
    big[1:9, 1:9] = True
    small = np.zeros((10, 10), bool)
    small[4:6, 4:6] = True
    fields = dict(
        predicted_iou=0.9,
        stability_score=0.97,
        point_coords=(5.0, 5.0),
        crop_box=(0, 0, 10, 10),
        image_shape=(10, 10),
    )
    result = EverythingResult(
        [MaskRecord.from_mask(small, 0, 0, **fields), MaskRecord.from_mask(big, 0, 0, **fields)],
        (10, 10),
    )
    labels = result.to_label_image()
    assert labels[5, 5] == 1 and labels[2, 2] == 2 and labels[0, 0] == 0
    assert result.areas.tolist() == [4, 64]


def test_empty_record_and_result():
    record = MaskRecord.from_mask(
        np.zeros((4, 5), bool),
        0,
        0,
        predicted_iou=0.9,
        stability_score=float("nan"),
        point_coords=(1.0, 1.0),
        crop_box=(0, 0, 5, 4),
        image_shape=(4, 5),
    )
    assert record.area == 0 and record.bbox == (0, 0, 0, 0) and not record.mask.any()
    result = EverythingResult([record], (4, 5))
    assert np.isnan(result.boxes()).all() and result.to_label_image().max() == 0
    empty = EverythingResult([], (4, 5))
    assert empty.masks.shape == (0, 4, 5) and empty.boxes().shape == (0, 4)


def test_thresholds_filter_as_specified(segmenting):
    image = disc_image()
    # IoU filter is strict (>): 0.95 candidates do not pass 0.95
    assert (
        len(MaskGenerator(segmenting, points_per_side=8, pred_iou_thresh=0.95).generate(image)) == 0
    )
    # an offset beyond the logit range makes every stability score 0 (or NaN): none pass
    none = MaskGenerator(segmenting, points_per_side=8, stability_score_offset=70.0)
    assert len(none.generate(image)) == 0
    # lowering the thresholds and switching NMS off keeps the other candidates too
    loose = MaskGenerator(segmenting, points_per_side=8, conf=0.55, box_nms_thresh=1.0)
    result = loose.generate(image)
    np.testing.assert_allclose(sorted(set(result.scores.tolist())), [0.6, 0.8, 0.95])
    # single-mask output: only the region under the point
    single = MaskGenerator(segmenting, points_per_side=16, multimask_output=False).generate(image)
    assert len(single) == len(DISCS)


def test_crop_layer_path_finds_each_disc_once(segmenting):
    gen = MaskGenerator(segmenting, points_per_side=16, crop_n_layers=1)
    result = gen.generate(disc_image())
    iou = _best_iou(result.masks, disc_masks())
    assert (iou.max(axis=0) > 0.85).all()
    assert sorted(iou.argmax(axis=1).tolist()) == list(range(len(DISCS)))
    crops = {r.crop_box for r in result}
    assert any(c != (0, 0, 160, 128) for c in crops)  # smaller crops win between crops
    for record in result:
        x, y, w, h = record.crop_box
        bx, by, bw, bh = record.bbox
        assert x <= bx and y <= by and bx + bw < x + w and by + bh < y + h


def test_progress_and_cancellation(segmenting, tiny_sam_factory):
    image = disc_image()
    segmenting.set_image(image[:64, :64])
    before = segmenting.get_embedding()
    job = MaskGenerator(segmenting, points_per_side=16).generate_iter(image)
    reports = [next(job), next(job)]
    assert all(isinstance(p, Progress) for p in reports)
    assert reports[-1].total == 4 + 1 and reports[-1].done == 1
    job.close()  # cancel between batches: no result, the predictor's image is back
    assert segmenting.get_embedding().original_size == before.original_size
    assert torch.equal(segmenting.features, before.features)
    # run to the end: fractions rise to 1
    seen = []
    result = MaskGenerator(segmenting, points_per_side=16).generate(image, progress=seen.append)
    assert len(result) == len(DISCS)
    assert seen[-1].fraction == 1.0 and all(a.done <= b.done for a, b in zip(seen, seen[1:]))


def test_min_mask_region_area_fills_holes_and_drops_islands(segmenting):
    image = disc_image()
    image[28:32, 28:32] = 40  # a 4x4 hole in the first disc
    plain = MaskGenerator(segmenting, points_per_side=16).generate(image)
    cleaned = MaskGenerator(segmenting, points_per_side=16, min_mask_region_area=40).generate(image)
    assert len(cleaned) == len(plain) == len(DISCS)
    first = np.argmax(_best_iou(cleaned.masks, disc_masks()[:1])[:, 0])
    assert (
        cleaned.masks[first][30, 30]
        and not plain.masks[np.argmax(_best_iou(plain.masks, disc_masks()[:1])[:, 0])][30, 30]
    )


def test_real_tiny_model_end_to_end(tiny_sam):
    """A random tiny SAM: arbitrary masks, but the records must be self-consistent."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 65535, (50, 70), dtype=np.uint16)  # microscope dtype
    gen = MaskGenerator(
        tiny_sam,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    result = gen.generate(image)
    assert len(result) == 4 * 4 * 3 and result.image_shape == (50, 70)
    for record, mask in zip(result, result.masks):
        assert record.area == mask.sum()


def test_bad_parameters_raise_clear_errors(segmenting):
    with pytest.raises(TypeError, match="Unknown segment-everything parameter"):
        MaskGenerator(segmenting, points_per_sid=4)
    with pytest.raises(TypeError, match="alias"):
        MaskGenerator(segmenting, conf=0.5, pred_iou_thresh=0.5)
    with pytest.raises(ValueError, match="pred_iou_thresh"):
        MaskGenerator(segmenting, pred_iou_thresh=1.5)
    with pytest.raises(ValueError, match="crop_overlap_ratio"):
        MaskGenerator(segmenting, crop_overlap_ratio=1.0)
    with pytest.raises(ValueError, match="points_per_batch"):
        MaskGenerator(segmenting, points_per_batch=0)
    with pytest.raises(ValueError, match="stability_score_offset"):
        MaskGenerator(segmenting, stability_score_offset=-1)
    with pytest.raises(ValueError, match="min_mask_region_area"):
        MaskGenerator(segmenting, min_mask_region_area=-1)
    with pytest.raises(ValueError, match="positive integer"):
        MaskGenerator(segmenting, points_per_side=0)
    with pytest.raises(ValueError, match="point_grids"):
        MaskGenerator(segmenting, point_grids=[np.zeros((4, 3))])
    with pytest.raises(TypeError, match="Expected a model name"):
        MaskGenerator(object())
    with pytest.raises(ValueError, match="Unknown model 'not a model'"):
        MaskGenerator("not a model")  # a name goes through the registry
    with pytest.raises(ValueError):
        MaskGenerator(segmenting).generate(np.zeros((10, 10)))  # constant image


def test_explicit_point_grids_and_points_stride_alias(segmenting):
    grid = np.array([[30 / 160, 30 / 128], [95 / 160, 30 / 128]])  # two disc centres (x, y)
    result = MaskGenerator(segmenting, point_grids=[grid]).generate(disc_image())
    assert len(result) == 2
    assert MaskGenerator(segmenting, points_stride=5).point_grids[0].shape == (25, 2)


@pytest.mark.parametrize(("offset", "stability_thresh"), [(1.0, 0.0), (0.01, 0.3)])
def test_equals_the_straightforward_computation(tiny_sam, offset, stability_thresh):
    """Windowed upsampling + compact records == full-size logits for every candidate."""
    from napari_samscope.core.everything import mask_ops as mo
    from napari_samscope.core.predict.transforms import apply_coords

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
    params = dict(
        points_per_side=4,
        pred_iou_thresh=0.0,
        box_nms_thresh=1.0,
        stability_score_thresh=stability_thresh,
        stability_score_offset=offset,
    )
    predictor = Predictor(tiny_sam)
    result = MaskGenerator(predictor, **params).generate(image)

    predictor.set_image(image)
    points = mo.build_point_grid(4) * np.array([70, 45])
    coords = apply_coords(points, (45, 70), predictor.input_size)
    low, iou = predictor.decode(
        torch.tensor(coords, dtype=torch.float32)[:, None], torch.ones(16, 1, dtype=torch.int)
    )
    full = predictor.mask_upsampler.logits(low.flatten(0, 1))  # (48, 45, 70)
    stability = mo.stability_score(full, 0.0, offset).numpy()
    keep = stability >= stability_thresh if stability_thresh > 0 else np.ones(48, bool)
    order = np.argsort(-iou.flatten().numpy()[keep], kind="stable")
    expected_masks = (full > 0).numpy()[keep][order]
    assert len(result) == keep.sum() > 0
    assert 0 < keep.sum() < 48 or stability_thresh == 0
    # equal up to float rounding (the two-stage decoder may round differently from the
    # reference path): scores to 1e-5, masks on all but a few near-zero-logit pixels
    np.testing.assert_allclose(result.scores, iou.flatten().numpy()[keep][order], rtol=1e-5)
    np.testing.assert_allclose(result.stability_scores, stability[keep][order], atol=1e-3)
    assert (result.masks == expected_masks).mean() > 0.9999


@pytest.mark.parametrize("multimask", [True, False])
def test_two_stage_decoding_equals_predictor_decode(random_state_sam, multimask):
    """IoU for every prompt, masks only for the prompts asked for: same numbers."""
    predictor = Predictor(random_state_sam)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    points = rng.uniform(0, 64, (20, 2))
    from napari_samscope.core.everything.decode import decode_points

    iou, lowres = decode_points(predictor, points, multimask)
    low_ref, iou_ref = predictor.decode(
        torch.tensor(points, dtype=torch.float32)[:, None],
        torch.ones(20, 1, dtype=torch.int),
        multimask_output=multimask,
    )
    torch.testing.assert_close(iou, iou_ref, atol=1e-5, rtol=1e-5)
    some = torch.tensor([0, 3, 17, 19])
    torch.testing.assert_close(lowres(some), low_ref[some], atol=1e-4, rtol=1e-4)
    assert lowres(torch.arange(20)).shape == low_ref.shape


def test_another_decoder_module_goes_through_predictor_decode(random_state_sam):
    """A model whose decoder is not a MaskDecoder is decoded by Predictor.decode as is."""

    class Wrapped(torch.nn.Module):  # same numbers, another module type
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    stock = MaskGenerator(Predictor(random_state_sam), **params).generate(image)
    random_state_sam.mask_decoder = Wrapped(random_state_sam.mask_decoder)
    wrapped = MaskGenerator(Predictor(random_state_sam), **params).generate(image)
    assert len(stock) == len(wrapped) > 0
    np.testing.assert_array_equal(stock.masks, wrapped.masks)
    np.testing.assert_allclose(stock.scores, wrapped.scores, rtol=1e-6)


# --- per-model recommended defaults ------------------------------------------------------


def _spec(**everything):
    from napari_samscope.core.weights.registry import ModelSpec

    return ModelSpec(name="mine", arch="custom", filename="mine.pt",
                     everything_defaults=tuple(everything.items()))


def test_without_a_registry_model_the_official_defaults_apply_exactly(segmenting, tiny_sam):
    from napari_samscope.core.everything.generator import EVERYTHING_DEFAULTS
    from napari_samscope.core.predict.sam_api import SAM

    assert MaskGenerator(segmenting).params == EVERYTHING_DEFAULTS
    assert MaskGenerator(tiny_sam).params == EVERYTHING_DEFAULTS
    official = SAM.from_sam(tiny_sam, spec=_spec())  # e.g. vit_b: no recommendations
    assert MaskGenerator(official).params == EVERYTHING_DEFAULTS


def test_model_recommendations_fill_the_parameters_not_given(tiny_sam):
    from napari_samscope.core.everything.generator import (
        EVERYTHING_DEFAULTS,
        model_everything_defaults,
    )
    from napari_samscope.core.predict.sam_api import SAM

    spec = _spec(pred_iou_thresh=0.5, stability_score_thresh=0.85, points_per_side=24)
    model = SAM.from_sam(tiny_sam, spec=spec)
    assert model_everything_defaults(model) == model_everything_defaults(spec) == {
        "pred_iou_thresh": 0.5, "stability_score_thresh": 0.85, "points_per_side": 24}
    generator = MaskGenerator(model, stability_score_thresh=0.9, conf=0.7)
    assert generator.params["pred_iou_thresh"] == 0.7  # given (through its alias) wins
    assert generator.params["stability_score_thresh"] == 0.9
    assert generator.params["points_per_side"] == 24  # the model's value
    assert len(generator.point_grids[0]) == 24 * 24
    assert generator.params["box_nms_thresh"] == EVERYTHING_DEFAULTS["box_nms_thresh"]
    assert generator.model_defaults["points_per_side"] == 24
    # an explicit mapping replaces the model's, {} forces the official defaults
    assert MaskGenerator(model, model_defaults={}).params == EVERYTHING_DEFAULTS
    assert MaskGenerator(model, model_defaults={"box_nms_thresh": 0.5}).params[
        "pred_iou_thresh"] == EVERYTHING_DEFAULTS["pred_iou_thresh"]
    # a Predictor made from the SAM wrapper carries the same recommendations
    from napari_samscope.core.predict.predictor import Predictor

    assert Predictor(model).spec is spec
    assert MaskGenerator(Predictor(model)).params["points_per_side"] == 24
    assert Predictor(tiny_sam).spec is None


def test_recommended_thresholds_change_what_is_kept(segmenting):
    # the segmenting double scores the region under a point 0.95, its dilation 0.8
    image = disc_image()
    strict = MaskGenerator(segmenting, points_per_side=16, model_defaults={"pred_iou_thresh": 0.96})
    assert len(strict.generate(image)) == 0
    loose = MaskGenerator(segmenting, points_per_side=16, model_defaults={"pred_iou_thresh": 0.9})
    assert len(loose.generate(image)) == len(DISCS)


def test_bad_model_recommendations_are_reported(segmenting):
    with pytest.raises(ValueError, match="registry entry"):
        MaskGenerator(segmenting, model_defaults={"pred_iou": 0.5})
    with pytest.raises(ValueError, match="pred_iou_thresh must be between"):
        MaskGenerator(segmenting, model_defaults={"pred_iou_thresh": 5.0})
