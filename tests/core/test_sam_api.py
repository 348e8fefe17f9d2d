"""core.sam_api.SAM: the Ultralytics-style entry point, with tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import napari_samscope
from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.predict.results import Prediction
from napari_samscope.core.predict.sam_api import SAM

H, W = 40, 56


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
    img[8:24, 10:30] = (230, 200, 40)
    return img


@pytest.fixture
def model(random_state_sam):
    return SAM.from_sam(random_state_sam, name="tiny")


def test_public_names_are_exported(model):
    assert napari_samscope.SAM is SAM
    assert napari_samscope.Predictor is Predictor
    assert napari_samscope.Prediction is Prediction


def test_from_sam_and_repr(model, random_state_sam):
    assert model.model is random_state_sam and not model.model.training
    assert model.name == "tiny" and model.device == torch.device("cpu") and model.dtype is None
    assert repr(model) == "SAM('tiny', device='cpu', dtype='float32')"
    with pytest.raises(TypeError, match="Sam module"):
        SAM.from_sam("vit_b")
    assert SAM.from_sam(random_state_sam, dtype="bfloat16").dtype == torch.bfloat16


def test_info_reports_and_prints(model, capsys):
    info = model.info()
    printed = capsys.readouterr().out
    n_params = sum(p.numel() for p in model.model.parameters())
    assert info["parameters"] == n_params and f"{n_params:,} parameters" in printed
    assert info["input_size"] == 64 and info["embedding_size"] == 4
    assert info["architecture"] == "vit" and info["layers"] > 10
    assert info["size_mb"] > 0 and info["file_mb"] is None
    assert model.info(verbose=False) == info
    assert capsys.readouterr().out == ""


def test_call_with_one_box_and_one_point(model, image):
    box = model(image, bboxes=[10, 8, 30, 24])
    assert isinstance(box, Prediction)
    assert box.masks.shape == (1, H, W) and box.scores.shape == (1,)
    assert box.logits.shape == (1, 16, 16)
    point = model(image, points=[20, 15], labels=[1])
    assert point.masks.shape == (1, H, W)
    multi = model(image, points=[20, 15], labels=[1], multimask_output=True)
    assert multi.masks.shape == (3, H, W)
    # the same as a Predictor
    pred = model.predictor()
    pred.set_image(image)
    np.testing.assert_array_equal(pred.predict(bboxes=[10, 8, 30, 24]).logits, box.logits)


def test_call_with_several_boxes_and_a_file(model, image, tmp_path):
    Image.fromarray(image).save(tmp_path / "cells.png")
    boxes = [[10, 8, 30, 24], [0, 0, 20, 20], [30, 10, 55, 39]]
    result = model(str(tmp_path / "cells.png"), bboxes=boxes)
    assert result.masks.shape == (3, H, W)
    labels = result.to_label_image()
    assert labels.dtype == np.uint32 and labels.shape == (H, W)
    assert result.boxes().shape == (3, 4)
    np.testing.assert_array_equal(model(image, bboxes=boxes).logits, result.logits)


def test_call_normalises_microscope_images(model):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 3000, (2, H, W), dtype=np.uint16)
    result = model(stack, points=[[20, 15]], channel_axis=0)
    assert result.masks.shape == (1, H, W)


def test_call_without_prompts_segments_everything(model, image):
    from napari_samscope.core.everything.generator import EverythingResult

    result = model(image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert isinstance(result, EverythingResult)
    assert result.to_label_image().shape == (H, W)


def test_everything_options_with_prompts_are_refused(model, image):
    with pytest.raises(TypeError, match="segment-everything options"):
        model(image, bboxes=[10, 8, 30, 24], points_per_side=4)


def test_bad_prompts_fail_before_encoding(model, image, monkeypatch):
    calls = []
    original = model.model.image_encoder.forward
    monkeypatch.setattr(
        model.model.image_encoder, "forward", lambda x: calls.append(1) or original(x)
    )
    with pytest.raises(ValueError, match="no width or height"):
        model(image, bboxes=[5, 5, 5, 9])
    with pytest.raises(ValueError, match="one label per point"):
        model(image, points=[[1, 2], [3, 4]], labels=[1])
    assert calls == []
    model(image, bboxes=[5, 5, 15, 9])
    assert calls == [1]


def test_predictor_is_a_new_predictor_on_the_model(model):
    a, b = model.predictor(), model.predictor()
    assert isinstance(a, Predictor) and a is not b and a.model is model.model


def test_export_delegates_to_export_onnx(model, tmp_path, monkeypatch):
    import napari_samscope.core.export.onnx as export_module

    seen = {}

    def fake_export(obj, out_dir, **kwargs):
        seen.update(obj=obj, out_dir=out_dir, kwargs=kwargs)
        return [out_dir / "x.onnx"]

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    files = model.export(out_dir=tmp_path, opset=17)
    assert files == [tmp_path / "x.onnx"]
    assert seen == {"obj": model, "out_dir": tmp_path, "kwargs": {"opset": 17}}
    with pytest.raises(ValueError, match="onnx"):
        model.export(format="tflite")


def test_loading_a_project_checkpoint_by_path(random_state_sam, tmp_path, image):
    from napari_samscope.core.weights.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "tiny.pt", random_state_sam)
    loaded = SAM(path, device="cpu")
    assert loaded.name == "tiny.pt" and loaded.path == path
    assert loaded.info(verbose=False)["file_mb"] is not None
    reference = SAM.from_sam(random_state_sam)
    np.testing.assert_allclose(
        loaded(image, bboxes=[10, 8, 30, 24]).logits,
        reference(image, bboxes=[10, 8, 30, 24]).logits,
        atol=1e-5,
    )


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises((ValueError, FileNotFoundError), match="not_a_model"):
        SAM("not_a_model", device="cpu")


def test_everything_uses_the_models_recommended_parameters(random_state_sam, image, monkeypatch):
    from napari_samscope.core.everything import generator as everything
    from napari_samscope.core.weights.registry import ModelSpec

    spec = ModelSpec(name="mine", arch="custom", filename="mine.pt",
                     everything_defaults=(("pred_iou_thresh", 0.0), ("points_per_side", 3)))
    model = SAM.from_sam(random_state_sam, name="mine", spec=spec)
    defaults = model.everything_defaults()
    assert defaults == {**everything.EVERYTHING_DEFAULTS, "pred_iou_thresh": 0.0,
                        "points_per_side": 3}
    seen = []
    original = everything.MaskGenerator.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(dict(self.params))

    monkeypatch.setattr(everything.MaskGenerator, "__init__", spy)
    model(image, stability_score_thresh=0.0)
    model(image, stability_score_thresh=0.0, points_per_side=2)
    assert seen[0]["points_per_side"] == 3 and seen[0]["pred_iou_thresh"] == 0.0
    assert seen[1]["points_per_side"] == 2  # what the user gives wins
    # an official model (no recommendations) and a wrapped module keep the official values
    assert SAM.from_sam(random_state_sam).everything_defaults() == everything.EVERYTHING_DEFAULTS
    model_official = SAM.from_sam(random_state_sam, spec=ModelSpec("o", "vit_b", "o.pt"))
    model_official(image, points_per_side=2)
    assert seen[2] == {**everything.EVERYTHING_DEFAULTS, "points_per_side": 2}


def test_from_sam_with_a_spec_follows_its_bf16_flag(random_state_sam, monkeypatch):
    from napari_samscope.core import device
    from napari_samscope.core.weights.registry import ModelSpec

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    flagged = ModelSpec("f", "vit_b", "f.pt", auto_bf16=True)
    assert SAM.from_sam(random_state_sam, spec=flagged).dtype is None  # default None: float32
    assert SAM.from_sam(random_state_sam, dtype="default", spec=flagged).dtype == torch.bfloat16
    assert SAM.from_sam(random_state_sam, dtype="default").dtype is None
    assert SAM.from_sam(random_state_sam, spec=flagged, path="x.pt").path.name == "x.pt"


def test_default_dtype_of_a_checkpoint_path_is_float32(random_state_sam, tmp_path):
    from napari_samscope.core.weights.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "tiny.pt", random_state_sam)
    assert SAM(path, device="cpu").dtype is None and SAM(path, device="cpu").spec is None
    assert SAM(path, device="cpu", dtype="bfloat16").dtype == torch.bfloat16
