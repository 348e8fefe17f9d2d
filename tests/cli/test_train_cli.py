"""``samscope train`` and ``samscope evaluate`` on tiny data (their own parser and through main)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import tifffile

from napari_samscope.cli import evaluate as evaluate_cli
from napari_samscope.cli import train as train_cli
from napari_samscope.core.modeling.build import tiny_config
from napari_samscope.core.synthetic import make_nuclei_2d


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samscope")
    subparsers = parser.add_subparsers(dest="command")
    train_cli.register(subparsers)
    evaluate_cli.register(subparsers)
    return parser



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture
def folders(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        image, label = make_nuclei_2d((64, 64), n=3, radius_range=(10, 14), touching=False, seed=i)
        tifffile.imwrite(images / f"cells_{i}.tif", image)
        tifffile.imwrite(labels / f"cells_{i}_labels.tif", label)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config("tiny_vit", img_size=64).to_dict()))
    return images, labels, config


def test_train_then_evaluate_from_folders(folders, tmp_path, capsys):
    images, labels, config = folders
    out = tmp_path / "model.pt"
    args = _parser().parse_args([
        "train", "--images", str(images), "--labels", str(labels), "--config", str(config),
        "--out", str(out), "--steps", "3", "--trainable", "all", "--batch-images", "2",
        "--objects-per-image", "2", "--seed", "1",
    ])
    assert args.func(args) == 0
    assert out.is_file() and (tmp_path / "model.pt.json").is_file()
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and str(out) in printed
    meta = json.loads((tmp_path / "model.pt.json").read_text())["meta"]
    assert meta["training"]["seed"] == 1 and meta["data"]["planes"] == 2

    args = _parser().parse_args([
        "evaluate", "--model", str(out), "--images", str(images), "--labels", str(labels),
        "--json", "--device", "cpu",
    ])
    assert args.func(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["images"] == 2 and figures["objects"] >= 4
    for key in ("point_iou", "point_multimask_iou", "box_iou"):
        assert 0.0 <= figures[key] <= 1.0
        assert 0.0 <= figures[f"{key}_se"] <= 0.5  # at least 4 objects: defined
    assert figures["box_minus_otsu"] == pytest.approx(figures["box_iou"] - figures["otsu_box_iou"], abs=2e-4)


def test_evaluate_on_synthetic_images(folders, tmp_path, capsys):
    _, _, config = folders
    out = tmp_path / "m.pt"
    args = _parser().parse_args(["train", "--synthetic", "1", "--config", str(config),
                                 "--out", str(out), "--steps", "1", "--objects-per-image", "1"])
    assert args.func(args) == 0
    args = _parser().parse_args(["evaluate", "--model", str(out), "--synthetic", "1",
                                 "--seed", "5", "--size", "128", "--uint16", "--low-snr",
                                 "--device", "cpu"])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "point IoU" in line and "box IoU" in line and "in 1 images" in line
    assert "(float32, flips 1, refined points off, zoom 1)" in line  # a checkpoint path: none
    assert "Otsu threshold in the box" in line
    assert "box minus Otsu, object by object" in line and "one standard error of the mean" in line


def test_evaluate_reports_touching_pairs_and_half_contrast_outlines(folders, tmp_path, capsys):
    _, _, config = folders
    out = tmp_path / "m.pt"
    args = _parser().parse_args(["train", "--synthetic", "1", "--config", str(config),
                                 "--out", str(out), "--steps", "1", "--objects-per-image", "1"])
    assert args.func(args) == 0
    capsys.readouterr()
    args = _parser().parse_args(["evaluate", "--model", str(out), "--synthetic", "1", "--size", "128",
                                 "--outline", "half_contrast", "--touching-pairs", "--device", "cpu",
                                 "--json"])
    assert args.func(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pairs = figures["touching_pairs"]
    assert pairs["pairs"] > 0 and 0 <= pairs["positive_iou"] <= 1 and 0 <= pairs["pair_iou"] <= 1
    assert 0.0 <= figures["otsu_box_iou"] <= 1.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_evaluate_reports_the_requested_precision(folders, tmp_path, capsys, dtype):
    _, _, config = folders
    out = tmp_path / "m.pt"
    args = _parser().parse_args(["train", "--synthetic", "1", "--config", str(config),
                                 "--out", str(out), "--steps", "1", "--objects-per-image", "1"])
    assert args.func(args) == 0
    capsys.readouterr()
    args = _parser().parse_args(["evaluate", "--model", str(out), "--synthetic", "1",
                                 "--size", "128", "--device", "cpu", "--dtype", dtype, "--json"])
    assert args.func(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["dtype"] == dtype and figures["objects"] > 0


def test_evaluate_compares_two_models_on_the_same_objects_and_points(folders, tmp_path, capsys):
    _, _, config = folders
    models = []
    for steps in (1, 4):
        out = tmp_path / f"m{steps}.pt"
        args = _parser().parse_args(["train", "--synthetic", "1", "--config", str(config),
                                     "--out", str(out), "--steps", str(steps), "--objects-per-image", "2"])
        assert args.func(args) == 0
        models.append(str(out))
    capsys.readouterr()
    common = ["--synthetic", "2", "--size", "128", "--seed", "3", "--device", "cpu"]
    args = _parser().parse_args(["evaluate", "--model", models[0], "--compare", models[1], "--json", *common])
    assert args.func(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    other = figures["compare"]
    assert other["model"] == models[1] and other["objects"] == figures["objects"] > 2
    for key in ("point_iou", "point_multimask_iou", "box_iou"):
        # the mean of the differences is the difference of the means: same objects, same points
        assert other[f"{key}_diff"] == pytest.approx(other[key] - figures[key], abs=2e-4)
        assert other[f"{key}_diff_se"] >= 0.0
    assert other["box_iou_diff"] != 0.0 or other["point_iou_diff"] != 0.0  # 3 more steps changed it

    args = _parser().parse_args(["evaluate", "--model", models[0], "--compare", models[0], *common])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(models[0]) and "object by object (same points)" in line
    assert "point +0.0000 ± 0.0000" in line and "box +0.0000 ± 0.0000" in line  # a model against itself


def test_an_unknown_dtype_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["evaluate", "--synthetic", "1", "--dtype", "float8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'float8'" in capsys.readouterr().err


def test_main_runs_the_subcommands(folders, tmp_path):
    from napari_samscope.cli.main import main

    images, labels, config = folders
    out = tmp_path / "via_main.pt"
    code = main(["train", "--images", str(images), "--labels", str(labels), "--config",
                 str(config), "--out", str(out), "--steps", "1", "--objects-per-image", "1"])
    assert code == 0 and out.is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x.pt"], "--images and --labels are both required"),
        (["train", "--images", "a", "--synthetic", "2", "--out", "x.pt"], "either --synthetic"),
        (["train", "--synthetic", "1", "--model", "vit_t", "--config", "c.json", "--out", "x.pt"],
         "either --model"),
        (["evaluate", "--images", "a", "--labels", "b", "--uint16"], "only apply to --synthetic"),
        (["evaluate", "--images", "a", "--labels", "b", "--outline", "half_contrast"],
         "only apply to --synthetic"),
    ],
)
def test_bad_usage_exits_with_2(argv, message, capsys):
    from napari_samscope.cli.main import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_mismatched_names_fail_with_a_clear_message(folders, tmp_path, capsys):
    from napari_samscope.cli.main import main

    images, labels, config = folders
    (labels / "cells_1_labels.tif").rename(labels / "other_labels.tif")
    code = main(["train", "--images", str(images), "--labels", str(labels), "--config",
                 str(config), "--out", str(tmp_path / "x.pt"), "--steps", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "do not match" in err and "cells_1" in err
    assert not (tmp_path / "x.pt").exists()


def test_empty_label_image_fails_with_a_clear_message(folders, tmp_path, capsys):
    from napari_samscope.cli.main import main

    images, labels, config = folders
    tifffile.imwrite(labels / "cells_0_labels.tif", np.zeros((64, 64), np.uint16))
    code = main(["train", "--images", str(images), "--labels", str(labels), "--config",
                 str(config), "--out", str(tmp_path / "x.pt"), "--steps", "1"])
    assert code == 1
    assert "no objects" in capsys.readouterr().err
