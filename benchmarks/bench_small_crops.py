"""Small crops: box-prompt IoU on 64 x 64 crops of a real nuclei image against the IoU
of the same objects, with the same boxes, on the whole image, with ``scale="auto"`` and
``scale="fill"``.

    python benchmarks/bench_small_crops.py --images PATH/img2d.tif --labels PATH/mask2d.tif

The image and its annotation are StarDist's DSB-2018 sample (``stardist/data/images``
in the ``stardist`` wheel: ``pip download --no-deps stardist`` and unzip); they are read
for measurement only and never shipped. ``SAMSCOPE_SMALL_CROPS_IMAGES`` /
``SAMSCOPE_SMALL_CROPS_LABELS`` may give the paths instead.

For each of ``--crops`` random crops (seeded; a crop that holds no whole object is drawn
again), the objects whose every pixel lies inside the crop are prompted with their tight
boxes on the crop and on the whole image. The crop's figure is the mean IoU on the crop
over the mean IoU of the same objects on the whole image; the median over the crops is
printed for each scale, with the target of 0.95 for ``"auto"``. The model is the shipped
default, ``SAM()``, in float32.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

TARGET = 0.95  # median crop / whole-image IoU ratio with scale="auto"


def _objects_inside(labels: np.ndarray, y0: int, x0: int, side: int) -> list[int]:
    """Label ids whose every pixel lies inside the crop window."""
    window = labels[y0 : y0 + side, x0 : x0 + side]
    ids = [int(i) for i in np.unique(window) if i]
    counts = np.bincount(labels.ravel())
    inside = np.bincount(window.ravel(), minlength=counts.size)
    return [i for i in ids if inside[i] == counts[i]]


def _boxes(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """``(N, 4)`` tight XYXY boxes of the objects ``ids``."""
    out = []
    for i in ids:
        rows, cols = np.nonzero(labels == i)
        out.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return np.asarray(out, dtype=np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _draw_crops(labels: np.ndarray, count: int, side: int, seed: int) -> list[tuple[int, int, list[int]]]:
    rng = np.random.default_rng(seed)
    height, width = labels.shape
    crops = []
    while len(crops) < count:
        y0 = int(rng.integers(0, height - side + 1))
        x0 = int(rng.integers(0, width - side + 1))
        ids = _objects_inside(labels, y0, x0, side)
        if ids:
            crops.append((y0, x0, ids))
    return crops


def measure_scale(model, image, labels, crops, side: int, scale: str) -> dict[str, float]:
    from napari_samscope import Predictor

    whole = Predictor(model, scale=scale)
    whole.set_image(image)
    full_magnification = whole.magnification
    ratios, crop_ious, full_ious, magnifications = [], [], [], []
    for y0, x0, ids in crops:
        boxes = _boxes(labels, ids)
        full = whole.predict(bboxes=boxes).masks
        full_iou = [_iou(full[k], labels == i) for k, i in enumerate(ids)]
        crop = Predictor(model, scale=scale)
        crop.set_image(image[y0 : y0 + side, x0 : x0 + side])
        magnifications.append(crop.magnification)
        local = crop.predict(bboxes=boxes - (x0, y0, x0, y0)).masks
        window = labels[y0 : y0 + side, x0 : x0 + side]
        crop_iou = [_iou(local[k], window == i) for k, i in enumerate(ids)]
        crop_ious += crop_iou
        full_ious += full_iou
        ratios.append(np.mean(crop_iou) / max(np.mean(full_iou), 1e-9))
    return {
        "median_ratio": float(np.median(ratios)),
        "mean_crop_iou": float(np.mean(crop_ious)),
        "mean_full_iou": float(np.mean(full_ious)),
        "objects": len(crop_ious),
        "crop_magnification": float(np.median(magnifications)),
        "full_magnification": float(full_magnification),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=os.environ.get("SAMSCOPE_SMALL_CROPS_IMAGES"))
    parser.add_argument("--labels", default=os.environ.get("SAMSCOPE_SMALL_CROPS_LABELS"))
    parser.add_argument("--crops", type=int, default=20)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.images or not args.labels:
        parser.error("give --images and --labels (StarDist's img2d.tif and mask2d.tif)")

    import tifffile

    from napari_samscope import SAM

    image = tifffile.imread(Path(args.images))
    labels = tifffile.imread(Path(args.labels)).astype(np.int64)
    if image.shape[:2] != labels.shape:
        raise SystemExit(f"image {image.shape} and labels {labels.shape} differ in size")
    crops = _draw_crops(labels, args.crops, args.side, args.seed)
    model = SAM(dtype="float32")
    print(
        f"{model.name}, {image.shape[1]}x{image.shape[0]} image, {len(crops)} crops of "
        f"{args.side}x{args.side} (seed {args.seed}), box prompts, float32"
    )
    print("scale | median crop/full IoU ratio | mean IoU crop | mean IoU full | objects | magnification crop / full")
    for scale in ("auto", "fill"):
        r = measure_scale(model, image, labels, crops, args.side, scale)
        print(
            f"{scale:5} | {r['median_ratio']:.3f} | {r['mean_crop_iou']:.3f} | {r['mean_full_iou']:.3f} | "
            f"{r['objects']} | {r['crop_magnification']:g} / {r['full_magnification']:g}"
        )
    print(f"target: median ratio >= {TARGET} with scale='auto'")


if __name__ == "__main__":
    main()
