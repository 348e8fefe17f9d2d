"""``--zoom`` on the commands that decode prompts: parsed, applied, reported and refused
where it does not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile


def test_evaluate_reports_and_applies_zoom(run_cli, tiny_checkpoint):
    base = ("evaluate", "--model", tiny_checkpoint, "--synthetic", "1", "--size", "96",
            "--device", "cpu", "--json")
    figures = {}
    for zoom in ("1", "2"):
        code, out, err = run_cli(*base, "--zoom", zoom)
        assert code == 0, err
        figures[zoom] = json.loads(out.strip().splitlines()[-1])
    assert figures["1"]["zoom"] == 1.0 and figures["2"]["zoom"] == 2.0
    assert figures["1"]["box_iou"] != figures["2"]["box_iou"]  # boxes went to crops
    assert figures["1"]["otsu_box_iou"] == figures["2"]["otsu_box_iou"]
    code, out, _ = run_cli(*base)
    assert json.loads(out.strip().splitlines()[-1])["zoom"] == 1.0  # a file declares none
    code, out, _ = run_cli(*base[:-1], "--zoom", "2.5")
    assert code == 0 and "zoom 2.5)" in out


def test_predict_applies_zoom(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    masks = {}
    for zoom in ("1", "2"):
        code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                               "--bboxes", "20,10,40,30", "--zoom", zoom, "--out", tmp_path / zoom)
        assert code == 0, err
        masks[zoom] = tifffile.imread(tmp_path / zoom / "nuclei_labels.tif")
    assert masks["2"].shape == (64, 80)
    assert not np.array_equal(masks["2"], masks["1"])


@pytest.mark.parametrize("bad", ["0.5", "0", "nan", "big"])
def test_a_bad_zoom_is_a_usage_error(run_cli, nuclei_png, bad):
    code, _, err = run_cli("predict", "--source", nuclei_png, "--bboxes", "1,1,9,9", "--zoom", bad)
    assert code == 2 and "--zoom" in err and "expected a number >= 1" in err


def test_annotate_on_a_cluster_refuses_zoom(run_cli, tiny_checkpoint, nuclei_png):
    code, _, err = run_cli("annotate", nuclei_png.parent, "--sam-model", tiny_checkpoint,
                           "--scheduler", "local", "--zoom", "2")
    assert code == 2 and "--zoom does not apply to --scheduler" in err
