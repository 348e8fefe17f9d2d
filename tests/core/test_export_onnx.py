"""ONNX export: both files run in onnxruntime and match the torch predictor (1e-4)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from napari_samscope.core.export.onnx import (  # noqa: E402
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    decoder_inputs,
    export_onnx,
)
from napari_samscope.core.predict.predictor import Predictor  # noqa: E402
from napari_samscope.core.predict.sam_api import SAM  # noqa: E402
from napari_samscope.core.predict.transforms import preprocess, resize_rgb_uint8  # noqa: E402

TOL = 1e-4


def _root_conftest():
    """tests/conftest.py as a module (``from conftest import`` may resolve to another
    folder's conftest.py once pytest has collected it, so load it by path)."""
    spec = importlib.util.spec_from_file_location(
        "_samscope_tests_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _root_conftest()
make_tiny_sam, randomize_state = _helpers.make_tiny_sam, _helpers.randomize_state


@functools.lru_cache(maxsize=16)
def _cached_session(path: str):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _session(path):
    return _cached_session(str(path))


@pytest.fixture(scope="module", params=["vit", "tiny_vit"])
def exported(request, tmp_path_factory):
    """A tiny model with every weight random, exported once per module (single and multi)."""
    sam = randomize_state(make_tiny_sam(request.param, 64), seed=3)
    out = tmp_path_factory.mktemp(f"onnx_{request.param}")
    single = export_onnx(sam, out, name="single")
    multi = export_onnx(sam, out, name="multi", multimask_output=True)
    return sam, single, multi


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_two_files_with_official_io_names(exported):
    sam, single, multi = exported
    assert [p.name for p in single] == ["single_encoder.onnx", "single_decoder.onnx"]
    encoder = onnx.load(str(single[0]))
    decoder = onnx.load(str(single[1]))
    onnx.checker.check_model(encoder)
    onnx.checker.check_model(decoder)
    assert [i.name for i in encoder.graph.input] == ["image"]
    assert [i.name for i in decoder.graph.input] == list(DECODER_INPUTS)
    assert [o.name for o in decoder.graph.output] == list(DECODER_OUTPUTS)
    meta = {p.key: p.value for p in decoder.metadata_props}
    assert meta["img_size"] == str(sam.img_size) and meta["multimask_output"] == "False"


@pytest.mark.parametrize("size", [(48, 80), (70, 33)])
def test_encoder_matches_torch(exported, size):
    sam, single, _ = exported
    image = _image(*size)
    pred = Predictor(sam)
    pred.set_image(image)
    x = preprocess(resize_rgb_uint8(image, sam.img_size), sam.pixel_mean, sam.pixel_std, sam.img_size)
    (emb,) = _session(single[0]).run(None, {"image": x.numpy()})
    assert emb.shape == (1, sam.prompt_encoder.embed_dim, sam.embedding_size, sam.embedding_size)
    assert np.abs(emb - pred.features.numpy()).max() < TOL


PROMPTS = {
    "one point": dict(points=[[20, 12]], labels=[1]),
    "two points": dict(points=[[20, 12], [5, 30]], labels=[1, 0]),
    "five points": dict(points=[[20, 12], [5, 30], [40, 2], [3, 3], [25, 25]], labels=[1, 0, 1, 1, 0]),
    "box": dict(bboxes=[4, 6, 30, 28]),
    "box and point": dict(bboxes=[4, 6, 30, 28], points=[[15, 15]], labels=[0]),
}


@pytest.mark.parametrize("size", [(48, 80), (70, 33)])
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
def test_decoder_matches_torch_predictor(exported, size, prompt, multimask):
    sam, single, multi = exported
    files = multi if multimask else single
    pred = Predictor(sam)
    pred.set_image(_image(*size, seed=1))
    kwargs = PROMPTS[prompt]
    expected = pred.predict(**kwargs, multimask_output=multimask)
    feeds = decoder_inputs(
        size, sam.img_size, pred.features.numpy(), points=kwargs.get("points"),
        labels=kwargs.get("labels"), box=kwargs.get("bboxes"),
    )
    masks, scores, low = _session(files[1]).run(None, feeds)
    k = 3 if multimask else 1
    assert masks.shape == (1, k, *size) and scores.shape == (1, k) and low.shape == (1, k, pred.lowres_size, pred.lowres_size)
    assert np.abs(low[0] - expected.logits).max() < TOL
    assert np.abs(scores[0] - expected.scores).max() < TOL
    import torch

    reference = pred.mask_upsampler.logits(torch.from_numpy(expected.logits)).numpy()
    assert np.abs(masks[0] - reference).max() < TOL
    agree = ((masks[0] > 0) == expected.masks).mean()
    assert agree >= 0.999


def test_decoder_with_mask_input_matches_torch(exported):
    sam, single, _ = exported
    pred = Predictor(sam)
    pred.set_image(_image(40, 90, seed=2))
    first = pred.predict(points=[[30, 20]], labels=[1])
    again = pred.predict(points=[[30, 20], [60, 10]], labels=[1, 1], masks=first.logits)
    feeds = decoder_inputs(
        (40, 90), sam.img_size, pred.features.numpy(), points=[[30, 20], [60, 10]], labels=[1, 1],
        mask_input=first.logits,
    )
    _, scores, low = _session(single[1]).run(None, feeds)
    assert np.abs(low[0] - again.logits).max() < TOL
    assert np.abs(scores[0] - again.scores).max() < TOL


def test_sam_export_method_and_external_weights(tmp_path):
    model = SAM.from_sam(make_tiny_sam("vit", 64), name="sam_b.pt")
    files = model.export(format="onnx", out_dir=tmp_path, external_data_bytes=0)
    names = sorted(p.name for p in files)
    assert names == ["sam_b_decoder.onnx", "sam_b_decoder.onnx.data", "sam_b_encoder.onnx",
                     "sam_b_encoder.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no scratch files left
    image = np.zeros((1, 3, 64, 64), np.float32)
    (emb,) = _session(tmp_path / "sam_b_encoder.onnx").run(None, {"image": image})
    assert emb.shape[2:] == (4, 4)


def test_refuses_to_overwrite_when_asked(tmp_path):
    sam = make_tiny_sam("vit", 64)
    export_onnx(sam, tmp_path, name="m")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(sam, tmp_path, name="m", overwrite=False)


def test_bad_model_and_missing_onnx_are_explained(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="SAM"):
        export_onnx(object(), tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install"):
        export_onnx(make_tiny_sam("vit", 64), tmp_path)


def test_decoder_inputs_validation():
    with pytest.raises(ValueError, match="label"):
        decoder_inputs((10, 10), 64, np.zeros((1, 8, 4, 4)), points=[[1, 2]], labels=None)
    feeds = decoder_inputs((32, 64), 64, np.zeros((1, 8, 4, 4)), box=[0, 0, 63, 31])
    assert feeds["point_labels"].tolist() == [[2.0, 3.0]]
    assert feeds["point_coords"].tolist() == [[[0.0, 0.0], [63.0, 31.0]]]
    feeds = decoder_inputs((32, 64), 64, np.zeros((1, 8, 4, 4)), points=[[10, 10]], labels=[1])
    assert feeds["point_labels"].tolist() == [[1.0, -1.0]]  # padding point appended
