"""Unit tests for the segment-everything helpers in ``core.mask_ops``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core.everything import mask_ops as mo


def _brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS on Python floats (the reference)."""

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    n = 60
    xy = rng.integers(0, 50, size=(n, 2))
    wh = rng.integers(1, 30, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    keep = mo.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _brute_force_nms(boxes.tolist(), scores.tolist(), thr)


def test_nms_ties_keep_input_order_and_strict_threshold():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.9])
    # box 2 has IoU 0.5 with the others: not suppressed at 0.5 (strict), suppressed at 0.49
    assert mo.nms(boxes, scores, 0.5).tolist() == [2, 0]
    assert mo.nms(boxes, scores, 0.49).tolist() == [2]


def test_nms_empty_and_bad_shapes():
    assert mo.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    with pytest.raises(ValueError, match="boxes"):
        mo.nms(torch.zeros(3, 3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        mo.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(mo.box_iou(a, b).numpy(), [[1.0, 1 / 3, 0.0]], rtol=1e-6)


def test_stability_score():
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2, :2] = 3.0  # 4 px above +1
    logits[0, 2, :2] = 0.5  # 2 more px above -1
    logits[1, 0, 0] = 0.0  # above -1 only
    s = mo.stability_score(logits, 0.0, 1.0)
    assert s.dtype == torch.float32
    np.testing.assert_allclose(s.numpy(), [4 / 6, 0.0])
    assert torch.isnan(mo.stability_score(torch.full((1, 3, 3), -9.0), 0.0, 1.0)).all()


def test_point_grid():
    g = mo.build_point_grid(2)
    np.testing.assert_allclose(g, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert mo.build_point_grid(32).shape == (1024, 2)
    grids = mo.build_layer_point_grids(16, 2, 2)
    assert [len(g) for g in grids] == [256, 64, 16]
    with pytest.raises(ValueError, match="positive integer"):
        mo.build_point_grid(0)
    with pytest.raises(ValueError, match="no points"):
        mo.build_layer_point_grids(2, 3, 2)
    with pytest.raises(ValueError, match="crop_n_layers"):
        mo.build_layer_point_grids(2, -1, 1)
    with pytest.raises(ValueError, match="downscale"):
        mo.build_layer_point_grids(2, 1, 0)


def test_crop_boxes_cover_the_image_with_overlap():
    boxes, layers = mo.generate_crop_boxes((100, 200), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 200, 100] and layers == [0, 1, 1, 1, 1]
    # overlap = int(0.3413 * 100 * 1) = 34; crop_w = ceil((34 + 200) / 2) = 117,
    # crop_h = ceil((34 + 100) / 2) = 67; origins x: 0, 83; y: 0, 33
    assert boxes[1:] == [[0, 0, 117, 67], [0, 33, 117, 100], [83, 0, 200, 67], [83, 33, 200, 100]]
    boxes2, layers2 = mo.generate_crop_boxes((64, 64), 2, 0.25)
    assert layers2.count(2) == 16
    covered = np.zeros((64, 64), bool)
    for x0, y0, x1, y1 in (b for b, layer in zip(boxes2, layers2) if layer == 2):
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_masks_to_boxes_inclusive_and_empty():
    masks = np.zeros((3, 8, 10), bool)
    masks[0, 2:5, 3:7] = True
    masks[2, 7, 9] = True
    boxes = mo.masks_to_boxes(torch.from_numpy(masks))
    np.testing.assert_array_equal(boxes, [[3, 2, 6, 4], [0, 0, 0, 0], [9, 7, 9, 7]])
    assert mo.mask_to_box(masks[1]) is None
    assert mo.masks_to_boxes(np.zeros((0, 4, 4), bool)).shape == (0, 4)
    with pytest.raises(ValueError, match="N, H, W"):
        mo.masks_to_boxes(np.zeros((4, 4), bool))


def test_xywh_and_uncrop():
    np.testing.assert_array_equal(mo.box_xyxy_to_xywh(np.array([[1, 2, 5, 9]])), [[1, 2, 4, 7]])
    np.testing.assert_array_equal(
        mo.uncrop_boxes(np.array([[1, 2, 5, 9]]), [10, 20, 50, 60]), [[11, 22, 15, 29]]
    )
    np.testing.assert_array_equal(
        mo.uncrop_points(np.array([[1.5, 2.0]]), [10, 20, 50, 60]), [[11.5, 22.0]]
    )


def test_box_near_crop_edge():
    crop = [100, 0, 300, 200]
    image = [0, 0, 300, 400]
    boxes = np.array(
        [
            [110, 50, 150, 80],  # near the crop's left edge (x=100), not the image's: True
            [150, 50, 299, 80],  # near the right edge, which is also the image's: False
            [150, 5, 200, 80],  # near the top, which is the image's top: False
            [150, 50, 200, 190],  # near the crop's bottom (200), image bottom is 400: True
            [150, 50, 200, 150],  # interior: False
        ]
    )
    np.testing.assert_array_equal(
        mo.is_box_near_crop_edge(boxes, crop, image), [True, False, False, True, False]
    )


def test_remove_small_regions_holes_and_islands():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5, 5] = False  # a 1-px hole
    mask[16:18, 16:18] = True  # a 4-px island
    filled, changed = mo.remove_small_regions(mask, 3, "holes")
    assert changed and filled[5, 5] and filled.sum() == mask.sum() + 1
    cleaned, changed = mo.remove_small_regions(mask, 5, "islands")
    assert changed and not cleaned[16:18, 16:18].any() and cleaned[2:12, 2:12].sum() == 99
    same, changed = mo.remove_small_regions(mask, 1, "islands")
    assert not changed and np.array_equal(same, mask)
    # every island small: the largest survives
    two = np.zeros((10, 10), bool)
    two[0, 0] = True
    two[5:7, 5:7] = True
    kept, changed = mo.remove_small_regions(two, 100, "islands")
    assert changed and kept.sum() == 4 and kept[5:7, 5:7].all()
    # diagonal neighbours are connected (8-connectivity)
    diag = np.eye(4, dtype=bool)
    assert not mo.remove_small_regions(diag, 4, "islands")[1]
    with pytest.raises(ValueError, match="mode"):
        mo.remove_small_regions(mask, 3, "blobs")


def test_batch_slices():
    assert [(s.start, s.stop) for s in mo.batch_slices(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    assert list(mo.batch_slices(0, 3)) == []
    with pytest.raises(ValueError, match="batch size"):
        list(mo.batch_slices(3, 0))


@pytest.mark.parametrize("shape", [(300, 500), (37, 600), (1024, 768), (20, 20)])
def test_windowed_upsampler_equals_full_postprocessing(shape):
    from napari_samscope.core.predict.transforms import MaskUpsampler, resize_longest_side_shape

    gen = torch.Generator().manual_seed(0)
    input_size = resize_longest_side_shape(*shape, 256)
    low = torch.full((64, 64), -3.0)
    low[2:12, 20:35] = torch.randn(10, 15, generator=gen) * 4
    full = MaskUpsampler(shape, input_size, 256, 64).logits(low)
    rows = np.flatnonzero((low > -1).any(1).numpy())
    cols = np.flatnonzero((low > -1).any(0).numpy())
    from napari_samscope.core.everything.windowed_upsampler import WindowedUpsampler

    up = WindowedUpsampler(shape, input_size, 256, 64)
    y0, x0, win = up.window(low, (rows[0], rows[-1]), (cols[0], cols[-1]))
    h, w = win.shape
    torch.testing.assert_close(win, full[y0 : y0 + h, x0 : x0 + w], rtol=0, atol=1e-5)
    outside = full.clone()
    outside[y0 : y0 + h, x0 : x0 + w] = -10
    assert not (outside > -1).any()  # nothing above the threshold outside the window
    assert (full > -1).sum() == (win > -1).sum()


def _reference_clean(mask: np.ndarray, area: float) -> tuple[np.ndarray, bool]:
    """The official order on the full image: holes, then islands."""
    out, holes = mo.remove_small_regions(mask, area, "holes")
    out, islands = mo.remove_small_regions(out, area, "islands")
    return out, holes or islands


@pytest.mark.parametrize("seed", range(6))
def test_clean_mask_regions_on_the_crop_equals_the_full_image(seed):
    rng = np.random.default_rng(seed)
    H, W = 40, 50
    full = np.zeros((H, W), bool)
    y0, x0 = rng.integers(0, 8, 2) if seed % 3 else (0, 0)
    h, w = rng.integers(20, H - y0 + 1), rng.integers(20, W - x0 + 1)
    full[y0 : y0 + h, x0 : x0 + w] = rng.random((h, w)) > 0.35
    box = mo.mask_to_box(full)
    crop = full[box[1] : box[3] + 1, box[0] : box[2] + 1]
    for area in (3, 30, 200):  # 200 forces the full-image fallback for thin margins
        mask, oy, ox, changed = mo.clean_mask_regions(crop, box[1], box[0], (H, W), area)
        placed = np.zeros((H, W), bool)
        placed[oy : oy + mask.shape[0], ox : ox + mask.shape[1]] = mask
        expected, expected_changed = _reference_clean(full, area)
        np.testing.assert_array_equal(placed, expected)
        assert changed == expected_changed
