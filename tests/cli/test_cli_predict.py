"""samscope predict: prompts, key=value, folders and stacks, bad usage."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image


def test_boxes_write_labels_and_overlay(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    out = tmp_path / "res"
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                              "--bboxes", "5,5,30,40", "40,10,70,50", "--out", out)
    assert code == 0, err
    labels = tifffile.imread(out / "nuclei_labels.tif")
    assert labels.shape == (64, 80) and labels.dtype == np.uint16 and labels.max() <= 2
    overlay = np.asarray(Image.open(out / "nuclei_overlay.png"))
    assert overlay.shape == (64, 80, 3) and overlay.dtype == np.uint8
    assert "nuclei.png" in stdout and "done: 1 image(s)" in stdout


def test_ultralytics_key_value_style(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, stdout, err = run_cli("predict", f"model={tiny_checkpoint}", f"source={nuclei_png}",
                              "points=[30,20]", "labels=[1]", f"out={tmp_path / 'kv'}")
    assert code == 0, err
    labels = tifffile.imread(tmp_path / "kv" / "nuclei_labels.tif")
    assert labels.max() <= 1  # one object from one point


def test_points_with_labels_and_multimask(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                         "--points", "30,20", "50,40", "--labels", "1", "0", "--multimask",
                         "--out", tmp_path / "pm")
    assert code == 0, err
    assert tifffile.imread(tmp_path / "pm" / "nuclei_labels.tif").max() <= 1


def test_box_with_points_is_one_object(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                              "--bboxes", "5,5,40,40", "--points", "20,20", "30,8", "--labels", "1", "0",
                              "--out", tmp_path / "bp")
    assert code == 0, err
    assert "1 object ->" in stdout
    assert tifffile.imread(tmp_path / "bp" / "nuclei_labels.tif").max() <= 1


def test_no_prompt_segments_everything_on_a_folder_with_a_stack(run_cli, tiny_checkpoint, tmp_path):
    from napari_samscope.core.synthetic import make_nuclei_2d

    data = tmp_path / "imgs"
    data.mkdir()
    image, _ = make_nuclei_2d((48, 48), dtype="uint16", seed=1)
    tifffile.imwrite(data / "single.tif", image)
    tifffile.imwrite(data / "stack.tif", np.stack([image, image[::-1]]), photometric="minisblack")
    code, stdout, err = run_cli("predict", "--model", tiny_checkpoint, "--source", data,
                              "--conf", "0.0", "points_stride=4", "--out", tmp_path / "all")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == sorted(["single_labels.tif", "single_overlay.png", "stack_z0000_labels.tif",
                            "stack_z0000_overlay.png", "stack_z0001_labels.tif",
                            "stack_z0001_overlay.png", "samscope_manifest.json"])
    assert "stack.tif plane 0001" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labels", "1"], "--labels needs --points"),
        (["--points", "1,2", "--labels", "1", "0"], "1 points but 2 labels"),
        (["--points", "1,2", "--bboxes", "0,0,5,5", "1,1,6,6"], "single box"),
        (["--bboxes", "0,0,5,5", "--conf", "0.5"], "only apply when no prompt"),
        (["--points", "3,3", "--points-per-side", "8"], "only apply when no prompt"),
        (["--labels", "2", "--points", "1,2"], "invalid choice"),
        (["--bboxes", "0,0,5"], "is not a box"),
    ],
)
def test_bad_prompts_are_usage_errors(run_cli, tiny_checkpoint, nuclei_png, args, message):
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png, *args)
    assert code == 2 and message in err


def test_missing_source_and_unreadable_image_fail_with_1(run_cli, tiny_checkpoint, tmp_path):
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", tmp_path / "nope.png")
    assert code == 1 and "does not exist" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", bad)
    assert code == 1 and "bad.png" in err and err.count("\n") == 1
