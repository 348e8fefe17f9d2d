"""samscope everything: options reach the generator, records JSON, defaults in sync."""

from __future__ import annotations

import json

import tifffile


def test_help_defaults_match_the_generator():
    from napari_samscope.cli.everything import PARAMETERS
    from napari_samscope.core.everything.generator import EVERYTHING_DEFAULTS

    for name, (_, default, _) in PARAMETERS.items():
        assert EVERYTHING_DEFAULTS[name] == default, name


def test_everything_with_options_and_records(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    out = tmp_path / "ev"
    code, stdout, err = run_cli(
        "everything", "--model", tiny_checkpoint, "--source", nuclei_png, "--out", out,
        "--points-per-side", "4", "--conf", "0", "--stability-score-thresh", "0",
        "--box-nms-thresh", "0.9", "--records",
    )
    assert code == 0, err
    labels = tifffile.imread(out / "nuclei_labels.tif")
    records = json.loads((out / "nuclei_masks.json").read_text())
    assert labels.max() == len(records) and "masks" in stdout
    assert 1 <= len(records) <= 4 * 4 * 3
    assert {"label", "area", "bbox", "predicted_iou", "stability_score", "point", "crop_box"} <= set(records[0])


def test_ultralytics_names_work(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, _, err = run_cli("everything", f"model={tiny_checkpoint}", f"source={nuclei_png}",
                         "points_stride=2", "conf=0.0", "single_mask=True", f"out={tmp_path / 'u'}")
    assert code == 0, err
    assert (tmp_path / "u" / "nuclei_overlay.png").exists()


def test_out_of_range_parameter_is_reported(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, _, err = run_cli("everything", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--pred-iou-thresh", "1.5", "--out", tmp_path / "x")
    assert code == 2 and "pred_iou_thresh" in err and "Traceback" not in err
    # checked before the model is loaded: a model that does not exist is never reached
    code, _, err = run_cli("everything", "--model", tmp_path / "none.pt", "--source", nuclei_png,
                           "--points-per-side", "0", "--out", tmp_path / "x")
    assert code == 2 and "points_per_side must be a positive integer" in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli("everything", "--source", nuclei_png, "--points-per-side", "many")
    assert code == 2 and "invalid int value" in err


def test_help_says_that_the_models_recommended_values_apply(run_cli):
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, lookup

    code, stdout, _ = run_cli("everything", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "model's recommended values" in text and "[model's value, else 0.88]" in text
    recommended = lookup(DEFAULT_MODEL).everything_params()
    assert (f"{DEFAULT_MODEL} (the default model): pred_iou_thresh "
            f"{recommended['pred_iou_thresh']:g}") in text


def test_recommended_values_reach_the_generator_and_options_win(
    run_cli, tiny_checkpoint, nuclei_png, tmp_path, monkeypatch
):
    from napari_samscope.cli import everything as cli_everything
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.checkpoint import read_checkpoint
    from napari_samscope.core.weights.registry import ModelSpec

    spec = ModelSpec(name="mine", arch="custom", filename="tiny.pt",
                     everything_defaults=(("pred_iou_thresh", 0.0), ("stability_score_thresh", 0.0),
                                          ("points_per_side", 3)))
    path = tiny_checkpoint

    def load_model(name, device="", dtype="default"):
        model = SAM(path, device="cpu")
        return SAM.from_sam(model.model, "mine", spec=spec)

    monkeypatch.setattr(cli_everything, "load_model", load_model)
    assert read_checkpoint(path).state_dict  # the stand-in loads the tiny checkpoint
    code, stdout, err = run_cli("everything", "--source", nuclei_png, "--out", tmp_path / "a",
                                "--records")
    assert code == 0, err
    assert "mine: using the model's recommended points_per_side 3, pred_iou_thresh 0, " \
           "stability_score_thresh 0" in stdout
    records = json.loads((tmp_path / "a" / "nuclei_masks.json").read_text())
    assert 1 <= len(records) <= 3 * 3 * 3  # a 3x3 grid, thresholds off
    code, stdout, err = run_cli("everything", "--source", nuclei_png, "--out", tmp_path / "b",
                                "--points-per-side", "2", "--conf", "0.0",
                                "--stability-score-thresh", "0.0")
    assert code == 0, err
    assert "using the model's recommended" not in stdout  # all were overridden
