"""Benchmark rows of tiling and the embedding store (prints figures; nothing is asserted).

Rows:

- ``small``: small nuclei (8-14 px across) on a large synthetic field, segment-everything
  with the default model, fraction of nuclei found at IoU >= 0.5, tiled and untiled.
  The untiled run sees the whole field (shrunk into the model input); the tiled run
  covers a square region of it (``--region``), and both are scored on the nuclei that
  lie whole inside that region, so the figures compare like with like at a fraction of
  the cost of tiling the whole field.
- ``store``: for each of ``--sides`` (default 4096, 8192, 16384), a uint16 image written
  as zarr chunk by chunk, tiled precompute into an embedding store in a child process
  (peak RSS beyond the loaded model), then point prompts after precompute (medians of
  ``--prompts``: anywhere in the image, each on a tile read from the store, and within
  one region); then a second process reopens the store and prompts without encoding.
  The load average is printed next to each figure (``OMP_NUM_THREADS`` sets the threads).

Usage::

    python benchmarks/bench_tiling.py small --side 4096 --nuclei 2500 --region 448
    OMP_NUM_THREADS=1 python benchmarks/bench_tiling.py store --sides 4096,8192,16384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# ---------------------------------------------------------------------- small objects


def _found(records, labels: np.ndarray, ids: np.ndarray) -> float:
    """Fraction of nuclei ``ids`` matched by some record at IoU >= 0.5."""
    areas = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    best = np.zeros(areas.shape[0])
    for r in records:
        x, y, w, h = r.bbox
        g = labels[y : y + h + 1, x : x + w + 1]
        found, inter = np.unique(g[r.crop_mask], return_counts=True)
        for i, c in zip(found, inter):
            if i:
                best[i] = max(best[i], c / (areas[i] + r.area - c))
    return float((best[ids] >= 0.5).mean()) if len(ids) else float("nan")


def row_small(args: argparse.Namespace) -> None:
    from napari_samscope import SAM
    from napari_samscope.core.everything.generator import MaskGenerator
    from napari_samscope.core.everything.records import EverythingResult
    from napari_samscope.core.synthetic import make_nuclei_2d
    from napari_samscope.core.tiling import TiledPredictor, segment_everything_tiled

    side, region = args.side, args.region
    image, labels = make_nuclei_2d(
        (side, side), n=args.nuclei, radius_range=(4.0, 7.0), dtype="uint16", seed=0
    )
    print(f"small objects: {side}x{side} uint16, {labels.max()} nuclei of 8-14 px")
    y0 = x0 = (side - region) // 2
    crop_labels = labels[y0 : y0 + region, x0 : x0 + region]
    border = np.unique(
        np.concatenate([crop_labels[0], crop_labels[-1], crop_labels[:, 0], crop_labels[:, -1]])
    )
    inside = np.setdiff1d(np.unique(crop_labels), np.concatenate([[0], border]))
    sam = SAM()
    sam.scale = "fill"  # SAM's resize, as these rows were measured (the whole field does not fit "auto")
    if not args.skip_untiled:
        t = time.perf_counter()
        untiled = MaskGenerator(sam).generate(image)
        seconds = time.perf_counter() - t
        all_ids = np.arange(1, labels.max() + 1)
        print(
            f"  untiled (whole field into one input): {len(untiled)} masks in {seconds:.0f} s; "
            f"found {_found(untiled, labels, all_ids):.3f} of all nuclei, "
            f"{_found(untiled, labels, inside):.3f} of the {len(inside)} inside the region"
        )
    tiled = TiledPredictor(sam)
    tiled.set_image(
        image[y0 : y0 + region, x0 : x0 + region], tile_shape=args.tile, halo=args.halo,
        contrast_limits=tuple(float(v) for v in np.percentile(image[::8, ::8], (0.5, 99.5))),
    )
    t = time.perf_counter()
    result = segment_everything_tiled(tiled, points_per_side=args.points_per_side)
    seconds = time.perf_counter() - t
    shifted = EverythingResult(
        [_shift(r, y0, x0, labels.shape) for r in result], tuple(labels.shape)
    )
    print(
        f"  tiled (tile {args.tile}, halo {args.halo}, {len(tiled.grid)} tiles, "
        f"points_per_side {args.points_per_side}) on the {region}x{region} region: "
        f"{len(result)} masks in {seconds:.0f} s; found {_found(shifted, labels, inside):.3f} "
        f"of the {len(inside)} nuclei inside it"
    )


def _shift(record, y0: int, x0: int, shape):
    import dataclasses

    x, y, w, h = record.bbox
    return dataclasses.replace(record, bbox=(x + x0, y + y0, w, h), image_shape=tuple(shape))


# ---------------------------------------------------------------------- store


def _write_zarr(path: Path, side: int, chunk: int = 1024, pool: int = 8) -> None:
    """A ``side`` x ``side`` uint16 nuclei image, written one chunk at a time (never whole).

    Generating nuclei is slow, so ``pool`` chunks are made once and each chunk of the
    image is one of them rolled by a chunk-dependent offset (every chunk differs)."""
    import zarr

    from napari_samscope.core.synthetic import make_nuclei_2d

    array = zarr.open_array(
        str(path), mode="w", shape=(side, side), chunks=(chunk, chunk), dtype="uint16"
    )
    n = max(1, int(2500 * chunk * chunk / 4096**2))
    blocks = [make_nuclei_2d((chunk, chunk), n=n, radius_range=(4.0, 7.0), dtype="uint16",
                             seed=k)[0] for k in range(pool)]
    for k, (i, j) in enumerate((i, j) for i in range(0, side, chunk) for j in range(0, side, chunk)):
        shift = (k * 37 % chunk, k * 101 % chunk)
        array[i : i + chunk, j : j + chunk] = np.roll(blocks[k % pool], shift, axis=(0, 1))


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _prompt_times(tiled, points) -> list[float]:
    times = []
    for x, y in points:
        t = time.perf_counter()
        tiled.predict_windows(points=[x, y])
        times.append((time.perf_counter() - t) * 1e3)
    return times


def _child(mode: str, image: str, store: str, tile: int, halo: int, prompts: int) -> dict:
    """Run in a fresh process: precompute (mode "precompute") or reopen and prompt."""
    import torch
    import zarr

    from napari_samscope import SAM
    from napari_samscope.core.tiling import TiledPredictor

    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    sam = SAM()
    sam.scale = "fill"  # SAM's resize of each tile, as these rows were measured
    tiled = TiledPredictor(sam)
    data = zarr.open_array(image, mode="r")
    out: dict = {"rss_model_mb": _rss_now_mb(), "threads": threads, "load_start": _load()}
    if mode == "precompute":
        # warm the encoder once on a blank tile, so the baseline includes its work memory
        sam.predictor().encode([np.zeros((tile, tile), np.uint16)])
        out["rss_base_peak_mb"] = _rss_peak_mb()
    t = time.perf_counter()
    tiled.set_image(data, tile_shape=tile, halo=halo, embeddings=store)
    out["set_image_s"] = time.perf_counter() - t
    if mode == "precompute":
        t = time.perf_counter()
        out["encoded"] = tiled.precompute_all()
        out["precompute_s"] = time.perf_counter() - t
        out["rss_peak_mb"] = _rss_peak_mb()
        out["load_after_precompute"] = _load()
    side = data.shape[0]
    rng = np.random.default_rng(1)
    # prompts anywhere in the image: nearly every one lands on a tile not read yet
    spread = _prompt_times(tiled, rng.uniform(0, side, (prompts, 2)))
    # prompts inside one region (clicking around one field): its tile is read once
    x0, y0 = rng.uniform(0, max(1, side - tile), 2)
    local = _prompt_times(tiled, np.column_stack([rng.uniform(x0, x0 + tile / 2, prompts),
                                                  rng.uniform(y0, y0 + tile / 2, prompts)]))
    out["prompt_first_ms"] = spread[0]
    out["prompt_spread_median_ms"] = statistics.median(spread[1:])
    out["prompt_local_median_ms"] = statistics.median(local[1:])
    out["prompts"] = len(spread) - 1
    out["encoded_during_prompts"] = tiled.encoded_tiles - out.get("encoded", 0)
    out["tiles"] = len(tiled.grid)
    # reference at the same moment: a plain Predictor prompt on one tile's embedding
    plain = sam.predictor()
    plain.set_embedding(tiled.tile_embedding(0))
    half = tile / 2
    out["plain_prompt_median_ms"] = statistics.median(
        _prompt_times_plain(plain, [(half + k, half) for k in range(prompts)])[1:])
    out["load_end"] = _load()
    return out


def _prompt_times_plain(predictor, points) -> list[float]:
    times = []
    for x, y in points:
        t = time.perf_counter()
        predictor.predict(points=[x, y])
        times.append((time.perf_counter() - t) * 1e3)
    return times


def row_store(args: argparse.Namespace) -> None:
    for side in args.sides:
        _store_side(args, side)


def _store_side(args: argparse.Namespace, side: int) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        image, store = Path(tmp) / "image.zarr", Path(tmp) / "emb.zarr"
        t = time.perf_counter()
        _write_zarr(image, side)
        print(f"store: {side}x{side} uint16 zarr written chunk by chunk in "
              f"{time.perf_counter() - t:.0f} s (load {_load()})", flush=True)
        for mode in ("precompute", "reopen"):
            cmd = [sys.executable, __file__, "child", mode, str(image), str(store),
                   str(args.tile), str(args.halo), str(args.prompts + 1)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stderr[-3000:])
                raise SystemExit(done.returncode)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            load = f"load {r['load_start']} -> {r['load_end']}, {r['threads']} thread(s)"
            if mode == "precompute":
                print(
                    f"  precompute: {r['encoded']} tiles of {args.tile} (halo {args.halo}) in "
                    f"{r['precompute_s']:.0f} s; peak RSS {r['rss_peak_mb']:.0f} MB, "
                    f"{r['rss_peak_mb'] - r['rss_base_peak_mb']:.0f} MB beyond the model "
                    f"(model loaded and warmed: peak {r['rss_base_peak_mb']:.0f} MB) [{load}]"
                )
                print(
                    f"  point prompt after precompute (same process, median of {r['prompts']}): "
                    f"anywhere {r['prompt_spread_median_ms']:.0f} ms, within one region "
                    f"{r['prompt_local_median_ms']:.0f} ms; first {r['prompt_first_ms']:.0f} ms",
                    flush=True,
                )
            else:
                print(
                    f"  second process on the same store: set_image {r['set_image_s'] * 1e3:.0f} "
                    f"ms, first prompt {r['prompt_first_ms']:.0f} ms, median of {r['prompts']}: "
                    f"anywhere {r['prompt_spread_median_ms']:.0f} ms, within one region "
                    f"{r['prompt_local_median_ms']:.0f} ms; tiles encoded "
                    f"{r['encoded_during_prompts']} [{load}]", flush=True,
                )
            if "plain_prompt_median_ms" in r:
                print(f"  ({mode}) reference in the same process: a plain Predictor prompt on "
                      f"one tile's embedding, median {r['plain_prompt_median_ms']:.0f} ms")
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        print(f"  store on disk: {size / 1e6:.0f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="row", required=True)
    small = sub.add_parser("small")
    small.add_argument("--side", type=int, default=4096)
    small.add_argument("--nuclei", type=int, default=2500)
    small.add_argument("--region", type=int, default=4096)
    small.add_argument("--tile", type=int, default=256)
    small.add_argument("--halo", type=int, default=32)
    small.add_argument("--points-per-side", type=int, default=32)
    small.add_argument("--skip-untiled", action="store_true")
    store = sub.add_parser("store")
    store.add_argument("--sides", type=lambda t: [int(v) for v in t.split(",")],
                       default=[4096, 8192, 16384])
    store.add_argument("--prompts", type=int, default=20)
    store.add_argument("--tile", type=int, default=1024)
    store.add_argument("--halo", type=int, default=128)
    store.add_argument("--tmp", default=None)
    child = sub.add_parser("child")
    child.add_argument("mode")
    child.add_argument("image")
    child.add_argument("store")
    child.add_argument("tile", type=int)
    child.add_argument("halo", type=int)
    child.add_argument("prompts", type=int)
    args = parser.parse_args()
    if args.row == "small":
        row_small(args)
    elif args.row == "store":
        row_store(args)
    else:
        print(json.dumps(_child(args.mode, args.image, args.store, args.tile, args.halo,
                                args.prompts)))


if __name__ == "__main__":
    main()
