"""samscope everything: options reach the generator, records JSON, defaults in sync."""

from __future__ import annotations

import json

import tifffile


def test_help_defaults_match_the_generator():
    from napari_samscope.cli.everything import PARAMETERS
    from napari_samscope.core.everything import EVERYTHING_DEFAULTS

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
    assert code == 1 and "pred_iou_thresh" in err and "Traceback" not in err
    code, _, err = run_cli("everything", "--source", nuclei_png, "--points-per-side", "many")
    assert code == 2 and "invalid int value" in err
