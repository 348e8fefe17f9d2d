"""``samscope everything``: segment everything, with the generator's parameters as options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_samscope.cli._common import (
    ProgressBar,
    UsageError,
    add_debug,
    add_device,
    add_model,
    add_scale,
    image_planes,
    load_model,
    plane_to_rgb,
    process_files,
    with_scale,
    write_results,
)
from napari_samscope.core.everything.params import EVERYTHING_DEFAULTS, EverythingParams

DESCRIPTION = """\
Segment everything in an image (or every image of a folder) by prompting the model with
a grid of points, as the official automatic mask generator does. Writes per image
<stem>_labels.tif, <stem>_overlay.png and, with --records, <stem>_masks.json (one record
per mask: area, bbox x,y,w,h, predicted_iou, stability_score, point, crop_box).
Unset options take the model's recommended values when its registry entry has some
(below), else the official defaults (shown in brackets).

--mode ais (automatic instance segmentation) and --mode apg (automatic prompt
generation) need a model with an instance decoder (micro-sam's *_lm, *_em_organelles and
*_histopathology models): the decoder predicts foreground and distance maps from the
image embedding and a seeded watershed turns them into objects in one pass, far faster
than the point grid (the default, --mode amg).
"""


def _model_defaults_help() -> str:
    """One line per registry model with recommended segment-everything values."""
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, lookup, model_names

    lines = []
    for name in model_names():
        spec = lookup(name)
        values = spec.everything_params() if spec is not None else {}
        if values:
            shown = ", ".join(f"{k} {v:g}" for k, v in values.items())
            default = " (the default model)" if name == DEFAULT_MODEL else ""
            lines.append(f"  {name}{default}: {shown}")
    if not lines:
        return ""
    return "\nRecommended values of models (used for the options you do not set):\n" + "\n".join(lines) + "\n"

_HELP = {
    "points_per_side": "grid points per image side (alias --points-stride)",
    "points_per_batch": "prompts decoded together (memory)",
    "pred_iou_thresh": "keep masks whose predicted IoU is above this (alias --conf)",
    "stability_score_thresh": "keep masks at least this stable",
    "stability_score_offset": "logit offset of the stability score",
    "box_nms_thresh": "box IoU above which duplicates are dropped",
    "crop_n_layers": "extra layers of image crops (0: whole image only)",
    "crop_nms_thresh": "box IoU above which duplicates between crops are dropped",
    "crop_overlap_ratio": "overlap of the crops, as a fraction of the short side",
    "crop_n_points_downscale_factor": "points per side divided by this per crop layer",
    "min_mask_region_area": "fill holes / drop islands smaller than this (pixels)",
}
#: option -> (type, official default shown in --help, help), from ``EverythingParams``
#: (``multimask_output`` is the ``--single-mask`` switch).
PARAMETERS: dict[str, tuple[type, float, str]] = {
    name: (type(EVERYTHING_DEFAULTS[name]), EVERYTHING_DEFAULTS[name], text)
    for name, text in _HELP.items()
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "everything", help="segment everything (automatic mask generation)",
        description=DESCRIPTION + _model_defaults_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(parser)
    parser.add_argument("--source", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", default="results", help="output folder (default: ./results)")
    group = parser.add_argument_group("segment-everything parameters")
    for name, (kind, default, text) in PARAMETERS.items():
        shown = f"{default:.4g}"
        flags = [f"--{name.replace('_', '-')}"]
        if name == "pred_iou_thresh":
            flags.append("--conf")
        if name == "points_per_side":
            flags.append("--points-stride")  # Ultralytics' name
        group.add_argument(*flags, dest=name, type=kind, default=None,
                           help=f"{text} [model's value, else {shown}]")
    group.add_argument("--single-mask", action="store_true",
                       help="one candidate per grid point instead of 3")
    parser.add_argument("--mode", choices=("amg", "ais", "apg"), default="amg",
                        help="amg: the point grid (default); ais / apg: the instance decoder")
    parser.add_argument("--records", action="store_true", help="also write <stem>_masks.json")
    add_device(parser)
    add_scale(parser)
    add_debug(parser)
    parser.set_defaults(func=run)


def given_params(args: argparse.Namespace) -> dict[str, object]:
    """The segment-everything options set on the command line, checked.

    Raises:
        UsageError: a value out of range (exit code 2, before any model is loaded).
    """
    given: dict[str, object] = {
        name: getattr(args, name) for name in PARAMETERS if getattr(args, name) is not None
    }
    if args.single_mask:
        given["multimask_output"] = False
    try:
        EverythingParams.from_kwargs(**given)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return given


def run(args: argparse.Namespace) -> int:
    from napari_samscope.core.datasets.annotate_io import list_images
    from napari_samscope.core.everything.generator import MaskGenerator, model_everything_defaults

    given = given_params(args)  # checked before the model is loaded
    list_images(args.source)  # a missing source fails before the model is loaded
    if args.mode != "amg":
        if given or args.records:
            raise UsageError(f"the point-grid options and --records do not apply to --mode {args.mode}")
        return _run_instances(args)
    model = with_scale(load_model(args.model, args.device, args.dtype), args.scale)
    recommended = model_everything_defaults(model)
    generator = MaskGenerator(model, params=EverythingParams.with_defaults(given, recommended))
    applied = {k: v for k, v in recommended.items() if k not in given}
    if applied:
        shown = ", ".join(f"{k} {v:g}" for k, v in applied.items())
        print(f"{model.name}: using the model's recommended {shown} (set the options to change)")
    out = Path(args.out)

    def process(path: Path, stem: str) -> tuple[int, list[Path]]:
        count, written = 0, []
        for suffix, plane in image_planes(path):
            rgb = plane_to_rgb(plane)
            with ProgressBar() as bar:
                result = generator.generate(rgb, progress=bar)
            files = write_results(out, stem + suffix, rgb, result.to_label_image())
            if args.records:
                records = [
                    {
                        "label": i + 1, "area": r.area, "bbox": list(r.bbox),
                        "predicted_iou": r.predicted_iou, "stability_score": r.stability_score,
                        "point": list(r.point_coords), "crop_box": list(r.crop_box),
                    }
                    for i, r in enumerate(result.records)
                ]
                json_path = out / f"{stem}{suffix}_masks.json"
                json_path.write_text(json.dumps(records, indent=1), encoding="utf-8")
                files.append(json_path)
            where = f" plane {suffix[2:]}" if suffix else ""
            print(f"{path.name}{where}: {len(result)} mask{'' if len(result) == 1 else 's'} -> "
                  f"{', '.join(str(p) for p in files)}")
            count += len(result)
            written += files
        return count, written

    return process_files(args.source, out, process, what="masks")


def _run_instances(args: argparse.Namespace) -> int:
    """``--mode ais`` / ``apg``: instances from the model's instance decoder."""
    model = with_scale(load_model(args.model, args.device, args.dtype), args.scale)
    if not model.has_instance_decoder:
        model.segment_instances(None, mode=args.mode)  # raises the error that names the models with a decoder
    out = Path(args.out)

    def process(path: Path, stem: str) -> tuple[int, list[Path]]:
        count, written = 0, []
        for suffix, plane in image_planes(path):
            rgb = plane_to_rgb(plane)
            labels = model.segment_instances(rgb, mode=args.mode)
            files = write_results(out, stem + suffix, rgb, labels)
            found = int(np.count_nonzero(np.unique(labels)))  # ids need not be consecutive
            where = f" plane {suffix[2:]}" if suffix else ""
            print(f"{path.name}{where}: {found} object{'' if found == 1 else 's'} ({args.mode}) -> "
                  f"{', '.join(str(p) for p in files)}")
            count += found
            written += files
        return count, written

    return process_files(args.source, out, process, what="objects")
