"""Device and autocast-dtype decisions, including the CUDA/MPS paths (simulated)."""

from __future__ import annotations

import pytest
import torch

from napari_samscope.core import device as device_mod
from napari_samscope.core.device import (
    autocast,
    cpu_has_native_bf16,
    resolve_dtype,
    select_device,
)


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend two CUDA GPUs exist; ``capability`` sets their compute capability."""
    state = {"capability": (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: state["capability"])
    monkeypatch.setattr(torch.version, "hip", None)
    return state


# --- select_device -------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["auto", None, "AUTO", " auto "])
def test_auto_falls_back_to_cpu(no_accelerators, choice):
    assert select_device(choice) == torch.device("cpu")


def test_auto_prefers_cuda_over_mps(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"


def test_auto_picks_mps_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == torch.device("mps")


def test_explicit_cpu_and_device_object(no_accelerators):
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_explicit_cuda_unavailable_says_so(no_accelerators):
    with pytest.raises(ValueError, match="CUDA is not available.*'auto' or 'cpu'"):
        select_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device(torch.device("cuda", 0))


def test_explicit_cuda_available(fake_cuda):
    assert select_device("cuda") == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_index_out_of_range(fake_cuda):
    with pytest.raises(ValueError, match="2 CUDA device"):
        select_device("cuda:2")


def test_explicit_mps_unavailable_says_so(no_accelerators):
    with pytest.raises(ValueError, match="MPS backend is not available.*'auto' or 'cpu'"):
        select_device("mps")


@pytest.mark.parametrize("bad", ["gpu", "", "cuda:x", "banana"])
def test_invalid_device_strings(bad):
    with pytest.raises(ValueError, match="is not a device"):
        select_device(bad)


def test_unsupported_device_type():
    with pytest.raises(ValueError, match="not supported"):
        select_device("meta")


@pytest.mark.parametrize("bad", [0, 1.5, ["cpu"]])
def test_device_wrong_type(bad):
    with pytest.raises(TypeError, match="device must be"):
        select_device(bad)


# --- resolve_dtype -------------------------------------------------------------------

CPU = torch.device("cpu")


@pytest.mark.parametrize("choice", [None, "float32", "fp32", "FLOAT32", torch.float32])
def test_float32_means_no_autocast(choice):
    assert resolve_dtype(choice, CPU) is None


@pytest.mark.parametrize("choice", ["bfloat16", "bf16", torch.bfloat16])
def test_bfloat16_on_cpu(choice):
    assert resolve_dtype(choice, CPU) == torch.bfloat16


@pytest.mark.parametrize("choice", ["float16", "fp16", torch.float16])
def test_float16_on_cpu_is_refused(choice):
    with pytest.raises(ValueError, match="float16 autocast is not supported on the CPU.*bfloat16"):
        resolve_dtype(choice, CPU)


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", CPU) is None


def test_cuda_dtypes_on_ampere(fake_cuda):
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    assert resolve_dtype("fp16", cuda) == torch.float16
    assert resolve_dtype(None, cuda) is None


def test_cuda_dtypes_on_old_gpu(fake_cuda):
    fake_cuda["capability"] = (7, 5)
    cuda = torch.device("cuda", 1)
    assert resolve_dtype("auto", cuda) is None
    assert resolve_dtype("float16", cuda) == torch.float16
    with pytest.raises(ValueError, match="does not support bfloat16.*float16"):
        resolve_dtype("bfloat16", cuda)


def test_cuda_bf16_on_rocm(fake_cuda, monkeypatch):
    fake_cuda["capability"] = (7, 0)
    monkeypatch.setattr(torch.version, "hip", "6.0")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_auto_on_mps_is_float32():
    assert resolve_dtype("auto", torch.device("mps")) is None
    assert resolve_dtype("float16", torch.device("mps")) == torch.float16


@pytest.mark.parametrize("bad", ["float64", "int8", "quarter", torch.float64, torch.int32])
def test_invalid_dtypes(bad):
    with pytest.raises(ValueError, match="not supported"):
        resolve_dtype(bad, CPU)


@pytest.mark.parametrize("bad", [16, 1.0, object()])
def test_dtype_wrong_type(bad):
    with pytest.raises(TypeError, match="dtype must be"):
        resolve_dtype(bad, CPU)


# --- cpu_has_native_bf16 -------------------------------------------------------------


def test_cpu_bf16_probe_uses_torch_feature_checks(monkeypatch):
    cpu_has_native_bf16.cache_clear()
    try:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
        assert cpu_has_native_bf16() is True
        cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(device_mod.platform, "machine", lambda: "x86_64")
        assert cpu_has_native_bf16() is False
        cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
        assert cpu_has_native_bf16() is True
    finally:
        cpu_has_native_bf16.cache_clear()


# --- autocast ------------------------------------------------------------------------


def test_autocast_float32_is_a_no_op():
    a = torch.randn(4, 4)
    for dtype in (None, torch.float32):
        with autocast(CPU, dtype):
            assert (a @ a).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_autocast_bfloat16_on_cpu():
    a = torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        out = a @ a
    assert out.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    torch.testing.assert_close(out.float(), a @ a, atol=0.1, rtol=0.05)
