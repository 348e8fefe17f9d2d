"""3D: encoding the planes of a 32 x 512 x 512 stack (one at a time and batched),
propagating one object through it, and the embedding cache's bytes per plane."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from _common import Row
from _data import stack as make_stack
from _models import BenchModel

BATCHED_TARGET = 1.2  # throughput of batched encoding / one plane at a time
CACHE_TARGET_MIB = 2.0


def _encode_all(pred: Any, volume: Any, batch_size: int) -> tuple[float, Any]:
    from napari_samscope.core.progress import run
    from napari_samscope.core.volume import EmbeddingCache, encode_planes_iter

    cache = EmbeddingCache(max_bytes=1 << 34)
    start = time.perf_counter()
    run(encode_planes_iter(pred, volume, batch_size=batch_size, cache=cache))
    return time.perf_counter() - start, cache


def _seed(pred: Any, volume: Any, z: int) -> np.ndarray:
    """A 2D seed mask on plane ``z``: the best mask for a point on the brightest blob."""
    from scipy import ndimage

    plane = volume.plane(z)[..., 0].astype(np.float32)
    smooth = ndimage.gaussian_filter(plane, 4)
    y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
    pred.set_image(volume.plane(z))
    result = pred.predict(points=[[float(x), float(y)]], labels=[1], multimask_output=True)
    return result.masks[int(np.argmax(result.scores))]


def run(models: list[BenchModel], official: bool, planes: int = 32, side: int = 512,
        batch_size: int = 4, dtype: str | None = None) -> list[Row]:
    from napari_samscope.core.predict.predictor import Predictor
    from napari_samscope.core.progress import run as run_job
    from napari_samscope.core.volume import StackNormalizer, propagate_iter

    raw = make_stack(planes, side)
    volume = StackNormalizer(raw)
    label = "fp32" if dtype is None else "bf16"
    rows: list[Row] = []
    for model in models:
        pred = Predictor(model.sam, dtype=dtype)
        pred.encode([volume.plane(0)])  # warm-up
        start = time.perf_counter()
        for z in range(planes):  # the 2D API plane by plane, as a user's loop would
            pred.set_image(raw[z])
        naive_s = time.perf_counter() - start
        one_s, _ = _encode_all(pred, volume, 1)
        batched_s, cache = _encode_all(pred, volume, batch_size)
        official_plane = None
        off = None
        if official:
            import _official

            off = _official.predictor(_official.build_official(model.config, model.state_dict()),
                                      model.config.encoder_type)
        if off is not None:
            off.set_image(volume.plane(0))
            start = time.perf_counter()
            for z in range(planes):
                off.set_image(volume.plane(z))
            official_plane = (time.perf_counter() - start) / planes
        rows.append(Row("3D", f"{model.name} set_image per plane ({label})", naive_s / planes,
                        "s", official_plane,
                        note=f"{planes} planes {side}x{side} uint16, each normalised on its own"))
        rows.append(Row("3D", f"{model.name} stack encoding per plane, one per pass ({label})",
                        one_s / planes, "s", official_plane, note="one set of contrast limits"))
        rows.append(Row("3D", f"{model.name} stack encoding per plane, {batch_size} per pass ({label})",
                        batched_s / planes, "s", official_plane))
        speedup = naive_s / batched_s
        rows.append(Row("3D", f"{model.name} stack encoding / set_image per plane, throughput",
                        speedup, "x", target=f">= {BATCHED_TARGET}", met=speedup >= BATCHED_TARGET))
        rows.append(Row("3D", f"{model.name} {batch_size} per pass / one per pass, throughput",
                        one_s / batched_s, "x", note="the encoder alone, batching planes"))
        per_plane = cache.nbytes / max(1, len(cache)) / 2**20
        rows.append(Row("3D", f"{model.name} embedding cache per plane", per_plane, "MiB",
                        target=f"<= {CACHE_TARGET_MIB:.0f} MiB", met=per_plane <= CACHE_TARGET_MIB,
                        note=f"{cache.dtype}, {len(cache)} planes"))
        z = planes // 2
        seed = _seed(pred, volume, z)
        start = time.perf_counter()
        out = run_job(propagate_iter(pred, volume, {z: seed}, cache=cache))
        seconds = time.perf_counter() - start
        reached = int(np.count_nonzero(out.reshape(planes, -1).any(axis=1)))
        rows.append(Row("3D", f"{model.name} propagate one object (planes encoded)", seconds, "s",
                        note=f"object on {reached} of {planes} planes, mode 'mask'"))
    return rows


def cache_bytes_for(model: BenchModel) -> float:
    """Bytes per plane of a float16 cache entry for ``model`` (MiB)."""
    side = model.sam.embedding_size
    return model.sam.prompt_encoder.embed_dim * side * side * 2 / 2**20
