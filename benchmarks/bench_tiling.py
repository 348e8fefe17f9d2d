"""Benchmark rows of tiling and the embedding store (prints figures; nothing is asserted).

Rows:

- ``small``: small nuclei (8-14 px across) on a large synthetic field, segment-everything
  with the default model, fraction of nuclei found at IoU >= 0.5, tiled and untiled.
  The untiled run sees the whole field (shrunk into the model input); the tiled run
  covers a square region of it (``--region``), and both are scored on the nuclei that
  lie whole inside that region, so the figures compare like with like at a fraction of
  the cost of tiling the whole field.
- ``store``: a ``--side`` x ``--side`` uint16 image written as zarr chunk by chunk,
  tiled precompute into an embedding store in a child process (peak RSS beyond the
  loaded model), then point prompts after precompute; then a second process reopens the
  store and prompts without encoding (its first and median prompt times).

Usage::

    python benchmarks/bench_tiling.py small --side 4096 --nuclei 2500 --region 448
    python benchmarks/bench_tiling.py store --side 8192
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


def _write_zarr(path: Path, side: int, chunk: int = 1024) -> None:
    """A ``side`` x ``side`` uint16 nuclei image, generated and written one chunk at a time."""
    import zarr

    from napari_samscope.core.synthetic import make_nuclei_2d

    array = zarr.open_array(
        str(path), mode="w", shape=(side, side), chunks=(chunk, chunk), dtype="uint16"
    )
    n = max(1, int(2500 * chunk * chunk / 4096**2))
    for i in range(0, side, chunk):
        for j in range(0, side, chunk):
            block, _ = make_nuclei_2d(
                (chunk, chunk), n=n, radius_range=(4.0, 7.0), dtype="uint16", seed=i * side + j
            )
            array[i : i + chunk, j : j + chunk] = block


def _child(mode: str, image: str, store: str, tile: int, halo: int) -> dict:
    """Run in a fresh process: precompute (mode "precompute") or reopen and prompt."""
    import torch
    import zarr

    from napari_samscope import SAM
    from napari_samscope.core.tiling import TiledPredictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sam = SAM()
    sam.scale = "fill"  # SAM's resize of each tile, as these rows were measured
    tiled = TiledPredictor(sam)
    data = zarr.open_array(image, mode="r")
    out: dict = {"rss_model_mb": _rss_now_mb()}
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
    side = data.shape[0]
    rng = np.random.default_rng(1)
    times = []
    for _ in range(7):
        x, y = rng.uniform(0, side, 2)
        t = time.perf_counter()
        pred = tiled.predict_windows(points=[x, y])
        times.append(time.perf_counter() - t)
    out["prompt_first_ms"] = times[0] * 1e3
    out["prompt_median_ms"] = statistics.median(times[1:]) * 1e3
    out["encoded_during_prompts"] = tiled.encoded_tiles - out.get("encoded", 0)
    out["tiles"] = len(tiled.grid)
    # reference: the same prompt decoded by a plain Predictor on one 1024 x 1024 image
    plain = sam.predictor()
    plain.set_image(np.asarray(data[:tile, :tile]))
    ref = []
    for _ in range(5):
        t = time.perf_counter()
        plain.predict(points=[tile / 2, tile / 2])
        ref.append(time.perf_counter() - t)
    out["plain_prompt_median_ms"] = statistics.median(ref) * 1e3
    out["mask_window"] = list(pred[0].window)
    return out


def row_store(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        image, store = Path(tmp) / "image.zarr", Path(tmp) / "emb.zarr"
        t = time.perf_counter()
        _write_zarr(image, args.side)
        print(f"store: {args.side}x{args.side} uint16 zarr written in {time.perf_counter() - t:.0f} s")
        for mode in ("precompute", "reopen"):
            cmd = [sys.executable, __file__, "child", mode, str(image), str(store),
                   str(args.tile), str(args.halo)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stderr[-3000:])
                raise SystemExit(done.returncode)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            if mode == "precompute":
                print(
                    f"  precompute: {r['encoded']} tiles of {args.tile} (halo {args.halo}) in "
                    f"{r['precompute_s']:.0f} s; peak RSS {r['rss_peak_mb']:.0f} MB, "
                    f"{r['rss_peak_mb'] - r['rss_base_peak_mb']:.0f} MB beyond the model "
                    f"(model loaded and warmed: peak {r['rss_base_peak_mb']:.0f} MB)"
                )
                print(
                    f"  point prompt after precompute (same process): first "
                    f"{r['prompt_first_ms']:.0f} ms, median {r['prompt_median_ms']:.0f} ms"
                )
            else:
                print(
                    f"  second process on the same store: set_image {r['set_image_s'] * 1e3:.0f} "
                    f"ms, prompts first {r['prompt_first_ms']:.0f} ms, median "
                    f"{r['prompt_median_ms']:.0f} ms, tiles encoded {r['encoded_during_prompts']}"
                )
            print(
                f"  ({mode}) reference: a plain Predictor prompt on one {args.tile}^2 image: "
                f"median {r['plain_prompt_median_ms']:.0f} ms"
            )
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        print(f"  store on disk: {size / 1e6:.0f} MB")


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
    store.add_argument("--side", type=int, default=16384)
    store.add_argument("--tile", type=int, default=1024)
    store.add_argument("--halo", type=int, default=128)
    store.add_argument("--tmp", default=None)
    child = sub.add_parser("child")
    child.add_argument("mode")
    child.add_argument("image")
    child.add_argument("store")
    child.add_argument("tile", type=int)
    child.add_argument("halo", type=int)
    args = parser.parse_args()
    if args.row == "small":
        row_small(args)
    elif args.row == "store":
        row_store(args)
    else:
        print(json.dumps(_child(args.mode, args.image, args.store, args.tile, args.halo)))


if __name__ == "__main__":
    main()
