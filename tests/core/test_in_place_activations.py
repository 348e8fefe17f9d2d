"""Inference computes the encoders' activations in place, with the same values.

``core.modeling.common.activate`` overwrites a layer's fresh output with its GELU / ReLU
when nothing records gradients and nothing traces; TinyViT's MBConv also adds its
residual in place. Training and export keep the out-of-place graph. These tests compare
both paths bit for bit on fully random weights, check that the caller's input is never
written, and that gradients still flow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_samscope.core.device import autocast
from napari_samscope.core.modeling import common, tiny_vit
from napari_samscope.core.modeling.common import activate, in_place_allowed


def _root_conftest():
    """tests/conftest.py, loaded by path (``from conftest import`` may find another one)."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_samscope_tests_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _root_conftest()
make_tiny_sam, randomize_state = _helpers.make_tiny_sam, _helpers.randomize_state


def _out_of_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every module compute as training does, without autograd."""
    monkeypatch.setattr(common, "in_place_allowed", lambda: False)
    monkeypatch.setattr(tiny_vit, "in_place_allowed", lambda: False)


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU()])
def test_activate_writes_in_place_for_inference_only(act: nn.Module) -> None:
    x = torch.randn(4, 5, 6)
    expected = act(x)
    with torch.no_grad():
        y = x.clone()
        out = activate(act, y)
    assert out.data_ptr() == y.data_ptr()
    assert torch.equal(out, expected) and torch.equal(y, expected)
    z = x.clone()
    out = activate(act, z)  # autograd on: a new tensor, the input untouched
    assert out.data_ptr() != z.data_ptr()
    assert torch.equal(z, x) and torch.equal(out, expected)


def test_other_activations_are_called_as_they_are() -> None:
    x = torch.randn(3, 7)
    with torch.no_grad():
        y = x.clone()
        out = activate(nn.SiLU(), y)
    assert torch.equal(y, x) and torch.equal(out, nn.SiLU()(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_in_place_is_off_while_tracing_or_recording() -> None:
    with torch.no_grad():
        assert in_place_allowed()
        seen = []
        traced = torch.jit.trace(
            lambda t: seen.append(in_place_allowed()) or t * 2, torch.ones(2), check_trace=False
        )
        assert seen and not any(seen)
        traced(torch.ones(2))  # a traced graph runs without calling the Python function
        assert not any(seen)
    with torch.enable_grad():
        assert not in_place_allowed()


@pytest.mark.parametrize("encoder", ["tiny_vit", "vit"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_encoder_in_place_equals_out_of_place(
    encoder: str, dtype: torch.dtype | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One image: bit for bit. A batch: TinyViT's conv stage then runs one image at a
    time, and a convolution over one image may sum in another order than over two."""
    sam = randomize_state(make_tiny_sam(encoder, 64), seed=3)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kept = images.clone()
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        fast = sam.image_encoder(images[:1])
        fast_batch = sam.image_encoder(images)
    assert torch.equal(images, kept), "the encoder wrote into its input"
    _out_of_place(monkeypatch)
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        plain = sam.image_encoder(images[:1])
        plain_batch = sam.image_encoder(images)
    assert fast.dtype == plain.dtype == fast_batch.dtype
    assert torch.equal(fast, plain)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype is None else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(fast_batch, plain_batch, **tol)


def test_mbconv_residual_in_place_only_when_dtypes_agree(monkeypatch) -> None:
    """A float32 residual under a bf16 block output promotes, as ``out + x`` does."""
    block = tiny_vit.MBConv(8, 2.0).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = nn.GELU()(block.conv3(block.act2(block.conv2(block.act1(block.conv1(x))))) + x)
        assert torch.equal(block(x), expected)
        with autocast(torch.device("cpu"), torch.bfloat16):
            mixed = block(x)  # the convolutions give bf16, the residual is float32
            _out_of_place(monkeypatch)
            plain = block(x)
    assert mixed.dtype == plain.dtype == torch.float32
    assert torch.equal(mixed, plain)


def test_training_still_gets_gradients() -> None:
    sam = make_tiny_sam("tiny_vit", 64).train()
    image = torch.randn(1, 3, 64, 64)
    sam.image_encoder(image).square().mean().backward()
    grads = [p.grad for p in sam.image_encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_tiny_vit_splits_its_conv_stage_per_image_only_for_inference(monkeypatch) -> None:
    """Inference runs stage 0 one image at a time (same values); training mode keeps the
    batch together, since BatchNorm then normalises with the batch's statistics."""
    encoder = randomize_state(make_tiny_sam("tiny_vit", 64), seed=5).image_encoder
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    calls = []
    original = tiny_vit.TinyViT._conv_stage
    monkeypatch.setattr(tiny_vit.TinyViT, "_conv_stage",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    with torch.no_grad():
        batched = encoder(images)
        singles = torch.cat([encoder(image[None]) for image in images])
    assert calls == [1, 1, 1, 1, 1, 1]
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    calls.clear()
    encoder.train()
    with torch.no_grad():
        encoder(images)
    assert calls == [3]


def test_other_devices_keep_the_conv_stage_batched(monkeypatch) -> None:
    """Off the CPU the allocator caches blocks: no reason to give up the batch."""
    encoder = make_tiny_sam("tiny_vit", 64).image_encoder.to("meta")
    calls = []
    original = tiny_vit.TinyViT._conv_stage
    monkeypatch.setattr(tiny_vit.TinyViT, "_conv_stage",
                        lambda self, x: calls.append(x.shape[0]) or original(self, x))
    with torch.no_grad():
        out = encoder(torch.empty(3, 3, 64, 64, device="meta"))
    assert calls == [3]
    assert out.shape == (3, 32, 4, 4)
