"""Tiled AIS against untiled AIS on a synthetic field larger than the model input
(prints figures; nothing is asserted).

The default model (``samscope_nuclei``, declared input magnification 2x, so its input
holds 512 x 512 image pixels) with its shipped instance decoder, on a ``--side`` x
``--side`` synthetic image of small nuclei (the project's generator, radius
``--radius``). Rows, each with its wall time (median of ``--repeats``) and the load
average:

- ``untiled``: ``SAM().segment_instances(image, mode="ais")``: the whole field goes into
  one input (shrunk below the model's scale);
- ``tiled``: ``segment_instances(image, mode="ais", tile_shape=..., halo=...)``: each tile
  at the model's scale, the maps stitched, one watershed;
- ``tiled, from the store``: the same with ``embeddings=`` a store filled by a first run
  (decoder + watershed only: what a second session costs).

Objects are matched to the true nuclei at IoU >= 0.5 (one to one): recall, precision, F1;
``border`` is the recall on the nuclei that cross a boundary between tiles' inner
regions (an object lost or cut in two by the stitching would show there).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_tiled_ais.py --side 2048
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import load_average, say


def match(truth: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, int]:
    """``(matched truth ids, number of found objects)`` at IoU >= 0.5 (at most one match
    each way, since IoU > 0.5 is unique)."""
    t, f = truth.ravel().astype(np.int64), found.ravel().astype(np.int64)
    nf = int(f.max()) + 1
    pairs = np.bincount(t * nf + f, minlength=(int(t.max()) + 1) * nf).reshape(-1, nf)
    area_t, area_f = pairs.sum(axis=1), pairs.sum(axis=0)
    ti, fi = np.nonzero(pairs[1:, 1:])
    ti, fi = ti + 1, fi + 1
    inter = pairs[ti, fi]
    iou = inter / (area_t[ti] + area_f[fi] - inter)
    return np.unique(ti[iou >= 0.5]), int(np.count_nonzero(area_f[1:]))


def scores(truth: np.ndarray, found: np.ndarray, border: np.ndarray) -> str:
    matched, n_found = match(truth, found)
    n_truth = int(np.count_nonzero(np.bincount(truth.ravel())[1:]))
    recall = len(matched) / max(1, n_truth)
    precision = len(matched) / max(1, n_found)
    f1 = 2 * recall * precision / max(1e-9, recall + precision)
    on_border = np.isin(border, matched).mean() if len(border) else float("nan")
    return (f"{n_found} objects; recall {recall:.3f}, precision {precision:.3f}, F1 {f1:.3f}; "
            f"border recall {on_border:.3f} ({len(border)} nuclei)")


def border_ids(truth: np.ndarray, grid) -> np.ndarray:
    """Ids of the nuclei crossing a boundary between two tiles' inner regions."""
    ids = []
    for tile in grid:
        y0, y1, x0, x1 = tile.inner
        if y1 < truth.shape[0]:
            ids.append(np.intersect1d(truth[y1 - 1, x0:x1], truth[y1, x0:x1]))
        if x1 < truth.shape[1]:
            ids.append(np.intersect1d(truth[y0:y1, x1 - 1], truth[y0:y1, x1]))
    found = np.unique(np.concatenate(ids)) if ids else np.zeros(0, int)
    return found[found > 0]


def timed(fn, repeats: int) -> tuple[float, list[float], np.ndarray]:
    runs, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--nuclei", type=int, default=None, help="default: ~30%% of the area")
    parser.add_argument("--radius", type=lambda t: tuple(float(v) for v in t.split(",")),
                        default=(6.0, 10.0))
    parser.add_argument("--tile", type=int, default=None, help="default: the model's (512)")
    parser.add_argument("--halo", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    from napari_samscope import SAM
    from napari_samscope.core.synthetic import make_nuclei_2d
    from napari_samscope.core.tiling import TileGrid

    image, truth = make_nuclei_2d((args.side, args.side), n=args.nuclei, radius_range=args.radius,
                                  seed=2048)
    model = SAM()
    tile = args.tile or int(model.predictor().max_side())
    grid = TileGrid(image.shape, (tile, tile), (args.halo, args.halo))
    border = border_ids(truth, grid)
    say(f"{args.side}x{args.side}, {int(truth.max())} nuclei of radius {args.radius}, model "
        f"{model.name} ({model.dtype}), tiles {tile} halo {args.halo}: {len(grid)} tiles; "
        f"load {load_average()}")
    t, runs, untiled = timed(lambda: model.segment_instances(image, mode="ais"), args.repeats)
    print(f"untiled AIS: {t:.2f} s {np.round(runs, 2).tolist()}; {scores(truth, untiled, border)}; "
          f"load {load_average()}", flush=True)
    kw = {"mode": "ais", "tile_shape": tile, "halo": args.halo}
    t, runs, tiled = timed(lambda: model.segment_instances(image, **kw), args.repeats)
    print(f"tiled AIS: {t:.2f} s {np.round(runs, 2).tolist()}; {scores(truth, tiled, border)}; "
          f"load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "tiles.zarr"
        model.segment_instances(image, embeddings=store, **kw)  # fills the store
        t, runs, again = timed(lambda: model.segment_instances(image, embeddings=store, **kw),
                               args.repeats)
    print(f"tiled AIS from the store: {t:.2f} s {np.round(runs, 2).tolist()}; "
          f"{scores(truth, again, border)}; load {load_average()}", flush=True)


if __name__ == "__main__":
    main()
