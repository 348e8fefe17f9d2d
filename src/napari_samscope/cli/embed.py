"""``samscope embed``: precompute the tile embeddings of an image into a zarr store."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_samscope.cli._common import (
    ProgressBar,
    UsageError,
    add_debug,
    add_device,
    add_model,
    add_scale,
    load_model,
    with_scale,
)
from napari_samscope.cli._distributed import add_scheduler, refuse_scale, run_embed, wants_cluster

DESCRIPTION = """\
Encode an image tile by tile and keep the embeddings in a zarr store, so that napari,
the Python API (TiledPredictor(...).set_image(image, embeddings=STORE)) and later runs
decode prompts without encoding anything. Large TIFF files and OME-Zarr images are read
window by window, never whole; every plane of a stack or time series is embedded. Run
it again to finish a store that was interrupted: finished tiles are kept.
With --scheduler / --workers the tiles of every plane are encoded by the workers of a
dask cluster, which read the image and write the store themselves (a shared file
system); the store holds the same embeddings as an in-process run.
"""


def _shape(text: str) -> tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or H,W (integers)")
    return values  # type: ignore[return-value]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed", help="precompute tiled embeddings of an image into a zarr store",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", help="an image file (TIFF read lazily) or a zarr / OME-Zarr folder")
    parser.add_argument("--out", required=True, help="the embedding store to write (a .zarr folder)")
    add_model(parser)
    parser.add_argument("--tile-shape", type=_shape, default=None, metavar="N|H,W",
                        help="tile size including the halo, at most the model input [model input]")
    parser.add_argument("--halo", type=_shape, default=None, metavar="N|H,W",
                        help="overlap on each side of a tile [model input / 8]")
    parser.add_argument("--rgb", action="store_true",
                        help="the last axis holds colour channels (default: only for 8-bit "
                             "images whose last axis has 3 or 4 values)")
    parser.add_argument("--recompute", action="store_true",
                        help="replace a store made for another image, model or tiling")
    add_device(parser)
    add_scale(parser)
    add_scheduler(parser)
    add_debug(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_samscope.core.tiling import TiledPredictor
    from napari_samscope.core.tiling.lazy import open_lazy, plane_count

    if Path(args.out).resolve() == Path(args.image).resolve():
        raise UsageError("--out must not be the image itself.")
    image = open_lazy(args.image)
    rgb = bool(args.rgb) or (
        len(image.shape) >= 3 and image.shape[-1] in (3, 4) and np.dtype(image.dtype) == np.uint8
    )
    if wants_cluster(args):  # --scheduler / --workers: the workers encode the tiles
        refuse_scale(args)
        return run_embed(args, image, rgb)
    tiled = TiledPredictor(with_scale(load_model(args.model, args.device, args.dtype), args.scale).predictor())
    planes = plane_count(image, rgb)
    start, encoded, total = time.perf_counter(), 0, 0
    for plane in range(planes):
        tiled.set_image(
            image, tile_shape=args.tile_shape, halo=args.halo, embeddings=args.out,
            plane=plane,
            rgb=rgb, recompute=args.recompute and plane == 0,
        )
        with ProgressBar() as bar:
            encoded += tiled.precompute_all(progress=bar)
        total += len(tiled.grid)
    grid = tiled.grid
    print(
        f"{Path(args.image).name}: shape {tuple(image.shape)} {np.dtype(image.dtype)}, "
        f"{planes} plane(s) x {len(grid)} tiles of {grid.tile_shape} (halo {grid.halo}); "
        f"encoded {encoded}, reused {total - encoded} in {time.perf_counter() - start:.1f} s "
        f"-> {args.out}"
    )
    return 0
