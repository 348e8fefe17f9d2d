"""``--flips`` on the commands that decode prompts: parsed, applied, reported and refused
where it does not apply."""

from __future__ import annotations

import json

import pytest
import tifffile


@pytest.mark.parametrize("bad", ["3", "0", "two"])
@pytest.mark.parametrize("command", ["predict", "annotate", "evaluate"])
def test_bad_flips_are_usage_errors(run_cli, tiny_checkpoint, nuclei_png, command, bad):
    first = {"predict": ["--source", nuclei_png], "annotate": [nuclei_png],
             "evaluate": ["--synthetic", "1"]}[command]
    code, _, err = run_cli(command, *first, "--flips", bad)
    assert code == 2 and "--flips" in err


def test_evaluate_reports_and_applies_the_flips(run_cli, tiny_checkpoint):
    base = ("evaluate", "--model", tiny_checkpoint, "--synthetic", "1", "--size", "64",
            "--device", "cpu", "--json")
    figures = {}
    for flips in ("1", "4"):
        code, out, err = run_cli(*base, "--flips", flips)
        assert code == 0, err
        figures[flips] = json.loads(out.strip().splitlines()[-1])
    assert figures["1"]["flips"] == 1 and figures["4"]["flips"] == 4
    assert figures["1"]["box_iou"] != figures["4"]["box_iou"]  # the averaging changed the masks
    code, out, _ = run_cli(*base)
    assert json.loads(out.strip().splitlines()[-1])["flips"] == 1  # a file declares none


def test_predict_with_flips_writes_masks_of_the_image_size(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    code, _, err = run_cli("predict", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--points", "30,20", "--flips", "2", "--out", tmp_path / "p")
    assert code == 0, err
    assert tifffile.imread(tmp_path / "p" / "nuclei_labels.tif").shape == (64, 80)


def test_annotate_on_a_cluster_refuses_flips(run_cli, tiny_checkpoint, nuclei_png):
    code, _, err = run_cli("annotate", nuclei_png.parent, "--sam-model", tiny_checkpoint,
                           "--scheduler", "local", "--flips", "2")
    assert code == 2 and "--flips does not apply to --scheduler" in err
