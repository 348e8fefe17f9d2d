"""auto_annotate(det_model="ais" | "apg"): the SAM model's instance decoder gives the
objects and their masks; a model without a decoder is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from _decoder_model import blob_image, tiny_sam_with_decoder
from napari_samscope.core.datasets.annotate import auto_annotate
from napari_samscope.core.datasets.detectors import (
    InstanceDetector,
    make_detector,
    make_instance_detector,
)


@pytest.fixture(scope="module")
def model():
    return tiny_sam_with_decoder()


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    images = {}
    for seed in (0, 1):
        images[f"img{seed}"] = blob_image(seed=seed)
        tifffile.imwrite(data / f"img{seed}.tif", images[f"img{seed}"])
    return data, images


def _annotate(data, **options):
    return auto_annotate(data, progress=None, verbose=False, save_tiff=True, **options)


@pytest.mark.parametrize("mode", ["ais", "APG"])
def test_the_decoder_objects_are_the_annotation(folder, model, mode):
    data, images = folder
    summary = _annotate(data, det_model=mode, sam_model=model)
    assert summary.annotated == 2 and not summary.failed
    out = summary.output_dir
    total = 0
    for stem, image in images.items():
        expected = model.segment_instances(image, mode=mode.lower())
        count = len(np.unique(expected)) - 1
        assert count >= 5
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_labels.tif"), expected)
        lines = (out / f"{stem}.txt").read_text().splitlines()
        assert len(lines) == count and all(line.startswith("0 ") for line in lines)
        total += count
    assert summary.objects == total


def test_max_det_keeps_the_largest_and_classes_filter(folder, model):
    data, images = folder
    summary = _annotate(data, det_model="ais", sam_model=model, max_det=3,
                        output_dir=data.parent / "three")
    labels = tifffile.imread(summary.output_dir / "img0_labels.tif")
    full = model.segment_instances(images["img0"], mode="ais")
    areas = np.bincount(full.ravel())[1:]
    assert len(np.unique(labels)) - 1 == 3
    kept_areas = sorted(np.bincount(labels.ravel())[1:].tolist())
    assert kept_areas == sorted(np.sort(areas)[-3:].tolist())
    none = _annotate(data, det_model="ais", sam_model=model, classes=[1],
                     output_dir=data.parent / "none")
    assert none.objects == 0 and none.annotated == 2


def test_a_model_without_decoder_is_a_clear_error(folder, tiny_sam_factory):
    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor

    data, _ = folder
    plain = SAM.from_sam(tiny_sam_factory("vit", 64, seed=3), "plain-tiny")
    with pytest.raises(ValueError, match=r"'plain-tiny' has no instance decoder.*vit_b_lm"):
        _annotate(data, det_model="ais", sam_model=plain)
    with pytest.raises(TypeError, match="registry name, a checkpoint path or a SAM"):
        _annotate(data, det_model="ais", sam_model=Predictor(plain))
    with pytest.raises(ValueError, match="make_instance_detector"):
        make_detector("ais")
    with pytest.raises(ValueError, match="is not one of"):
        make_instance_detector("blobs", plain)


def test_instance_detector_boxes_hold_its_objects(model):
    image = blob_image()
    detector = make_instance_detector("ais", model)
    assert isinstance(detector, InstanceDetector)
    labels = detector.segment(image)
    found = detector(image)
    assert len(found) == len(np.unique(labels)) - 1
    for value, (x0, y0, x1, y1) in enumerate(found.boxes.astype(int), start=1):
        rows, cols = np.nonzero(labels == value)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (y0, y1, x0, x1)

