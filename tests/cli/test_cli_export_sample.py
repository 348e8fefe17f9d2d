"""samscope export and samscope sample."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image


def test_export_writes_two_onnx_files_that_run(run_cli, tiny_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    code, out, err = run_cli("export", tiny_checkpoint, "--format", "onnx", "--out", tmp_path, "--multimask")
    assert code == 0, err
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["tiny_decoder.onnx", "tiny_encoder.onnx"]
    assert str(tmp_path / "tiny_encoder.onnx") in out
    from napari_samscope.core.export.onnx import decoder_inputs

    (emb,) = ort.InferenceSession(str(tmp_path / "tiny_encoder.onnx")).run(
        None, {"image": np.zeros((1, 3, 64, 64), np.float32)})
    masks, scores, _ = ort.InferenceSession(str(tmp_path / "tiny_decoder.onnx")).run(
        None, decoder_inputs((30, 50), 64, emb, box=[2, 2, 20, 20]))
    assert masks.shape == (1, 3, 30, 50) and scores.shape == (1, 3)


def test_export_usage(run_cli, tiny_checkpoint, tmp_path):
    code, _, err = run_cli("export", tiny_checkpoint, "--format", "tflite")
    assert code == 2 and "invalid choice" in err


def test_sample_writes_the_napari_samples(run_cli, tmp_path):
    from napari_samscope._sample_data import make_sample_nuclei_2d

    out = tmp_path / "samples"
    code, stdout, err = run_cli("sample", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "ground_truth", "nuclei_2d.tif", "nuclei_3d.tif", "png"]  # each image once at the top
    assert sorted(p.name for p in (out / "ground_truth").iterdir()) == [
        "nuclei_2d_labels.tif", "nuclei_3d_labels.tif"]
    image = tifffile.imread(out / "nuclei_2d.tif")
    expected = make_sample_nuclei_2d()[0][0]
    assert image.dtype == expected.dtype and np.array_equal(image, expected)
    assert tifffile.imread(out / "nuclei_3d.tif").shape == (32, 256, 256)
    png = np.asarray(Image.open(out / "png" / "nuclei_2d.png"))
    assert png.shape == (512, 512) and png.dtype == np.uint8 and png.max() > 200
    truth = tifffile.imread(out / "ground_truth" / "nuclei_2d_labels.tif")
    assert truth.max() > 10
    assert "nuclei_3d.tif" in stdout
