"""``--scale`` on the commands that encode images: parsed, applied and refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile


@pytest.mark.parametrize("bad", ["big", "0", "-1", "nan", "inf"])
@pytest.mark.parametrize("command", ["predict", "everything", "annotate", "embed", "evaluate"])
def test_bad_scales_are_usage_errors(run_cli, tiny_checkpoint, nuclei_png, command, bad):
    first = {"predict": ["--source", nuclei_png], "everything": ["--source", nuclei_png],
             "annotate": [nuclei_png], "embed": [nuclei_png, "--out", "x.zarr"],
             "evaluate": ["--synthetic", "1"]}[command]
    code, _, err = run_cli(command, *first, "--scale", bad)
    assert code == 2 and "scale must be 'auto', 'fill' or a magnification above 0" in err


def test_predict_applies_the_scale(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    # the tiny model's input is 64 pixels and the image 64 x 80
    args = ("predict", "--model", tiny_checkpoint, "--source", nuclei_png, "--points", "30,20")
    code, _, err = run_cli(*args, "--scale", "0.5", "--out", tmp_path / "half")
    assert code == 0, err
    assert tifffile.imread(tmp_path / "half" / "nuclei_labels.tif").shape == (64, 80)
    code, _, err = run_cli(*args, "--scale", "2", "--out", tmp_path / "double")
    assert code == 1 and "does not fit the model's 64-pixel input at scale 2" in err
    code, _, err = run_cli(*args, "--scale", "fill", "--out", tmp_path / "fill")
    assert code == 0, err


def test_everything_and_evaluate_apply_the_scale(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, _, err = run_cli("everything", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--points-per-side", "4", "--scale", "3", "--out", tmp_path / "e")
    assert code == 1 and "does not fit" in err
    code, _, err = run_cli("evaluate", "--model", tiny_checkpoint, "--synthetic", "1",
                           "--size", "64", "--scale", "3", "--device", "cpu")
    assert code == 1 and "does not fit the model's 64-pixel input at scale 3" in err
    code, out, err = run_cli("evaluate", "--model", tiny_checkpoint, "--synthetic", "1",
                             "--size", "64", "--scale", "0.5", "--device", "cpu", "--json")
    assert code == 0 and '"box_iou"' in out, err


def test_embed_records_the_scale_and_refuses_another(run_cli, tiny_checkpoint, tmp_path):
    pytest.importorskip("zarr")
    from napari_samscope.core.store import EmbeddingStore

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (70, 60), dtype=np.uint8))
    out = tmp_path / "emb.zarr"
    base = ("embed", image, "--out", out, "--model", tiny_checkpoint, "--device", "cpu",
            "--tile-shape", "32", "--halo", "4")
    code, _, err = run_cli(*base, "--scale", "2")
    assert code == 0, err
    assert EmbeddingStore.read_spec(out).scale == "x2.0"
    code, _, err = run_cli(*base, "--scale", "fill")
    assert code == 1 and "at another scale" in err


def test_annotate_on_a_cluster_refuses_a_scale(run_cli, tiny_checkpoint, nuclei_png):
    code, _, err = run_cli("annotate", nuclei_png.parent, "--sam-model", tiny_checkpoint,
                           "--scheduler", "local", "--scale", "2")
    assert code == 2 and "--scale does not apply to --scheduler" in err
