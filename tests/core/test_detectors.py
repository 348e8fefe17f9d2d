"""Detectors: blobs on synthetic nuclei, callables, YOLO weights with and without ultralytics."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from napari_samscope.core.datasets.detectors import (
    BlobDetector,
    CallableDetector,
    Detections,
    YoloDetector,
    make_detector,
)
from napari_samscope.core.synthetic import make_nuclei_2d


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_blobs_find_roughly_the_right_number_of_nuclei(dtype):
    image, labels = make_nuclei_2d((192, 192), dtype=dtype, seed=1)
    n_true = int(labels.max())
    found = make_detector("blobs")(image)
    assert 0.75 * n_true <= len(found) <= 1.25 * n_true
    assert found.boxes.dtype == np.float32 and found.boxes.shape == (len(found), 4)
    assert (found.boxes[:, 0] <= found.boxes[:, 2]).all() and (found.boxes[:, 1] <= found.boxes[:, 3]).all()
    assert (found.boxes >= 0).all() and (found.boxes[:, 2:] <= 191).all()
    assert ((found.scores > 0) & (found.scores <= 1)).all()
    # most true nuclei have their centre inside some box
    hits = 0
    for index in range(1, n_true + 1):
        rows, cols = np.nonzero(labels == index)
        r, c = rows.mean(), cols.mean()
        b = found.boxes
        hits += bool(((b[:, 0] <= c) & (c <= b[:, 2]) & (b[:, 1] <= r) & (r <= b[:, 3])).any())
    assert hits >= 0.8 * n_true


def test_blobs_on_rgb_and_on_a_blank_image():
    image, _ = make_nuclei_2d((96, 96), seed=2)
    rgb = np.stack([image] * 3, axis=-1)
    assert len(BlobDetector()(rgb)) == len(BlobDetector()(image))
    assert len(BlobDetector()(np.zeros((32, 32), np.uint16))) == 0
    with pytest.raises(ValueError, match="2D"):
        BlobDetector()(np.zeros((4, 8, 8)))


def test_dark_objects_mode_finds_dark_spots():
    image = np.full((64, 64), 200, np.uint8)
    image[10:20, 10:20] = 20
    image[40:52, 30:44] = 20
    found = BlobDetector(bright_objects=False)(image)
    assert len(found) == 2


def test_callable_detector_with_full_tuple_and_boxes_only():
    def full(image):
        return [[1, 2, 10, 12], [3, 3, 8, 9]], [4, 5], [0.9, 0.2]

    det = make_detector(full)
    assert isinstance(det, CallableDetector)
    out = det(np.zeros((16, 16)))
    assert out.class_ids.tolist() == [4, 5] and out.scores.tolist() == pytest.approx([0.9, 0.2])
    only_boxes = make_detector(lambda image: np.array([1, 2, 3, 4]))(np.zeros((8, 8)))
    assert only_boxes.boxes.shape == (1, 4) and only_boxes.class_ids.tolist() == [0]
    assert only_boxes.scores.tolist() == [1.0]


def test_callable_detector_bad_outputs_are_explained():
    with pytest.raises(TypeError, match="boxes, class_ids, scores"):
        make_detector(lambda image: ([[0, 0, 1, 1]], [0]))(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        make_detector(lambda image: np.zeros((2, 3)))(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="one of each"):
        make_detector(lambda image: ([[0, 0, 1, 1]], [0, 1], [1.0]))(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        make_detector(lambda image: [[0, 0, np.nan, 1]])(np.zeros((4, 4)))
    with pytest.raises(TypeError, match="det_model"):
        make_detector(42)


def test_filtered_by_conf_classes_and_max_det():
    det = Detections.from_arrays(
        [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 4, 4]], [0, 1, 0, 2], [0.1, 0.9, 0.5, 0.7]
    )
    assert det.filtered(conf=0.4).scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert det.filtered(classes=[0]).class_ids.tolist() == [0, 0]
    assert det.filtered(max_det=1).boxes.tolist() == [[0, 0, 2, 2]]
    assert len(det.filtered(conf=0.95)) == 0


def test_yolo_weights_without_ultralytics_give_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import fails
    with pytest.raises(ImportError, match="pip install ultralytics"):
        make_detector("yolov8x.pt")


def test_a_name_that_is_no_detector_is_explained():
    with pytest.raises(ValueError, match="neither 'blobs'"):
        make_detector("blobz")


def test_missing_yolo_weight_path_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        make_detector(str(tmp_path / "weights" / "best.pt"))


class _FakeBoxes:
    def __init__(self):
        self.xyxy = np.array([[1.0, 2.0, 20.0, 30.0]], np.float32)
        self.cls = np.array([3.0])
        self.conf = np.array([0.8])


class _FakeYOLO:
    calls: list = []

    def __init__(self, weights):
        self.weights = weights

    def __call__(self, image, **kwargs):
        _FakeYOLO.calls.append((image, kwargs))
        return [types.SimpleNamespace(boxes=_FakeBoxes())]


def test_yolo_path_uses_ultralytics_when_installed(monkeypatch):
    fake = types.ModuleType("ultralytics")
    fake.YOLO = _FakeYOLO
    monkeypatch.setitem(sys.modules, "ultralytics", fake)
    det = make_detector("yolov8n.pt", conf=0.3, classes=[3], max_det=5)
    assert isinstance(det, YoloDetector)
    out = det(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    assert out.boxes.tolist() == [[1.0, 2.0, 20.0, 30.0]]
    assert out.class_ids.tolist() == [3] and out.scores.tolist() == pytest.approx([0.8])
    image, kwargs = _FakeYOLO.calls[-1]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8  # BGR uint8
    assert kwargs["conf"] == 0.3 and kwargs["classes"] == [3] and kwargs["max_det"] == 5
