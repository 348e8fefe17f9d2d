"""samscope everything: options reach the generator, records JSON, defaults in sync."""

from __future__ import annotations

import json

import numpy as np
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


def _checkpoint_with_decoder(path):
    import torch

    from napari_samscope.core.instances.decoder import UNETRDecoder
    from napari_samscope.core.modeling.build import build_sam, tiny_config

    torch.manual_seed(0)
    sam = build_sam(tiny_config("vit", 64)).eval()
    decoder = UNETRDecoder(embed_dim=32, features=(32, 16, 8, 4), conv_transpose=True).eval()
    torch.save({
        "model_state": {"sam." + k: v for k, v in sam.state_dict().items()},
        "decoder_state": decoder.state_dict(),
    }, path)
    return path


def test_everything_mode_ais_writes_the_decoders_instances(run_cli, nuclei_png, tmp_path):
    import tifffile

    from napari_samscope import SAM
    from napari_samscope.core.predict.image import to_rgb_uint8

    model_file = _checkpoint_with_decoder(tmp_path / "with_decoder.pt")
    out = tmp_path / "ais"
    code, stdout, err = run_cli(
        "everything", "--model", model_file, "--source", nuclei_png, "--out", out,
        "--mode", "ais", "--dtype", "float32",
    )
    assert code == 0, err
    assert "(ais)" in stdout
    written = tifffile.imread(out / "nuclei_labels.tif")
    from PIL import Image

    rgb = to_rgb_uint8(np.asarray(Image.open(nuclei_png)))
    expected = SAM(model_file, dtype="float32").segment_instances(rgb, mode="ais")
    np.testing.assert_array_equal(written, expected)


def test_everything_decoder_modes_need_a_decoder_and_no_grid_options(
    run_cli, tiny_checkpoint, nuclei_png, tmp_path
):
    code, _, err = run_cli("everything", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--out", tmp_path / "o", "--mode", "ais")
    assert code == 1 and "has no instance decoder" in err
    code, _, err = run_cli("everything", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--out", tmp_path / "o", "--mode", "apg", "--records")
    assert code == 2 and "do not apply to --mode apg" in err


def test_a_rerun_skips_done_images_and_other_options_redo_them(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    out = tmp_path / "o"
    args = ("everything", "--model", tiny_checkpoint, "--source", nuclei_png.parent, "--out", out,
            "--points-per-side", "4", "--conf", "0")
    code, stdout, err = run_cli(*args)
    assert code == 0 and "done: 1 image(s)" in stdout, err
    stamp = (out / "nuclei_labels.tif").stat().st_mtime_ns
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "done: 0 image(s), 0 objects, 0 failed, 1 skipped" in stdout
    assert (out / "nuclei_labels.tif").stat().st_mtime_ns == stamp
    code, stdout, _ = run_cli(*args, "--overwrite")
    assert code == 0 and "done: 1 image(s)" in stdout and "skipped" not in stdout
    code, stdout, _ = run_cli(*args[:-2], "--conf", "0.1")  # other options: the image is redone
    assert code == 0 and "done: 1 image(s)" in stdout and "skipped" not in stdout
    (out / "nuclei_overlay.png").unlink()  # an output missing: redone
    code, stdout, _ = run_cli(*args[:-2], "--conf", "0.1")
    assert code == 0 and "done: 1 image(s)" in stdout and (out / "nuclei_overlay.png").exists()
