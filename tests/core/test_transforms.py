"""core.transforms: resize rounding, preprocessing, coordinates, exact separable upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from napari_samscope.core.predict.transforms import (
    MaskUpsampler,
    apply_boxes,
    apply_coords,
    postprocess_matrix,
    preprocess,
    preprocess_batch,
    resize_longest_side_shape,
    resize_rgb_uint8,
)

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _reference_postprocess(low, input_size, original_size, img_size):
    """The official two-step postprocessing (bilinear, crop, bilinear)."""
    x = F.interpolate(low, (img_size, img_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize(
    ("h", "w", "target", "expected"),
    [
        (768, 1024, 1024, (768, 1024)),
        (480, 640, 1024, (768, 1024)),
        (1024, 300, 1024, (1024, 300)),
        (5, 8, 4, (3, 4)),  # 2.5 rounds up, as int(x + 0.5) does (not to even)
        (1, 2, 3, (2, 3)),  # 1.5 -> 2
        (7, 3, 10, (10, 4)),  # 4.2857 -> 4
        (3000, 1200, 1024, (1024, 410)),
    ],
)
def test_resize_longest_side_shape(h, w, target, expected):
    assert resize_longest_side_shape(h, w, target) == expected


def test_resize_longest_side_shape_rejects_non_positive():
    with pytest.raises(ValueError, match="positive"):
        resize_longest_side_shape(0, 5, 10)


def test_resize_rgb_uint8_is_pil_bilinear():
    img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize_rgb_uint8(img, 64)
    assert out.shape == (38, 64, 3) and out.dtype == np.uint8
    ref = np.asarray(Image.fromarray(img).resize((64, 38), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_resize_rgb_uint8_rejects_other_images(bad):
    with pytest.raises(ValueError, match="to_rgb_uint8"):
        resize_rgb_uint8(bad, 8)


def test_preprocess_normalises_and_pads_bottom_right():
    img = np.random.default_rng(1).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    x = preprocess(img, MEAN, STD, 16)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    ref = (torch.from_numpy(img).permute(2, 0, 1).float() - MEAN) / STD
    torch.testing.assert_close(x[0, :, :10, :], ref, rtol=0, atol=0)
    assert not x[0, :, 10:, :].any()


def test_preprocess_batch_stacks_and_checks_sizes():
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(2))
    x = preprocess_batch([a, b], MEAN, STD, 16)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[1:], preprocess(b, MEAN, STD, 16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="same size"):
        preprocess_batch([a, a[:4]], MEAN, STD, 16)
    with pytest.raises(ValueError, match="at least one"):
        preprocess_batch([], MEAN, STD, 16)
    with pytest.raises(ValueError, match="does not fit"):
        preprocess_batch([a], MEAN, STD, 8)


def test_apply_coords_and_boxes_scale_each_axis():
    coords = np.array([[[10.0, 20.0], [0.0, 0.0]]])
    out = apply_coords(coords, (100, 200), (512, 1024))
    np.testing.assert_allclose(out, [[[51.2, 102.4], [0.0, 0.0]]])
    assert coords[0, 0, 0] == 10.0  # input untouched
    boxes = apply_boxes(np.array([10, 20, 30, 40]), (100, 200), (50, 100))
    np.testing.assert_allclose(boxes, [[5, 10, 15, 20]])


def test_postprocess_matrix_rows_are_convex_weights():
    m = postprocess_matrix(16, 64, 40, 100)
    assert m.shape == (100, 16)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
    assert (m >= 0).all()


@pytest.mark.parametrize(
    ("original", "img_size", "lowres"),
    [
        ((768, 1024), 1024, 256),
        ((100, 37), 1024, 256),
        ((1500, 600), 1024, 256),
        ((50, 70), 64, 16),
        ((64, 64), 64, 16),
        ((13, 200), 64, 16),
    ],
)
def test_mask_upsampler_matches_two_step_interpolation(original, img_size, lowres):
    torch.manual_seed(0)
    input_size = resize_longest_side_shape(*original, img_size)
    low = 4 * torch.randn(2, 3, lowres, lowres)
    ref = _reference_postprocess(low, input_size, original, img_size)
    up = MaskUpsampler(original, input_size, img_size, lowres)
    logits = up.logits(low)
    assert logits.shape == (2, 3, *original) and logits.dtype == torch.float32
    assert (logits - ref).abs().max().item() < 1e-4
    masks = up.masks(low)
    assert masks.dtype == torch.bool
    assert (masks == (ref > 0)).float().mean().item() > 0.9999


def test_mask_upsampler_dense_matrices_agree():
    torch.manual_seed(1)
    low = torch.randn(5, 16, 16)
    a = MaskUpsampler((30, 45), (43, 64), 64, 16).logits(low)
    ah, aw = MaskUpsampler((30, 45), (43, 64), 64, 16).matrices
    dense = torch.from_numpy(ah).float() @ low @ torch.from_numpy(aw).float().T
    torch.testing.assert_close(a, dense, atol=1e-4, rtol=0)


def test_mask_upsampler_threshold_and_bad_shape():
    low = torch.zeros(1, 16, 16)
    low[0, 4:8, 4:8] = 5.0
    up = MaskUpsampler((64, 64), (64, 64), 64, 16)
    assert up.masks(low, threshold=0.0).any()
    assert not up.masks(low, threshold=10.0).any()
    with pytest.raises(ValueError, match="low-resolution"):
        up.logits(torch.zeros(1, 8, 8))


def _straight_banded(up, low):
    """The plain banded evaluation: gathers along the last axis, all rows at once."""
    (row_idx, row_w), (col_idx, col_w) = up._rows.on(low.device), up._cols.on(low.device)
    cols = low[..., col_idx[0]] * col_w[0]
    for t in range(1, col_idx.shape[0]):
        cols.addcmul_(low[..., col_idx[t]], col_w[t])
    full = cols[..., row_idx[0], :] * row_w[0][:, None]
    for t in range(1, row_idx.shape[0]):
        full.addcmul_(cols[..., row_idx[t], :], row_w[t][:, None])
    return full


@pytest.mark.parametrize("band", [None, 1])
@pytest.mark.parametrize(("original", "input_size"), [((768, 1024), (48, 64)), ((37, 300), (8, 64))])
def test_mask_upsampler_bands_equal_the_plain_banded_evaluation(monkeypatch, band, original, input_size):
    import napari_samscope.core.predict.transforms as transforms

    if band is not None:  # many small row bands (the floor of 16 rows applies)
        monkeypatch.setattr(transforms, "_BAND_ELEMENTS", band)
    torch.manual_seed(3)
    low = 3 * torch.randn(2, 3, 16, 16)
    up = MaskUpsampler(original, input_size, 64, 16)
    expected = _straight_banded(up, low)
    logits = up.logits(low)
    assert torch.equal(logits, expected)
    assert torch.equal(up.masks(low, threshold=0.5), expected > 0.5)
