"""Encoding several images one per core (CPU, small encoders) gives the single-image results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samscope.core import parallel_encode
from napari_samscope.core.parallel_encode import encode_images, parallel_workers
from napari_samscope.core.predictor import Predictor


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _planes(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((48, 64)) * 255).astype(np.uint8) for _ in range(n)]


def test_parallel_planes_equal_encoding_each_plane_alone(tiny_mobile_sam, two_threads):
    pred = Predictor(tiny_mobile_sam)
    planes = _planes(5)
    assert parallel_workers(tiny_mobile_sam.image_encoder, pred.device, 5) == 2
    together = pred.encode(planes, batch_size=5)
    alone = [pred.encode([p], batch_size=1)[0] for p in planes]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-5)
        assert a.original_size == b.original_size and a.input_size == b.input_size
    assert torch.get_num_threads() == 2  # the caller's setting is restored


def test_the_parallel_path_is_taken_and_the_thread_setting_restored(tiny_mobile_sam, two_threads,
                                                                     monkeypatch):
    seen = []
    encoder = tiny_mobile_sam.image_encoder
    original = encoder.forward

    def spy(x):
        seen.append((x.shape[0], torch.get_num_threads(), torch.is_grad_enabled()))
        return original(x)

    monkeypatch.setattr(encoder, "forward", spy)
    batch = torch.randn(3, 3, 64, 64)
    out = encode_images(encoder, batch, torch.device("cpu"), None)
    assert out.shape[0] == 3
    assert sorted(seen) == [(1, 1, False)] * 3  # one image per call, one thread, no grad
    assert torch.get_num_threads() == 2


def test_when_it_does_not_run_in_parallel(tiny_mobile_sam, two_threads, monkeypatch):
    encoder = tiny_mobile_sam.image_encoder
    cpu = torch.device("cpu")
    assert parallel_workers(encoder, cpu, 1) == 1  # one image
    assert parallel_workers(encoder, torch.device("cuda"), 4) == 1  # a GPU batches instead
    monkeypatch.setattr(parallel_encode, "SMALL_ENCODER_PARAMETERS", 10)
    assert parallel_workers(encoder, cpu, 4) == 1  # a big encoder keeps the cores busy itself
    monkeypatch.undo()
    monkeypatch.setenv("SAMSCOPE_PARALLEL_ENCODE", "0")
    assert parallel_workers(encoder, cpu, 4) == 1
    torch.set_num_threads(1)
    monkeypatch.delenv("SAMSCOPE_PARALLEL_ENCODE")
    assert parallel_workers(encoder, cpu, 4) == 1  # one core: nothing to share


def test_an_error_in_a_worker_reaches_the_caller_and_restores_threads(tiny_mobile_sam, two_threads,
                                                                    monkeypatch):
    encoder = tiny_mobile_sam.image_encoder

    def broken(x):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(encoder, "forward", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        encode_images(encoder, torch.randn(2, 3, 64, 64), torch.device("cpu"), None)
    assert torch.get_num_threads() == 2
    assert parallel_encode._lock.acquire(blocking=False)  # the lock was released
    parallel_encode._lock.release()
