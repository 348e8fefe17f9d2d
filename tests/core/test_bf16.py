"""bfloat16 inference: results stay float32 and masks agree with float32.

The quality bar of the performance issue is measured on the trained default model
(when its weights are installed): for the parity prompt kinds, the bf16 masks must agree
with the float32 ones at IoU >= 0.97. That check, with the measured speed-up, is why the
registry flags the default model ``auto_bf16`` (bf16 by default on native-bf16
hardware); the default-dtype rule is guarded here too. Without the weights, a tiny model
checks the same plumbing end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core.modeling import image_encoder as vit
from napari_samscope.core.predict.predictor import Predictor

IOU_BAR = 0.97


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _default_installed() -> bool:
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models

    return any(m.name == DEFAULT_MODEL and m.cached for m in list_models())


def _prompts(labels: np.ndarray) -> list[dict]:
    """Point (multimask on/off), point + negative point, box, box + point, 3 boxes."""
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    boxes, centres = [], []
    for i in ids[np.argsort(-areas)][:5]:
        ys, xs = np.nonzero(labels == i)
        boxes.append([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2])
        k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        centres.append([float(xs[k]), float(ys[k])])
    return [
        {"points": [centres[0]], "labels": [1], "multimask_output": True},
        {"points": [centres[1]], "labels": [1]},
        {"points": [centres[0], centres[1]], "labels": [1, 0]},
        {"bboxes": boxes[2]},
        {"bboxes": boxes[3], "points": [centres[3]], "labels": [1]},
        {"bboxes": boxes[2:5]},
    ]


def _agreement(sam, image: np.ndarray, labels: np.ndarray) -> list[float]:
    fp32, bf16 = Predictor(sam, dtype=None), Predictor(sam, dtype="bfloat16")
    fp32.set_image(image)
    bf16.set_image(image)
    assert bf16.get_embedding().features.dtype == torch.float32
    ious = []
    for prompt in _prompts(labels):
        a, b = fp32.predict(**prompt), bf16.predict(**prompt)
        assert b.logits.dtype == np.float32 and b.scores.dtype == np.float32
        ious += [_iou(x, y) for x, y in zip(a.masks, b.masks)]
    return ious


@pytest.mark.skipif(not _default_installed(), reason="the trained default model is not installed")
def test_default_model_bf16_masks_agree_with_float32():
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.synthetic import make_nuclei_2d
    from napari_samscope.core.weights.registry import DEFAULT_MODEL

    model = SAM(DEFAULT_MODEL, device="cpu", dtype="float32")
    image, labels = make_nuclei_2d((384, 512), seed=5)
    ious = _agreement(model.model, image, labels)
    # Measured on the shipped model (decoder transformer kept in float32): median 0.999,
    # worst prompt 0.996 on seeds 5, 11 and 23. This is the quality half of the
    # registry's auto_bf16 flag of the default model: if it fails, drop the flag.
    assert min(ious) >= IOU_BAR, ious


@pytest.mark.skipif(not _default_installed(), reason="the trained default model is not installed")
@pytest.mark.parametrize("native", [True, False])
def test_default_dtype_rule_for_the_default_model(monkeypatch, native):
    from napari_samscope.core import device
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, resolve

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    assert resolve(DEFAULT_MODEL).auto_bf16
    # no dtype given: bf16 where the CPU computes it natively (auto), float32 elsewhere
    assert SAM(DEFAULT_MODEL, device="cpu").dtype == (torch.bfloat16 if native else None)
    # an explicit float32 request stays float32, and explicit bf16 is bf16 everywhere
    assert SAM(DEFAULT_MODEL, device="cpu", dtype="float32").dtype is None
    assert SAM(DEFAULT_MODEL, device="cpu", dtype=None).dtype is None
    assert SAM(DEFAULT_MODEL, device="cpu", dtype="bfloat16").dtype == torch.bfloat16


def test_default_request_resolves_per_model_flag(monkeypatch):
    from napari_samscope.core import device
    from napari_samscope.core.device import DEFAULT_DTYPE, resolve_dtype

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype(DEFAULT_DTYPE, "cpu", auto_bf16=True) == torch.bfloat16
    assert resolve_dtype(DEFAULT_DTYPE, "cpu") is None  # unflagged models: float32
    assert resolve_dtype(" Default ", "cpu", auto_bf16=False) is None
    for explicit in (None, "float32", torch.float32):
        assert resolve_dtype(explicit, "cpu", auto_bf16=True) is None
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype(DEFAULT_DTYPE, "cpu", auto_bf16=True) is None  # emulated: float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # explicit still works
    with pytest.raises(ValueError, match="'default'"):
        resolve_dtype("fastest", "cpu")


def test_wrapped_modules_default_to_float32(tiny_sam_factory):
    from napari_samscope.core.predict.sam_api import SAM

    sam = tiny_sam_factory("vit", 64)
    assert SAM.from_sam(sam).dtype is None
    assert SAM.from_sam(sam, dtype="default").dtype is None
    assert Predictor(sam).dtype is None


def test_bf16_predictor_runs_end_to_end_and_mostly_agrees(randomize, tiny_sam_factory):
    from napari_samscope.core.synthetic import make_nuclei_2d

    # Random weights give unstable masks (logits near the threshold everywhere), so a
    # few masks may differ a lot; this checks the plumbing and that most masks agree.
    sam = randomize(tiny_sam_factory("vit", 96), seed=21)
    image, labels = make_nuclei_2d((120, 160), radius_range=(10, 16), seed=2)
    ious = _agreement(sam, image, labels)
    assert len(ious) == 10
    assert np.median(ious) >= 0.95, ious


def test_bf16_explicit_attention_is_close_to_float32(monkeypatch):
    torch.manual_seed(8)
    attn = vit.Attention(dim=32, num_heads=2, use_rel_pos=True, input_size=(6, 6))
    with torch.no_grad():
        attn.rel_pos_h.normal_(std=0.2)
        attn.rel_pos_w.normal_(std=0.2)
        x = torch.randn(2, 6, 6, 32)
        reference = attn(x)
        monkeypatch.setitem(vit.CPU_ATTENTION, torch.bfloat16, "explicit")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn(x)
    assert low.dtype == torch.bfloat16
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.03


def test_decoder_transformer_stays_float32_under_autocast_unless_asked(randomize, tiny_sam_factory):
    from napari_samscope.core.predict.fast_decode import DecoderRunner

    model = randomize(tiny_sam_factory("vit", 64), seed=22)
    embedding = torch.randn(1, 32, 4, 4)
    coords, labels = torch.rand(3, 2, 2) * 64, torch.ones(3, 2)

    decoder = DecoderRunner(model, torch.device("cpu"))  # the predictor's decoding
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        iou32, tokens32, keys32, _ = decoder.transform(embedding, pe, sparse, dense)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            iou, tokens, keys, _ = decoder.transform(embedding, pe, sparse, dense)
            low = decoder.transform(embedding, pe, sparse, dense, low_precision=True)
            masks = decoder.upscale_masks(keys, tokens, 4, 4)
            plain = model.mask_decoder.transform(embedding, pe, sparse, dense)
    assert keys.dtype == torch.float32 and torch.equal(keys, keys32) and torch.equal(iou, iou32)
    assert low[2].dtype == torch.bfloat16
    assert masks.dtype == torch.bfloat16  # the mask stage keeps the autocast dtype
    assert plain[2].dtype == torch.bfloat16  # the module itself follows the autocast
