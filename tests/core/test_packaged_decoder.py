"""A packaged instance decoder companion (``ModelSpec.decoder`` with a ``package_file``):
loaded with its model, size/sha256-checked, and refused when made for another encoder.

Runs on a copy of the default model with a small random decoder in a temporary package
folder, so it does not depend on which decoder is shipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import torch

from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.predict.sam_api import SAM
from napari_samscope.core.training.instance_decoder import save_decoder
from napari_samscope.core.weights import registry
from napari_samscope.core.weights.spec import ModelSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _package(tmp_path, monkeypatch, embed_dim: int = 128, damage: bool = False,
             trained_on: str | None = None) -> None:
    model = registry.resolve("samscope_nuclei")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(registry.model_path(model), models / "samscope_nuclei.pt")
    torch.manual_seed(0)
    meta = {"sam_sha256": trained_on if trained_on is not None else model.sha256}
    path = save_decoder(models / "decoder.pt", UNETRDecoder(embed_dim=embed_dim, features=(8, 4, 2, 1)),
                        meta=meta)
    data = path.read_bytes()
    spec = ModelSpec(
        name="samscope_nuclei_decoder", arch="unetr_decoder", filename="decoder.pt",
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), package_file="models/decoder.pt",
    )
    if damage:
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))
    others = tuple(s for s in registry._BUILTIN if s.name not in ("samscope_nuclei", spec.name))
    builtin = (dataclasses.replace(model, decoder=spec.name), spec, *others)
    monkeypatch.setattr(registry, "_BUILTIN", builtin)
    monkeypatch.setattr(registry, "_PACKAGE_ROOT", tmp_path)


def test_the_packaged_decoder_comes_with_the_model(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch)
    model = SAM(device="cpu")
    assert model.has_instance_decoder and model.instance_decoder.features == (8, 4, 2, 1)
    assert "samscope_nuclei" in registry.decoder_models()
    image = np.zeros((64, 80), dtype=np.uint8)
    image[20:40, 20:40] = 200
    labels = model.segment_instances(image, mode="ais")
    assert labels.shape == image.shape and labels.dtype == np.uint32


def test_a_damaged_packaged_decoder_is_refused(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, damage=True)
    with pytest.raises(ValueError, match="damaged"):
        SAM(device="cpu")


def test_a_packaged_decoder_for_another_encoder_is_refused(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, embed_dim=256)
    with pytest.raises(ValueError, match="256-channel image embeddings, but this model's encoder gives 128"):
        SAM(device="cpu")


def test_a_packaged_decoder_trained_on_another_checkpoint_is_refused(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch, trained_on="ab" * 32)
    with pytest.raises(ValueError, match=r"trained on another samscope_nuclei checkpoint \(sha256 abababababab"):
        SAM(device="cpu")


def test_without_a_decoder_the_error_names_the_models_that_have_one():
    model = SAM.from_sam(registry_free_sam())
    with pytest.raises(ValueError, match="vit_b_lm"):
        model.segment_instances(np.zeros((32, 32), dtype=np.uint8))


def registry_free_sam():
    from napari_samscope.core.modeling.build import build_sam, tiny_config

    return build_sam(tiny_config("tiny_vit", img_size=64))
