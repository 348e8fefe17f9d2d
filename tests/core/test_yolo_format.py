"""YOLO segmentation text round trip (holes, several parts) and the COCO writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_samscope.core.datasets.coco_format import CocoWriter, coco_annotation
from napari_samscope.core.datasets.yolo_format import (
    mask_rings,
    masks_to_yolo_lines,
    parse_yolo_lines,
    parse_yolo_segmentation,
    polygon_to_mask,
    write_yolo_segmentation,
    yolo_text_to_masks,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _disk(shape, center, radius):
    m = np.zeros(shape, bool)
    m[disk(center, radius, shape=shape)] = True
    return m


def _ring_with_island(shape=(60, 80)):
    m = _disk(shape, (30, 30), 15)
    m &= ~_disk(shape, (30, 30), 8)  # a hole
    m[29:32, 29:32] = True  # an island inside the hole
    m[10:20, 60:75] = True  # a second, separate part
    return m


def test_simple_shapes_round_trip_with_high_iou():
    shape = (64, 96)
    a = _disk(shape, (20, 20), 10)
    b = np.zeros(shape, bool)
    b[ellipse(40, 60, 12, 25, shape=shape, rotation=0.4)] = True
    c = np.zeros(shape, bool)
    c[5:15, 70:90] = True
    masks = np.stack([a, b, c])
    lines = masks_to_yolo_lines(masks, [0, 1, 2])
    assert len(lines) == 3
    for line in lines:
        values = [float(v) for v in line.split()[1:]]
        assert all(0.0 <= v <= 1.0 for v in values)
    back, classes = yolo_text_to_masks("\n".join(lines), shape)
    assert classes.tolist() == [0, 1, 2]
    for original, parsed in zip(masks, back):
        assert _iou(original, parsed) > 0.97


def test_default_is_exact_and_tolerance_simplifies():
    m = _disk((80, 80), (40, 40), 25)
    exact = masks_to_yolo_lines([m])[0]
    back, _ = yolo_text_to_masks(exact, m.shape)
    assert np.array_equal(back[0], m)  # collinear vertices dropped, nothing else
    simple = masks_to_yolo_lines([m], tolerance=1.0)[0]
    assert len(simple.split()) < len(exact.split())
    back, _ = yolo_text_to_masks(simple, m.shape)
    assert _iou(back[0], m) > 0.95


def test_holes_islands_and_parts_survive_in_one_line():
    m = _ring_with_island()
    lines = masks_to_yolo_lines([m], [3], tolerance=0.0)
    assert len(lines) == 1
    back, classes = yolo_text_to_masks(lines[0], m.shape)
    assert classes.tolist() == [3]
    assert not back[0][27, 27]  # the hole stays empty
    assert back[0][29, 29]  # the island inside the hole comes back
    assert back[0][15, 67]  # the second part comes back
    assert _iou(back[0], m) > 0.99


def test_split_parts_gives_one_line_per_part_with_holes_kept():
    m = _ring_with_island()
    lines = masks_to_yolo_lines([m], [1], split_parts=True)
    assert len(lines) == 3  # ring (with its hole), island, rectangle
    back, _ = yolo_text_to_masks("\n".join(lines), m.shape)
    union = back.any(axis=0)
    assert _iou(union, m) > 0.98
    ring = back[np.argmax(back.reshape(3, -1).sum(1))]
    assert not ring[27, 27] and not ring[30, 30]


def test_rings_cover_outer_and_hole_boundaries():
    m = _disk((40, 40), (20, 20), 12) & ~_disk((40, 40), (20, 20), 5)
    rings = mask_rings(m)
    assert len(rings) == 2
    assert all(r.shape[1] == 2 for r in rings)


def test_tiny_and_border_objects_round_trip_exactly():
    pixel = np.zeros((7, 7), bool)
    pixel[3, 3] = True
    full = np.ones((5, 7), bool)
    for m in (pixel, full):
        lines = masks_to_yolo_lines([m])
        back, _ = yolo_text_to_masks(lines[0], m.shape)
        assert np.array_equal(back[0], m)


def test_empty_masks_write_no_line_and_file_round_trip(tmp_path):
    shape = (32, 32)
    masks = np.zeros((2, *shape), bool)
    masks[1] = _disk(shape, (16, 16), 8)
    path = tmp_path / "a.txt"
    assert write_yolo_segmentation(path, masks, [5, 7]) == 1
    back, classes = parse_yolo_segmentation(path, shape)
    assert classes.tolist() == [7]
    assert _iou(back[0], masks[1]) > 0.97
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="class ids"):
        masks_to_yolo_lines(np.zeros((2, 4, 4), bool), [0])
    with pytest.raises(ValueError, match="2D"):
        masks_to_yolo_lines([np.zeros((2, 4, 4), bool)])
    with pytest.raises(ValueError, match="line 2"):
        parse_yolo_lines("0 0.1 0.1 0.2 0.2 0.3 0.1\n0 0.1 0.2 0.3\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_yolo_lines("cat 0.1 0.1 0.2 0.2 0.3 0.1\n")
    with pytest.raises(FileNotFoundError):
        parse_yolo_segmentation(tmp_path / "missing.txt", (4, 4))


def test_polygon_to_mask_uses_pixel_centres():
    # a square covering pixels 2..4 exactly (continuous coordinates 2..5)
    xy = np.array([[2, 2], [5, 2], [5, 5], [2, 5]], float)
    m = polygon_to_mask(xy, (8, 8), normalised=False)
    expected = np.zeros((8, 8), bool)
    expected[2:5, 2:5] = True
    assert np.array_equal(m, expected)


def _decode_rle(counts, size):
    h, w = size
    flat = np.zeros(h * w, bool)
    pos, value = 0, False
    for run in counts:
        flat[pos : pos + run] = value
        pos += run
        value = not value
    return flat.reshape((w, h)).T


def test_coco_structure_polygons_and_rle_for_holes(tmp_path):
    shape = (48, 64)
    plain = _disk(shape, (20, 20), 8)
    holed = _disk(shape, (24, 44), 12) & ~_disk(shape, (24, 44), 4)
    coco = CocoWriter(categories={0: "nucleus"})
    image_id = coco.add_image("a.tif", height=shape[0], width=shape[1], frame=2)
    assert coco.add_masks(image_id, [plain, holed, np.zeros(shape, bool)], [0, 1, 0], [0.9, 0.8, 0.1]) == 2
    path = coco.write(tmp_path / "ann.json")
    data = json.loads(path.read_text())
    assert set(data) == {"images", "annotations", "categories"}
    assert data["images"] == [{"id": 1, "file_name": "a.tif", "height": 48, "width": 64, "frame": 2}]
    assert [c["id"] for c in data["categories"]] == [0, 1]
    first, second = data["annotations"]
    assert first["image_id"] == 1 and first["iscrowd"] == 0 and first["area"] == int(plain.sum())
    x, y, w, h = first["bbox"]
    rows, cols = np.nonzero(plain)
    assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
    assert isinstance(first["segmentation"], list) and len(first["segmentation"][0]) >= 6
    poly = np.array(first["segmentation"][0]).reshape(-1, 2)
    assert _iou(polygon_to_mask(poly, shape, normalised=False), plain) > 0.95
    assert second["segmentation"]["size"] == [48, 64]
    assert np.array_equal(_decode_rle(second["segmentation"]["counts"], shape), holed)
    assert second["score"] == pytest.approx(0.8)
    assert coco_annotation(np.zeros(shape, bool), 1, 1, 0) is None
