"""Scale-aware input (core.predict.input_scale): requests, geometry, coordinates in every
mode, cache keys, declarations in the registry and in checkpoints, and bad values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from napari_samscope.core.predict.input_scale import (
    check_scale,
    resolve_magnification,
    scale_token,
    scaled_size,
)
from napari_samscope.core.predict.predictor import ImageEmbedding, Predictor
from napari_samscope.core.predict.resolution import ShrunkImageWarning
from napari_samscope.core.predict.transforms import apply_coords, resize_longest_side_shape
from napari_samscope.core.weights.spec import InputScale

DECLARED = InputScale(magnification=2.0, min_magnification=1.5, max_magnification=2.5)
BAD_SCALES = [0, -1, -0.5, float("nan"), float("inf"), "big", "", True, None, [2.0], "0", "-2"]


# ---------------------------------------------------------------- requests and geometry


def test_scale_requests_are_words_or_positive_numbers():
    assert check_scale("auto") == "auto"
    assert check_scale(" FILL ") == "fill"
    assert check_scale(2) == 2.0 and isinstance(check_scale(2), float)
    assert check_scale("1.5") == 1.5
    assert check_scale(np.float32(0.5)) == 0.5
    assert scale_token("fill") == "fill" and scale_token(2) == "x2.0"


@pytest.mark.parametrize("bad", BAD_SCALES)
def test_bad_scales_are_refused_with_a_sentence(bad):
    with pytest.raises(ValueError, match="scale must be 'auto', 'fill' or a magnification"):
        check_scale(bad)


@pytest.mark.parametrize("shape", [(1, 1), (37, 1000), (480, 640), (1024, 1024), (3000, 17), (64, 64)])
def test_fill_is_exactly_sams_resize(shape):
    mag = resolve_magnification(shape, 1024, "fill")
    assert scaled_size(shape, mag) == resize_longest_side_shape(*shape, 1024)
    # a model that declares no scale: "auto" is "fill"
    assert resolve_magnification(shape, 1024, "auto", None) == mag


def test_auto_keeps_the_magnification_in_the_declared_range():
    # a small image is placed at the declared magnification, not blown up
    assert resolve_magnification((64, 64), 1024, "auto", DECLARED) == 2.0
    assert resolve_magnification((61, 57), 1024, "auto", DECLARED) == 2.0
    # in range: filled as SAM does
    assert resolve_magnification((512, 512), 1024, "auto", DECLARED) == 2.0
    assert resolve_magnification((600, 300), 1024, "auto", DECLARED) == 1024 / 600
    assert resolve_magnification((682, 100), 1024, "auto", DECLARED) == 1024 / 682
    # too large even at the least magnification: filled as SAM does, with a warning that
    # says how to keep the model's scale
    with pytest.warns(ShrunkImageWarning, match=r"shrunk 1.4x .*1.5-2.5x .*tile_shape=\(512, 512\)"):
        assert resolve_magnification((1400, 700), 1024, "auto", DECLARED) == 1024 / 1400


def test_an_explicit_magnification_must_fit_the_input():
    assert resolve_magnification((64, 48), 1024, 3.0) == 3.0
    assert scaled_size((64, 48), 3.0) == (192, 144)
    assert resolve_magnification((2000, 1000), 1024, 0.5) == 0.5
    with pytest.raises(ValueError, match="does not fit the model's 1024-pixel input at scale 3"):
        resolve_magnification((400, 100), 1024, 3.0)


def test_coordinates_round_trip_exactly_in_every_mode():
    rng = np.random.default_rng(0)
    shape = (61, 57)
    points = rng.uniform(0, 57, (50, 2))
    for scale in ("fill", "auto", 2.0, 3.7, 0.9):
        mag = resolve_magnification(shape, 1024, scale, DECLARED)
        input_size = scaled_size(shape, mag)
        forward = apply_coords(points, shape, input_size)
        back = apply_coords(forward, input_size, shape)
        np.testing.assert_allclose(back, points, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the predictor


class PaintingPredictor(Predictor):
    """Its decoder paints a disc of low-resolution logits around each point (and a box's
    rectangle) given in the model's input frame, so a mask lands where the prompt was
    mapped: what comes back tests the geometry, both ways."""

    def decode(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
               multimask_output=True):
        L, S = self.lowres_size, self.img_size
        n = (point_coords if point_coords is not None else boxes).shape[0]
        ys, xs = torch.meshgrid(torch.arange(L) + 0.5, torch.arange(L) + 0.5, indexing="ij")
        low = torch.full((n, 1, L, L), -10.0)
        for i in range(n):
            if boxes is not None:
                x0, y0, x1, y1 = (boxes[i] * L / S).tolist()
                inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            else:
                x, y = (point_coords[i, 0] * L / S).tolist()
                inside = (xs - x) ** 2 + (ys - y) ** 2 <= 1.5**2
            low[i, 0][inside] = 10.0
        return low, torch.ones((n, 1))


@pytest.fixture
def declared_sam(random_state_sam):
    from napari_samscope import SAM

    model = SAM.from_sam(random_state_sam, "declared", input_scale=DECLARED)
    assert model.input_scale == DECLARED
    return model


@pytest.mark.filterwarnings("ignore::napari_samscope.core.predict.resolution.SmallObjectWarning")
@pytest.mark.parametrize("scale", ["fill", "auto", 2.0, 1.0])
def test_points_and_boxes_land_where_they_were_given_in_every_mode(declared_sam, scale):
    image = np.random.default_rng(1).integers(0, 255, (20, 30), dtype=np.uint8)
    predictor = PaintingPredictor(declared_sam, scale=scale)
    predictor.set_image(image)
    mag = resolve_magnification((20, 30), 64, scale, DECLARED)
    assert predictor.magnification == mag and predictor.input_size == scaled_size((20, 30), mag)
    for x, y in [(5.5, 4.5), (24.5, 15.5), (15.5, 10.5)]:
        mask = predictor.predict(points=[x, y]).masks[0]
        assert mask.shape == (20, 30) and mask[int(y), int(x)]
        rows, cols = np.nonzero(mask)
        assert abs(rows.mean() - y) < 1.5 and abs(cols.mean() - x) < 1.5
    box = np.array([6.0, 4.0, 22.0, 16.0])
    mask = predictor.predict(bboxes=box).masks[0]
    rows, cols = np.nonzero(mask)
    tol = 1 + 2 / mag  # half a low-resolution cell (4 input pixels) in image pixels, and one
    assert abs(cols.min() - 6) <= tol and abs(cols.max() + 1 - 22) <= tol
    assert abs(rows.min() - 4) <= tol and abs(rows.max() + 1 - 16) <= tol
    # low-resolution logits fed back as a mask prompt stay in the same frame
    first = predictor.predict(points=[15.5, 10.5])
    again = predictor.predict(points=[15.5, 10.5], masks=first.logits[0])
    np.testing.assert_array_equal(again.masks, first.masks)


def test_the_encoder_sees_the_image_at_the_magnification_top_left(declared_sam):
    image = np.random.default_rng(2).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    seen = []
    hook = declared_sam.model.image_encoder.register_forward_hook(
        lambda module, args, out: seen.append(args[0].detach().clone())
    )
    try:
        predictor = Predictor(declared_sam)  # the model declares a scale: "auto"
        assert predictor.scale == "auto"
        predictor.set_image(image)
    finally:
        hook.remove()
    sam = declared_sam.model
    resized = np.array(Image.fromarray(image).resize((40, 24), Image.BILINEAR))
    expected = (torch.from_numpy(resized).permute(2, 0, 1).float() - sam.pixel_mean) / sam.pixel_std
    x = seen[0][0]
    assert predictor.input_size == (24, 40)
    torch.testing.assert_close(x[:, :24, :40], expected, rtol=0, atol=0)
    assert (x[:, 24:, :] == 0).all() and (x[:, :, 40:] == 0).all()


def test_fill_is_the_default_and_bit_identical_for_models_that_declare_nothing(random_state_sam):
    image = np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    default = Predictor(random_state_sam)
    assert default.input_scale is None and default.scale == "fill"
    default.set_image(image)
    auto = Predictor(random_state_sam, scale="auto")
    auto.set_image(image)
    assert default.input_size == resize_longest_side_shape(48, 80, 64)
    torch.testing.assert_close(default.features, auto.features, rtol=0, atol=0)
    a = default.predict(points=[[30, 20]], multimask_output=True)
    b = auto.predict(points=[[30, 20]], multimask_output=True)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_cache_keys_differ_by_scale(declared_sam):
    from napari_samscope.core.progress import run
    from napari_samscope.core.volume import EmbeddingCache, encode_planes_iter

    def encode_planes(predictor, stack, cache):
        return run(encode_planes_iter(predictor, stack, cache=cache))

    keys = {Predictor(declared_sam, scale=s).embedding_key for s in ("fill", "auto", 2.0, 3.0)}
    assert len(keys) == 4
    assert len({Predictor(declared_sam, scale=s).model_key for s in ("fill", 2.0)}) == 1
    stack = np.random.default_rng(4).integers(0, 255, (2, 16, 16), dtype=np.uint8)
    cache = EmbeddingCache()
    fill = encode_planes(Predictor(declared_sam, scale="fill"), stack, cache=cache)
    scaled = encode_planes(Predictor(declared_sam, scale=2.0), stack, cache=cache)
    assert len(cache) == 4  # two planes at each scale, never mixed up
    assert fill[0].input_size == (64, 64) and scaled[0].input_size == (32, 32)
    assert scaled[0].magnification == 2.0  # the cache keeps the geometry


def test_an_embedding_carries_its_scale_and_is_checked(declared_sam):
    image = np.random.default_rng(5).integers(0, 255, (20, 30), dtype=np.uint8)
    source = Predictor(declared_sam, scale=2.0)
    source.set_image(image)
    emb = source.get_embedding()
    assert emb.magnification == 2.0 and emb.input_size == (40, 60)
    other = Predictor(declared_sam, scale="fill")
    other.set_embedding(emb)  # the embedding's own geometry is used
    assert other.input_size == (40, 60) and other.magnification == 2.0
    bad = ImageEmbedding(emb.features, emb.original_size, (41, 60), emb.model_key, 2.0)
    with pytest.raises(ValueError, match="does not match its original_size"):
        other.set_embedding(bad)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "big"])
def test_bad_scales_fail_everywhere_before_encoding(declared_sam, bad):
    image = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match="scale must be"):
        Predictor(declared_sam, scale=bad)
    predictor = Predictor(declared_sam)
    with pytest.raises(ValueError, match="scale must be"):
        predictor.set_image(image + 1, scale=bad)
    with pytest.raises(ValueError, match="scale must be"):
        predictor.scale = bad
    with pytest.raises(ValueError, match="scale must be"):
        declared_sam(image + 1, points=[4, 4], scale=bad)
    assert not predictor.is_image_set


def test_a_scale_too_large_for_the_input_is_refused(declared_sam):
    predictor = Predictor(declared_sam)
    with pytest.raises(ValueError, match="does not fit the model's 64-pixel input at scale 5"):
        predictor.set_image(np.arange(400, dtype=np.uint8).reshape(20, 20), scale=5)
    with pytest.warns(ShrunkImageWarning, match=r"tile_shape=\(32, 32\)"):
        predictor.set_image((np.arange(2500).reshape(50, 50) % 251).astype(np.uint8))
    assert predictor.magnification == 64 / 50 and predictor.is_image_set


def test_a_tiled_image_uses_tiles_that_fit_the_declared_scale(declared_sam):
    image = (np.random.default_rng(6).integers(0, 255, (90, 70))).astype(np.uint8)
    predictor = PaintingPredictor(declared_sam)
    predictor.set_image(image, halo=4)
    tiled = predictor.tiled
    assert tiled.grid.tile_shape == (32, 32)  # 64-pixel input at magnification 2
    assert tiled.scale_record(tiled.grid.tile_shape) == "x2.0"
    mask = predictor.predict(points=[[40.5, 50.5]]).masks[0]
    assert mask.shape == (90, 70) and mask[50, 40]
    # a box larger than a tile: a window fitted around it, resized into the input ("fill")
    mask = predictor.predict(bboxes=[[6, 5, 64, 85]]).masks[0]
    rows, cols = np.nonzero(mask)
    assert abs(cols.min() - 6) <= 2 and abs(cols.max() + 1 - 64) <= 2
    assert abs(rows.min() - 5) <= 2 and abs(rows.max() + 1 - 85) <= 2
    # tiles asked larger than fit at the declared scale: shrunk into the input, with a warning
    with pytest.warns(ShrunkImageWarning, match="48x48"):
        predictor.set_image(image, tile_shape=48, halo=4)
        predictor.predict(points=[[40.5, 50.5]])


# ---------------------------------------------------------------- declarations


def test_the_default_model_declares_its_scale_and_official_models_do_not():
    from napari_samscope.core.weights.registry import resolve

    assert resolve("samscope_nuclei").input_scale == DECLARED
    for name in ("vit_b", "vit_h", "vit_t"):
        assert resolve(name).input_scale is None
    bad = [(0, 1, 2), (2, 2.5, 3), (2, 1, 1.5), (math.nan, 1, 2)]
    for values in bad:
        with pytest.raises(ValueError, match="InputScale"):
            InputScale(*values)


def test_a_checkpoint_declares_its_scale_in_its_meta(tmp_path, random_state_sam):
    from napari_samscope import SAM
    from napari_samscope.core.predict.resolve import as_predictor
    from napari_samscope.core.weights.checkpoint import save_checkpoint
    from napari_samscope.core.weights.loader import load_sam

    plain = save_checkpoint(tmp_path / "plain.pt", random_state_sam)
    assert load_sam(plain, device="cpu").input_scale is None
    assert as_predictor(plain, device="cpu").scale == "fill"

    declared = save_checkpoint(
        tmp_path / "declared.pt", random_state_sam, meta={"input_scale": DECLARED.to_dict()}
    )
    assert load_sam(declared, device="cpu").input_scale == DECLARED
    assert SAM(declared, device="cpu").predictor().scale == "auto"
    predictor = as_predictor(declared, device="cpu")
    assert predictor.input_scale == DECLARED and predictor.scale == "auto"
    assert as_predictor(declared, device="cpu", scale=3).scale == 3.0
    with pytest.raises(ValueError, match="scale must be"):
        as_predictor(declared, device="cpu", scale="big")

    broken = save_checkpoint(
        tmp_path / "broken.pt", random_state_sam, meta={"input_scale": {"magnification": 2}}
    )
    with pytest.raises(ValueError, match="declares an input scale that cannot be read"):
        load_sam(broken, device="cpu")


# ---------------------------------------------------------------- the shipped model


def _disc_image():
    from scipy import ndimage

    yy, xx = np.mgrid[:64, :64]
    obj = (yy - 30) ** 2 + (xx - 36) ** 2 <= 9**2
    noise = np.random.default_rng(0).normal(0, 5, (64, 64))
    image = ndimage.gaussian_filter(np.where(obj, 180.0, 30.0), 1.0) + noise
    return np.clip(image, 0, 255).astype(np.uint8), obj


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_a_point_on_a_nucleus_of_a_small_image_finds_it_in_every_mode(one_torch_thread):
    from napari_samscope import SAM

    image, obj = _disc_image()
    model = SAM(dtype="float32")
    ious = {}
    for scale in ("auto", "fill", 2.0):
        pred = model(image, points=[[36, 30]], multimask_output=True, scale=scale)
        mask = pred.masks[int(np.argmax(pred.scores))]
        assert mask.shape == (64, 64) and mask[30, 36]  # the mask is where the object is
        rows, cols = np.nonzero(mask)
        assert obj[int(round(rows.mean())), int(round(cols.mean()))]
        ious[scale] = _iou(mask, obj)
    assert ious["auto"] >= 0.85 and ious[2.0] == ious["auto"]
    # "fill" magnifies the crop 16x, far beyond the objects the model was trained on
    assert ious["auto"] > ious["fill"] + 0.2


def test_segment_everything_on_a_small_image_at_the_declared_scale(one_torch_thread):
    from napari_samscope import SAM

    image, obj = _disc_image()
    result = SAM(dtype="float32")(image, points_per_side=8, scale="auto")
    masks = result.masks
    assert masks.shape[1:] == (64, 64)
    assert max(_iou(m, obj) for m in masks) >= 0.8


def test_the_small_object_warning_uses_the_magnification_in_use(declared_sam):
    from napari_samscope.core.predict.resolution import SmallObjectWarning

    image = np.random.default_rng(7).integers(0, 255, (20, 20), dtype=np.uint8)
    box = [4, 4, 10, 10]  # 6 pixels: 12 input pixels at 2x, 19 at "fill" (3.2x)
    predictor = PaintingPredictor(declared_sam)
    predictor.set_image(image)
    with pytest.warns(SmallObjectWarning, match="magnified 2.0x"):
        predictor.predict(bboxes=box)
    predictor.set_image(image, scale="fill")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallObjectWarning)
        predictor.predict(bboxes=box)
