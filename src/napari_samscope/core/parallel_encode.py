"""Encoding several images at once: one batched pass, or one image per core on a CPU.

On a GPU a batch is one encoder pass. On a CPU a bigger batch does not help: the
encoder's matrix products are already large enough for the cores, and the activations
of several images no longer fit in the caches (measured with the default model on 2
cores: 4 planes per pass were 0.7x the throughput of one per pass). What does help on a
CPU, for models whose single-image pass cannot keep every core busy (small encoders:
the default model, MobileSAM), is to encode *different images on different cores at the
same time*: each worker thread runs the encoder on its own images with one intra-op
thread. Results are those of encoding each image alone.

The choice is made by :func:`encode_images`; ``SAMSCOPE_PARALLEL_ENCODE=0`` in the
environment turns the parallel path off.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .device import autocast

__all__ = ["encode_images", "parallel_workers"]

#: Encoders with at most this many parameters are run one image per core on a CPU.
SMALL_ENCODER_PARAMETERS = 12_000_000

_lock = threading.Lock()  # one parallel encode at a time changes the thread setting


def parallel_workers(encoder: torch.nn.Module, device: torch.device, n_images: int) -> int:
    """How many worker threads :func:`encode_images` uses (1 = one ordinary pass).

    Args:
        encoder: the image encoder.
        device: where it runs.
        n_images: images to encode.
    """
    if device.type != "cpu" or n_images < 2 or os.environ.get("SAMSCOPE_PARALLEL_ENCODE") == "0":
        return 1
    if sum(p.numel() for p in encoder.parameters()) > SMALL_ENCODER_PARAMETERS:
        return 1  # big encoders already keep every core busy with one image
    return max(1, min(torch.get_num_threads(), n_images))


def encode_images(
    encoder: torch.nn.Module, batch: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> torch.Tensor:
    """Image embeddings of a preprocessed batch.

    Args:
        encoder: the model's image encoder (eval mode).
        batch: ``(B, 3, S, S)`` float32, normalised and padded, on ``device``.
        device: the device of ``encoder`` and ``batch``.
        dtype: the autocast dtype, or None for float32.

    Returns:
        ``(B, C, E, E)`` features (the autocast dtype or float32), in the order of ``batch``.
    """
    workers = parallel_workers(encoder, device, batch.shape[0])
    if workers == 1 or not _lock.acquire(blocking=False):
        with torch.no_grad(), autocast(device, dtype):
            return encoder(batch)
    threads = torch.get_num_threads()
    try:
        parts = [batch[i : i + 1] for i in range(batch.shape[0])]

        def one(image: torch.Tensor) -> torch.Tensor:
            torch.set_num_threads(1)  # this worker: one core (grad mode and autocast are per thread)
            with torch.no_grad(), autocast(device, dtype):
                return encoder(image)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samscope-encode") as pool:
            features = list(pool.map(one, parts))
        return torch.cat(features)
    finally:
        torch.set_num_threads(threads)
        _lock.release()
