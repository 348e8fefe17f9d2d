"""auto_annotate re-runs: stable names, a manifest that checks the source, outputs never read
back as inputs, bad files skipped, linked stack ids, and the typed options object."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_samscope.core.datasets.annotate import AnnotateOptions, auto_annotate, auto_annotate_job
from napari_samscope.core.datasets.manifest import MANIFEST_NAME
from napari_samscope.core.predict.sam_api import SAM
from napari_samscope.core.progress import run
from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d


@pytest.fixture(scope="module")
def model():
    import torch

    from napari_samscope.core.modeling.build import build_sam, tiny_config

    torch.manual_seed(0)
    return SAM.from_sam(build_sam(tiny_config("vit", 64)).eval(), name="tiny")


def _boxes(image):
    return [[4, 4, 20, 20], [30, 30, 50, 50]], [0, 0], [1.0, 1.0]


def test_a_new_file_with_the_same_stem_never_takes_an_older_files_labels(tmp_path, model):
    data = tmp_path / "d"
    data.mkdir()
    img_a, _ = make_nuclei_2d((64, 64), seed=1)
    img_b, _ = make_nuclei_2d((64, 64), seed=2)
    tifffile.imwrite(data / "x.tif", img_a)
    first = auto_annotate(data, sam_model=model, progress=None, verbose=False)
    out = first.output_dir
    tif_labels = (out / "x.txt").read_text()
    Image.fromarray(img_b).save(data / "x.png")  # sorted before x.tif
    second = auto_annotate(data, sam_model=model, progress=None, verbose=False)
    assert second.skipped == 1 and second.annotated == 1  # x.tif done, x.png new
    assert (out / "x.txt").read_text() == tif_labels  # x.tif keeps its name
    assert (out / "x_png.txt").exists() and not (out / "x_tif.txt").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())["sources"]
    assert manifest["x"]["source"].endswith("x.tif") and manifest["x_png"]["source"].endswith("x.png")
    assert len(manifest["x"]["sha256"]) == 64 and "x.txt" in manifest["x"]["outputs"]


def test_a_changed_source_is_annotated_again(tmp_path, model):
    data = tmp_path / "d"
    data.mkdir()
    img_a, _ = make_nuclei_2d((64, 64), seed=3)
    img_b, _ = make_nuclei_2d((64, 64), seed=4)
    Image.fromarray(img_a).save(data / "y.png")
    auto_annotate(data, sam_model=model, progress=None, verbose=False, det_model=_boxes)
    again = auto_annotate(data, sam_model=model, progress=None, verbose=False, det_model=_boxes)
    assert again.skipped == 1
    Image.fromarray(img_b).save(data / "y.png")  # other content under the same name
    third = auto_annotate(data, sam_model=model, progress=None, verbose=False, det_model=_boxes)
    assert third.annotated == 1 and third.skipped == 0


def test_output_folder_equal_to_input_folder_reruns(tmp_path, model):
    img, _ = make_nuclei_2d((64, 64), seed=5)
    tifffile.imwrite(tmp_path / "A.tif", img)
    first = auto_annotate(tmp_path, sam_model=model, progress=None, verbose=False, output_dir=tmp_path,
                          save_tiff=True)
    assert first.annotated == 1 and first.images == 1
    second = auto_annotate(tmp_path, sam_model=model, progress=None, verbose=False, output_dir=tmp_path,
                           save_tiff=True)
    assert second.images == 1 and second.skipped == 1 and second.failed == []  # A_labels.tif is no input
    third = auto_annotate(tmp_path, sam_model=model, progress=None, verbose=False, output_dir=tmp_path,
                          save_tiff=True, overwrite=True)
    assert third.images == 1 and third.annotated == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.tif", "A.txt", "A_labels.tif", MANIFEST_NAME]


def test_a_bad_file_never_stops_the_folder_and_booleans_are_images(tmp_path, model):
    data = tmp_path / "d"
    data.mkdir()
    img, truth = make_nuclei_2d((64, 64), seed=6)
    tifffile.imwrite(data / "a_mask.tif", truth > 0)  # boolean TIFF: a valid 0/1 image
    tifffile.imwrite(data / "b.tif", np.zeros((4, 4), np.complex64))  # not real numbers
    (data / "c.tif").write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(10))  # header only
    Image.fromarray(img).save(data / "d.png")
    summary = auto_annotate(data, sam_model=model, progress=None, verbose=False, det_model=_boxes)
    assert summary.annotated == 2, summary.failed
    assert sorted(p.name for p, _ in summary.failed) == ["b.tif", "c.tif"]
    assert all(reason for _, reason in summary.failed)
    assert (summary.output_dir / "d.txt").exists() and (summary.output_dir / "a_mask.txt").exists()


def test_stack_label_ids_are_linked_through_z(tmp_path, model):
    stack, _ = make_nuclei_3d((3, 64, 64), n=4, seed=7)

    def same_boxes(image):  # the same two objects on every plane
        return [[4, 4, 28, 28], [34, 34, 60, 60]], [0, 0], [1.0, 1.0]

    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    summary = auto_annotate(tmp_path / "s.tif", sam_model=model, progress=None, verbose=False,
                            det_model=same_boxes, save_tiff=True)
    labels = tifffile.imread(summary.output_dir / "s_labels.tif")
    per_plane = [set(np.unique(plane)) - {0} for plane in labels]
    assert per_plane[0] and all(ids == per_plane[0] for ids in per_plane)  # ids carry through z
    assert labels.max() == len(per_plane[0])


def test_options_object_is_shared_and_keywords_still_work(tmp_path, model):
    img, _ = make_nuclei_2d((64, 64), seed=8)
    Image.fromarray(img).save(tmp_path / "o.png")
    options = AnnotateOptions(sam_model=model, det_model=_boxes, output_dir=tmp_path / "o1")
    by_options = auto_annotate(tmp_path / "o.png", options, progress=None, verbose=False)
    by_job = run(auto_annotate_job(tmp_path / "o.png", options, output_dir=tmp_path / "o2"))
    by_keywords = auto_annotate(tmp_path / "o.png", sam_model=model, det_model=_boxes,
                                output_dir=tmp_path / "o3", progress=None, verbose=False)
    texts = {(s.output_dir / "o.txt").read_text() for s in (by_options, by_job, by_keywords)}
    assert len(texts) == 1 and by_options.objects == 2
    positional = auto_annotate(tmp_path / "o.png", _boxes, sam_model=model, output_dir=tmp_path / "o4",
                               progress=None, verbose=False)  # Ultralytics' (data, det_model)
    assert positional.objects == 2
    with pytest.raises(TypeError, match="unknown option"):
        auto_annotate(tmp_path / "o.png", sam_modle=model, progress=None)
    with pytest.raises(ValueError, match="conf"):
        AnnotateOptions(conf=2)
    with pytest.raises(AttributeError):
        options.conf = 0.5  # frozen
    assert AnnotateOptions(classes=[1, 2]).classes == (1, 2)


def test_summary_wording_and_no_empty_progress_line(tmp_path, model, capsys):
    img, _ = make_nuclei_2d((64, 64), seed=9)
    Image.fromarray(img).save(tmp_path / "one.png")

    def one_box(image):
        return [[4, 4, 30, 30]], [0], [1.0]

    summary = auto_annotate(tmp_path / "one.png", sam_model=model, det_model=one_box)
    err = capsys.readouterr().err
    assert "1 image: 1 annotated (1 plane, 1 object)" in str(summary)
    assert not re.search(r"(^|[\r\n ])0it \[", err)  # no empty bar before the work starts
    auto_annotate(tmp_path / "one.png", sam_model=model, det_model=one_box)  # all skipped
    assert not re.search(r"(^|[\r\n ])0it \[", capsys.readouterr().err)


def test_a_folder_annotated_before_manifests_is_trusted_once_then_recorded(tmp_path, model):
    img, _ = make_nuclei_2d((64, 64), seed=10)
    Image.fromarray(img).save(tmp_path / "old.png")
    first = auto_annotate(tmp_path / "old.png", sam_model=model, progress=None, verbose=False,
                          det_model=_boxes)
    (first.output_dir / MANIFEST_NAME).unlink()  # as written by a version without manifests
    (first.output_dir / "old.txt").write_text("5 0.1 0.1 0.2 0.1 0.2 0.2\n")  # hand-edited
    again = auto_annotate(tmp_path / "old.png", sam_model=model, progress=None, verbose=False,
                          det_model=_boxes)
    assert again.skipped == 1 and (first.output_dir / "old.txt").read_text().startswith("5 ")
    record = json.loads((first.output_dir / MANIFEST_NAME).read_text())["sources"]["old"]
    assert record["source"].endswith("old.png") and record["outputs"] == ["old.txt"]


def _record_many(folder: str, worker: int, count: int) -> None:
    from pathlib import Path

    from napari_samscope.core.datasets.manifest import Manifest

    root = Path(folder)
    for i in range(count):
        source = root / f"src_{worker}_{i}.txt"
        source.write_text(f"{worker} {i}")
        manifest = Manifest.load(root)
        manifest.record(f"s{worker}_{i}", source, [])
        manifest.save()


def test_concurrent_processes_keep_each_others_manifest_records(tmp_path) -> None:
    import multiprocessing

    from napari_samscope.core.datasets.manifest import Manifest

    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_record_many, args=(str(tmp_path), w, 15)) for w in range(3)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    records = Manifest.load(tmp_path).records
    assert sorted(records) == sorted(f"s{w}_{i}" for w in range(3) for i in range(15))


def test_a_save_merges_records_written_by_another_instance(tmp_path) -> None:
    from napari_samscope.core.datasets.manifest import Manifest

    (tmp_path / "a.tif").write_bytes(b"a")
    (tmp_path / "b.tif").write_bytes(b"b")
    first, second = Manifest.load(tmp_path), Manifest.load(tmp_path)
    first.record("a", tmp_path / "a.tif", [])
    first.save()
    second.record("b", tmp_path / "b.tif", [])
    second.save()
    assert sorted(Manifest.load(tmp_path).records) == ["a", "b"]
    assert sorted(second.records) == ["a", "b"]
