"""``--refine-points/--no-refine-points`` on the commands that decode point prompts:
parsed, applied and reported."""

from __future__ import annotations

import json

import numpy as np
import tifffile


def test_evaluate_reports_and_applies_refinement(run_cli, tiny_checkpoint):
    base = ("evaluate", "--model", tiny_checkpoint, "--synthetic", "1", "--size", "64",
            "--device", "cpu", "--json")
    figures = {}
    for flag in ("--refine-points", "--no-refine-points"):
        code, out, err = run_cli(*base, flag)
        assert code == 0, err
        figures[flag] = json.loads(out.strip().splitlines()[-1])
    on, off = figures["--refine-points"], figures["--no-refine-points"]
    assert on["refine_points"] is True and off["refine_points"] is False
    assert on["point_iou"] != off["point_iou"]  # the second pass changed the point masks
    assert on["box_iou"] == off["box_iou"]  # box prompts are decoded once either way
    code, out, _ = run_cli(*base)
    assert json.loads(out.strip().splitlines()[-1])["refine_points"] is False  # a file declares none
    code, out, _ = run_cli(*base[:-1], "--refine-points")
    assert code == 0 and "refined points on" in out


def test_predict_applies_refinement(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    masks = {}
    for flag in ("--refine-points", "--no-refine-points"):
        code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                               "--points", "30,20", flag, "--out", tmp_path / flag)
        assert code == 0, err
        masks[flag] = tifffile.imread(tmp_path / flag / "nuclei_labels.tif")
    assert masks["--refine-points"].shape == (64, 80)
    assert not np.array_equal(masks["--refine-points"], masks["--no-refine-points"])


def test_a_value_after_the_flag_is_a_usage_error(run_cli, nuclei_png):
    code, _, err = run_cli("predict", "--source", nuclei_png, "--refine-points", "yes")
    assert code == 2 and "unrecognized arguments" in err
