"""samscope everything --tile-shape / --halo: every mode tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_cli_everything import _checkpoint_with_decoder


def _rgb(png):
    from PIL import Image

    from napari_samscope.core.predict.image import to_rgb_uint8

    return to_rgb_uint8(np.asarray(Image.open(png)))


@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_decoder_modes_by_tiles_equal_the_api(run_cli, nuclei_png, tmp_path, mode, monkeypatch):
    from napari_samscope import SAM
    from napari_samscope.core.tiling import instances

    grids = []
    original = instances.tiled_instance_maps_iter

    def spy(tiled, *args, **kwargs):
        grids.append(len(tiled.grid))
        return original(tiled, *args, **kwargs)

    monkeypatch.setattr(instances, "tiled_instance_maps_iter", spy)

    model_file = _checkpoint_with_decoder(tmp_path / "with_decoder.pt")
    out = tmp_path / mode
    code, stdout, err = run_cli(
        "everything", "--model", model_file, "--source", nuclei_png, "--out", out,
        "--mode", mode, "--dtype", "float32", "--tile-shape", "48", "--halo", "8",
    )
    assert code == 0, err
    assert f"({mode})" in stdout
    assert grids == [4]  # 64 x 80 in 48 px tiles
    written = tifffile.imread(out / "nuclei_labels.tif")
    model = SAM(model_file, dtype="float32")
    expected = model.segment_instances(_rgb(nuclei_png), mode=mode, tile_shape=48, halo=8)
    np.testing.assert_array_equal(written, expected)


def test_grid_mode_by_tiles_and_settings(run_cli, tiny_checkpoint, nuclei_png, tmp_path, monkeypatch):
    from napari_samscope.core import tiling

    grids = []
    original = tiling.segment_everything_tiled_iter

    def spy(tiled, **kwargs):
        grids.append(len(tiled.grid))
        return original(tiled, **kwargs)

    monkeypatch.setattr(tiling, "segment_everything_tiled_iter", spy)
    out = tmp_path / "amg"
    args = ("everything", "--model", tiny_checkpoint, "--source", nuclei_png, "--out", out,
            "--points-per-side", "4", "--conf", "0", "--records", "--tile-shape", "48,40",
            "--halo", "6")
    code, stdout, err = run_cli(*args)
    assert code == 0 and "done: 1 image(s)" in stdout, err
    assert grids == [6]  # 64 x 80 in 48 x 40 tiles, halo 6: 2 rows, 3 columns
    assert tifffile.imread(out / "nuclei_labels.tif").shape == (64, 80)
    assert (out / "nuclei_masks.json").exists()
    code, stdout, _ = run_cli(*args)
    assert "1 skipped" in stdout  # same tiling: done
    code, stdout, _ = run_cli(*args[:-1], "4")
    assert code == 0 and "done: 1 image(s)" in stdout  # another halo: redone


def test_bad_tiling_is_a_usage_error(run_cli, tiny_checkpoint, nuclei_png, tmp_path):
    base = ("everything", "--model", tmp_path / "none.pt", "--source", nuclei_png,
            "--out", tmp_path / "o")
    code, _, err = run_cli(*base, "--tile-shape", "48", "--halo", "24")
    assert code == 2 and "less than half the tile" in err  # before the model is loaded
    code, _, err = run_cli(*base, "--tile-shape", "8", "--halo", "10")
    assert code == 2 and "smaller than its halo" in err
    code, _, err = run_cli(*base, "--halo", "-1")
    assert code == 2 and "halo must be 0 or more" in err
    code, _, err = run_cli("everything", "--model", tiny_checkpoint, "--source", nuclei_png,
                           "--out", tmp_path / "o", "--tile-shape", "128")
    assert code == 1 and "larger than the model input" in err
