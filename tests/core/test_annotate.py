"""auto_annotate on folders with good and bad files, stacks, odd names, re-runs and outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_samscope.core.datasets.annotate import (
    AnnotatedObject,
    annotate_plane,
    auto_annotate,
    auto_annotate_job,
    paint_labels,
)
from napari_samscope.core.datasets.annotate_io import read_planes, safe_stem
from napari_samscope.core.datasets.detectors import Detections
from napari_samscope.core.datasets.yolo_format import parse_yolo_segmentation
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.sam_api import SAM
from napari_samscope.core.progress import Progress, run
from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d


@pytest.fixture(scope="module")
def model():
    import torch

    from napari_samscope.core.modeling.build import build_sam, tiny_config

    torch.manual_seed(0)
    return SAM.from_sam(build_sam(tiny_config("vit", 64)).eval(), name="tiny")


def _folder(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    img8, _ = make_nuclei_2d((64, 80), seed=1)
    img16, _ = make_nuclei_2d((72, 64), dtype="uint16", seed=2)
    stack, _ = make_nuclei_3d((3, 48, 48), n=6, seed=3)
    Image.fromarray(img8).save(data / "a.png")
    Image.fromarray(img8).convert("RGB").save(data / "b.jpg", quality=95)
    tifffile.imwrite(data / "c16.tif", img16)
    tifffile.imwrite(data / "stack.tiff", stack, photometric="minisblack")
    (data / "broken.png").write_bytes(b"not a png at all")
    (data / "truncated.tif").write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(10))
    (data / "notes.txt").write_text("ignored: not an image suffix")
    return data


def test_folder_with_good_and_bad_files(tmp_path, model, capsys):
    data = _folder(tmp_path)
    summary = auto_annotate(data, sam_model=model, progress=None, save_tiff=True, save_coco=True)
    out = tmp_path / "images_auto_annotate_labels"
    assert summary.output_dir == out
    assert summary.images == 6 and summary.annotated == 4 and summary.skipped == 0
    assert sorted(p.name for p, _ in summary.failed) == ["broken.png", "truncated.tif"]
    assert summary.planes == 6  # a, b, c16 and the 3 planes of the stack
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "a.txt", "b.txt", "c16.txt", "stack_z0000.txt", "stack_z0001.txt", "stack_z0002.txt",
        "a_labels.tif", "b_labels.tif", "c16_labels.tif", "stack_labels.tif", "annotations_coco.json", "samscope_manifest.json",
    ])
    err = capsys.readouterr().err
    assert "broken.png" in err and "2 failed" in err and "4 annotated" in err
    # label TIFFs: 16-bit, stack as (Z, H, W); label k is line k of the text
    labels = tifffile.imread(out / "stack_labels.tif")
    assert labels.shape == (3, 48, 48) and labels.dtype == np.uint16
    a_labels = tifffile.imread(out / "a_labels.tif")
    masks, classes = parse_yolo_segmentation(out / "a.txt", (64, 80))
    assert a_labels.shape == (64, 80) and len(masks) == a_labels.max() == summary_objects(out / "a.txt")
    assert (classes == 0).all()
    for k, mask in enumerate(masks, start=1):
        painted = a_labels == k
        if painted.sum() > 20:  # not hidden by a smaller overlapping object
            assert (painted & mask).sum() / max(1, painted.sum()) > 0.5
    coco = json.loads((out / "annotations_coco.json").read_text())
    assert len(coco["images"]) == 6
    assert {im["file_name"] for im in coco["images"]} == {"a.png", "b.jpg", "c16.tif", "stack.tiff"}
    assert sorted(im.get("frame", -1) for im in coco["images"] if im["file_name"] == "stack.tiff") == [0, 1, 2]
    assert len(coco["annotations"]) == summary.objects


def summary_objects(path):
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_rerun_skips_and_overwrite_redoes(tmp_path, model):
    data = tmp_path / "d"
    data.mkdir()
    img, _ = make_nuclei_2d((64, 64), seed=4)
    Image.fromarray(img).save(data / "x.png")
    tifffile.imwrite(data / "s.tif", np.stack([img, img]), photometric="minisblack")
    first = auto_annotate(data, sam_model=model, progress=None, verbose=False, save_coco=True)
    assert first.annotated == 2 and first.skipped == 0
    out = first.output_dir
    marker = "9 0.1 0.1 0.2 0.1 0.2 0.2\n"
    (out / "x.txt").write_text(marker)  # a hand-edited annotation must survive a re-run
    second = auto_annotate(data, sam_model=model, progress=None, verbose=False, save_coco=True)
    assert second.annotated == 0 and second.skipped == 2
    assert (out / "x.txt").read_text() == marker
    coco = json.loads((out / "annotations_coco.json").read_text())
    assert len(coco["images"]) == 3  # rebuilt from the existing text files
    assert any(a["category_id"] == 9 for a in coco["annotations"])
    # asking for a new output (a label TIFF) re-annotates
    third = auto_annotate(data, sam_model=model, progress=None, verbose=False, save_tiff=True)
    assert third.annotated == 2
    (out / "x.txt").write_text(marker)
    fourth = auto_annotate(data, sam_model=model, progress=None, verbose=False, overwrite=True)
    assert fourth.annotated == 2 and (out / "x.txt").read_text() != marker


def test_odd_names_stay_inside_output_dir(tmp_path, model):
    data = tmp_path / "odd names"
    data.mkdir()
    img, _ = make_nuclei_2d((48, 48), seed=5)
    for name in ["..png", "..x.png", "ünïcödé 細胞.png", " spaced name .png", "same.png", "same.tif", "CON.png"]:
        if name.endswith(".tif"):
            tifffile.imwrite(data / name, img)
        else:
            Image.fromarray(img).save(data / name, format="PNG")
    outside = tmp_path / "x.txt"
    summary = auto_annotate(
        [data / "..x.png", *sorted(data.iterdir())], sam_model=model, progress=None, verbose=False,
        output_dir=tmp_path / "out",
    )
    out = (tmp_path / "out").resolve()
    assert summary.failed == []
    assert all(p.resolve().parent == out for p in summary.files)
    assert not outside.exists()
    names = {p.name for p in out.iterdir()}
    assert {"same.txt", "same_tif.txt", "ünïcödé 細胞.txt", "spaced name.txt", "_CON.txt"} <= names
    assert not any(n.startswith(".") for n in names)
    assert len(names) == 9  # every input got its own file (the list repeats ..x.png), + manifest


@pytest.mark.parametrize(
    "name, expected",
    [("../x", "_x"), ("..", "image"), ("a/b\\c", "a_b_c"), (".hidden", "hidden"), ("nul", "_nul"),
     ("tab\tname", "tab_name"), ("é" * 200, "é" * 90)],
)
def test_safe_stem(name, expected):
    assert safe_stem(name) == expected


def test_single_file_default_output_and_16bit_values(tmp_path, model):
    img, _ = make_nuclei_2d((64, 64), dtype="uint16", seed=6)
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, img)
    summary = auto_annotate(path, sam_model=model, progress=None, verbose=False)
    assert summary.output_dir == tmp_path / "one_auto_annotate_labels"
    assert (summary.output_dir / "one.txt").exists()


def test_callable_detector_classes_conf_and_max_det(tmp_path, model):
    img, _ = make_nuclei_2d((64, 64), seed=7)
    Image.fromarray(img).save(tmp_path / "p.png")

    def detector(image):
        boxes = [[2, 2, 30, 30], [30, 30, 60, 60], [5, 40, 25, 60], [40, 2, 60, 20]]
        return boxes, [1, 2, 2, 2], [0.9, 0.8, 0.7, 0.1]

    summary = auto_annotate(
        tmp_path / "p.png", det_model=detector, sam_model=model, progress=None, verbose=False,
        classes=[2], conf=0.5, max_det=1,
    )
    lines = (summary.output_dir / "p.txt").read_text().splitlines()
    assert summary.objects == len(lines) <= 1
    assert all(line.split()[0] == "2" for line in lines)


def test_progress_is_reported_per_image(tmp_path, model):
    data = _folder(tmp_path)
    reports: list[Progress] = []
    run(auto_annotate_job(data, sam_model=model, output_dir=tmp_path / "o"), progress=reports.append)
    assert reports[-1].done == reports[-1].total == 6
    assert any("plane 2/3" in r.message for r in reports)


def test_bad_data_is_explained(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        auto_annotate(tmp_path / "missing", sam_model=model, progress=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        auto_annotate(tmp_path / "empty", sam_model=model, progress=None)
    with pytest.raises(ValueError, match="empty list"):
        auto_annotate([], sam_model=model, progress=None)
    with pytest.raises(ValueError, match="conf"):
        auto_annotate(tmp_path / "empty", sam_model=model, progress=None, conf=1.5)
    with pytest.raises(ValueError, match="max_det"):
        auto_annotate(tmp_path / "empty", sam_model=model, progress=None, max_det=0)


def test_never_overwrites_an_input_image(tmp_path, model):
    img, _ = make_nuclei_2d((48, 48), seed=8)
    tifffile.imwrite(tmp_path / "k.tif", img)
    tifffile.imwrite(tmp_path / "k_labels.tif", img)
    before = (tmp_path / "k_labels.tif").read_bytes()
    with pytest.raises(ValueError, match="replace an input image"):
        auto_annotate(tmp_path, sam_model=model, progress=None, output_dir=tmp_path, save_tiff=True)
    assert (tmp_path / "k_labels.tif").read_bytes() == before


def test_read_planes_layouts(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_planes(tmp_path / "rgb.tif").shape == (1, 10, 12, 3)
    tifffile.imwrite(tmp_path / "tz.tif", np.zeros((2, 3, 10, 12), np.uint16), photometric="minisblack",
                     metadata={"axes": "TZYX"})
    assert read_planes(tmp_path / "tz.tif").shape == (6, 10, 12)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "g.png")
    assert read_planes(tmp_path / "g.png").shape == (1, 10, 12)


def test_annotate_plane_and_paint_labels(model):
    img, labels = make_nuclei_2d((64, 64), seed=9)
    pred = Predictor(model)
    det = Detections.from_arrays([[5, 5, 30, 30], [20, 20, 40, 40]], [0, 3], [0.9, 0.5])
    objects = annotate_plane(pred, img, det)
    assert 1 <= len(objects) <= 2 and not pred.is_image_set
    painted = paint_labels(objects, (64, 64))
    assert painted.dtype == np.uint32 and painted.max() == len(objects)
    assert annotate_plane(pred, np.zeros((32, 32), np.uint8), det) == []  # blank plane
    big = AnnotatedObject(0, 1.0, (0, 0), np.ones((10, 10), bool))
    small = AnnotatedObject(0, 1.0, (2, 2), np.ones((2, 2), bool))
    painted = paint_labels([small, big], (12, 12))
    assert painted[3, 3] == 1 and painted[0, 0] == 2  # the small object stays visible
