"""``samscope predict``: prompted segmentation (or everything) of an image or a folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.cli._common import (
    UsageError,
    accept_negative_values,
    add_channel_axis,
    add_debug,
    add_device,
    add_flips,
    add_model,
    add_refine_points,
    add_scale,
    add_zoom,
    image_planes,
    load_model,
    parse_box,
    parse_point,
    plane_to_rgb,
    process_files,
    with_scale,
    write_results,
)

DESCRIPTION = """\
Segment an image, or every image of a folder, and write per image a label image
(<stem>_labels.tif, uint16/uint32, 0 = background) and an overlay (<stem>_overlay.png).
Multi-page TIFF stacks are segmented plane by plane (<stem>_z0003_labels.tif, ...).

With --points (one object, several clicks) and/or --bboxes (one object per box) the
prompts are used; with no prompt at all, everything is segmented. Coordinates are
pixels of the image, x = column, y = row.

Ultralytics-style key=value arguments work too:
  samscope predict model=sam_b.pt source=path/to/image.jpg
  samscope predict source=img.png points=[900,370] labels=[1]
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images from point/box prompts (or everything)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(parser)
    parser.add_argument("--source", required=True, help="an image file or a folder of images")
    parser.add_argument("--points", nargs="+", type=parse_point, metavar="X,Y",
                        help="point prompts of one object, e.g. --points 120,80 140,95")
    parser.add_argument("--labels", nargs="+", type=int, choices=(0, 1), metavar="0|1",
                        help="one label per point: 1 foreground (default), 0 background")
    parser.add_argument("--bboxes", nargs="+", type=parse_box, metavar="X0,Y0,X1,Y1",
                        help="box prompts, one object per box")
    parser.add_argument("--multimask", action="store_true",
                        help="let the model choose the best of 3 candidates per object")
    parser.add_argument("--conf", type=float, default=None,
                        help="with no prompts: minimum predicted IoU of a mask (pred_iou_thresh) [0.88]")
    parser.add_argument("--points-per-side", "--points-stride", dest="points_per_side", type=int,
                        default=None, help="with no prompts: grid points per image side [32]; "
                                           "'samscope everything' has all the options")
    parser.add_argument("--out", default="results", help="output folder (default: ./results)")
    add_channel_axis(parser)
    add_device(parser)
    add_scale(parser)
    add_flips(parser)
    add_refine_points(parser)
    add_zoom(parser)
    add_debug(parser)
    accept_negative_values(parser)
    parser.set_defaults(func=run)


def check_prompts(args: argparse.Namespace) -> None:
    """Usage checks argparse cannot do (exit code 2)."""
    if args.labels is not None and args.points is None:
        raise UsageError("--labels needs --points")
    if args.points is not None and args.labels is not None and len(args.labels) != len(args.points):
        raise UsageError(f"{len(args.points)} points but {len(args.labels)} labels; give one label per point")
    if args.points is not None and args.bboxes is not None and len(args.bboxes) > 1:
        raise UsageError("--points go with a single box (one object); give several boxes without points")
    if (args.conf is not None or args.points_per_side is not None) and (args.points or args.bboxes):
        raise UsageError("--conf and --points-per-side only apply when no prompt is given (segment everything)")
    if args.points_per_side is not None and args.points_per_side < 1:
        raise UsageError(f"--points-per-side must be at least 1, not {args.points_per_side}")
    if args.conf is not None and not 0.0 <= args.conf <= 1.0:
        raise UsageError(f"--conf must be between 0 and 1, not {args.conf}")


def label_boxes_on_crops(predictor: Any, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Label image of one object per box; boxes too small for the whole image are segmented
    on crops at the model's scale, the others on the whole image (as ``annotate`` does)."""
    from napari_samscope.core.datasets.annotate import annotate_plane, paint_labels
    from napari_samscope.core.datasets.detectors import Detections

    detections = Detections.from_arrays(boxes, [0] * len(boxes), [1.0] * len(boxes))
    objects = annotate_plane(predictor, rgb, detections)
    return paint_labels(objects, rgb.shape[:2])


def run(args: argparse.Namespace) -> int:
    from napari_samscope.core.datasets.annotate_io import list_images
    from napari_samscope.core.predict.crops import (
        SmallObjectWarning,
        is_unresolvable,
        warn_unresolvable,
    )
    from napari_samscope.core.predict.resolve import as_predictor

    check_prompts(args)
    list_images(args.source)  # a missing source fails before the model is loaded
    model = with_scale(load_model(args.model, args.device, args.dtype), args.scale, args.flips,
                       args.refine_points, args.zoom)
    out = Path(args.out)
    prompted = args.points is not None or args.bboxes is not None
    kwargs: dict = {}
    if prompted:
        if args.points is not None:
            kwargs["points"] = np.asarray(args.points, dtype=np.float64)
            kwargs["labels"] = np.asarray(args.labels or [1] * len(args.points))
        if args.bboxes is not None:
            kwargs["bboxes"] = np.asarray(args.bboxes, dtype=np.float64)
        kwargs["multimask_output"] = args.multimask
    else:
        if args.conf is not None:
            kwargs["conf"] = args.conf
        if args.points_per_side is not None:
            kwargs["points_per_side"] = args.points_per_side
    n_objects = len(args.bboxes) if args.bboxes else 1
    predictor = as_predictor(model)
    boxes_only = args.bboxes is not None and args.points is None

    def segment(rgb: np.ndarray) -> np.ndarray:
        mag = _magnification(predictor, rgb.shape)
        if boxes_only and is_unresolvable(kwargs["bboxes"], rgb.shape, predictor.img_size, mag).any():
            return label_boxes_on_crops(predictor, rgb, kwargs["bboxes"])
        if prompted:
            warn_unresolvable(
                rgb.shape, predictor.img_size, boxes=kwargs.get("bboxes"), what="box", magnification=mag
            )
            if args.points is not None:
                warn_unresolvable(rgb.shape, predictor.img_size, what="image", magnification=mag)
        result = model(rgb, **kwargs)
        if prompted and args.multimask and n_objects == 1:  # 3 candidates of one object
            result = result.best()
        return result.to_label_image()

    def process(path: Path, stem: str) -> tuple[int, list[Path]]:
        count, written = 0, []
        for suffix, plane in image_planes(path, args.channel_axis):
            rgb = plane_to_rgb(plane, args.channel_axis)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SmallObjectWarning)
                labels = segment(rgb)
            for warning in caught:
                print(f"warning: {path.name}: {warning.message}", file=sys.stderr)
            files = write_results(out, stem + suffix, rgb, labels)
            found = int(labels.max())
            where = f" plane {suffix[2:]}" if suffix else ""
            print(f"{path.name}{where}: {found} object{'' if found == 1 else 's'} -> "
                  f"{', '.join(str(p) for p in files)}")
            count += found
            written += files
        return count, written

    return process_files(args.source, out, process)


def _magnification(predictor: Any, shape: tuple[int, ...]) -> float | None:
    """The magnification an image of ``shape`` goes into the model at (the predictor's
    ``--scale``); None when it does not fit (encoding it then says why)."""
    from napari_samscope.core.predict.input_scale import resolve_magnification

    try:
        return resolve_magnification(shape[:2], predictor.img_size, predictor.scale, predictor.input_scale)
    except ValueError:
        return None
