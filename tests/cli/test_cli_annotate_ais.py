"""samscope annotate --det-model ais: the instance decoder's objects, from a micro-sam
format checkpoint; a model without a decoder is a clear error."""

from __future__ import annotations

import numpy as np
import tifffile

from _decoder_model import blob_image, save_microsam_format, tiny_sam_with_decoder


def test_annotate_with_the_instance_decoder(run_cli, tmp_path):
    from napari_samscope import SAM

    model = tiny_sam_with_decoder()
    checkpoint = tmp_path / "microsam_format.pt"
    save_microsam_format(model, checkpoint)
    data = tmp_path / "imgs"
    data.mkdir()
    image = blob_image()
    tifffile.imwrite(data / "blobs.tif", image)
    code, stdout, err = run_cli("annotate", data, "--det-model", "ais", "--sam-model", checkpoint,
                                "--device", "cpu", "--save-tiff")
    assert code == 0, err
    labels = tifffile.imread(tmp_path / "imgs_auto_annotate_labels" / "blobs_labels.tif")
    expected = SAM(str(checkpoint), device="cpu").segment_instances(image, mode="ais")
    assert len(np.unique(expected)) - 1 >= 5
    np.testing.assert_array_equal(labels, expected)
    assert "1 annotated" in stdout


def test_annotate_ais_without_decoder_names_the_models_with_one(run_cli, tiny_checkpoint, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    tifffile.imwrite(data / "blobs.tif", blob_image())
    code, stdout, err = run_cli("annotate", data, "--det-model", "ais", "--sam-model", tiny_checkpoint)
    assert code != 0
    assert "has no instance decoder" in stdout + err and "vit_b_lm" in stdout + err
