"""``samscope everything``: segment everything, with the generator's parameters as options."""

from __future__ import annotations

import argparse
import json
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
from napari_samscope.cli._distributed import (
    add_scheduler,
    refuse_scale,
    run_everything,
    wants_cluster,
)
from napari_samscope.cli.embed import _shape
from napari_samscope.core.everything.batch import (
    EverythingBatchOptions,
    EverythingBatchSummary,
    print_failures,
)
from napari_samscope.core.everything.params import EVERYTHING_DEFAULTS, EverythingParams

DESCRIPTION = """\
Segment everything in an image (or every image of a folder) by prompting the model with
a grid of points, as the official automatic mask generator does. Writes per image
<stem>_labels.tif, <stem>_overlay.png and, with --records, <stem>_masks.json (one record
per mask: area, bbox x,y,w,h, predicted_iou, stability_score, point, crop_box).
Files are written atomically; a rerun with the same options skips the images already
done (--overwrite redoes them), so an interrupted folder continues where it stopped.
With --scheduler / --workers the images are segmented by the workers of a dask cluster,
one task per image, with the same outputs byte for byte.
Unset options take the model's recommended values when its registry entry has some
(below), else the official defaults (shown in brackets).

--mode ais (automatic instance segmentation) and --mode apg (automatic prompt
generation) need a model with an instance decoder (micro-sam's *_lm, *_em_organelles and
*_histopathology models): the decoder predicts foreground and distance maps from the
image embedding and a seeded watershed turns them into objects in one pass, far faster
than the point grid (the default, --mode amg).

--tile-shape / --halo segment images larger than the model input tile by tile, each tile
at the model's scale (small objects are not shrunk away): amg's masks are stitched across
the halos; ais decodes each tile's maps, keeps each tile's inner part and runs one
watershed on the whole image, so objects on tile borders are one object; apg decodes
each seed on the tile that holds it best.
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
    parser.add_argument("--tile-shape", type=_shape, default=None, metavar="N|H,W",
                        help="segment large images tile by tile: tiles of this size (halo "
                             "included, at most the model input), stitched across the halos; "
                             "all modes (ais: the decoder's maps are stitched, then one "
                             "watershed) [whole image at once]")
    parser.add_argument("--halo", type=_shape, default=None, metavar="N|H,W",
                        help="overlap on each side of a tile (objects smaller than it are "
                             "never cut) [model input / 8]")
    parser.add_argument("--records", action="store_true", help="also write <stem>_masks.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo images whose outputs exist (a rerun with the same options "
                             "otherwise skips them)")
    add_device(parser)
    add_scale(parser)
    add_scheduler(parser)
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


def settings_key(args: argparse.Namespace, given: dict[str, object]) -> str:
    """What the outputs depend on besides the source, as the manifest records it: a rerun
    with the same key skips finished images, any other key redoes them."""
    model = args.model
    if model is not None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return json.dumps({
        "command": "everything", "mode": args.mode, "model": model, "dtype": args.dtype,
        "params": {k: given[k] for k in sorted(given)}, "records": bool(args.records),
        "scale": getattr(args, "scale", None),
        **({"tile_shape": args.tile_shape, "halo": args.halo}
           if getattr(args, "tile_shape", None) or getattr(args, "halo", None) else {}),
    }, sort_keys=True)


def batch_options(args: argparse.Namespace) -> EverythingBatchOptions:
    """The checked options of one run (before any model is loaded).

    Raises:
        UsageError: bad values, or grid options with a decoder mode (exit code 2).
    """
    given = given_params(args)
    if args.mode != "amg" and (given or args.records):
        raise UsageError(f"the point-grid options and --records do not apply to --mode {args.mode}")
    tile_shape, halo = getattr(args, "tile_shape", None), getattr(args, "halo", None)
    if tile_shape is not None or halo is not None:
        from napari_samscope.core.tiling.geometry import check_tiling

        try:  # the model's defaults are checked once it is loaded
            check_tiling(tile_shape or (max(1, 2 * max(halo) + 1),) * 2, halo or (0, 0))
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    return EverythingBatchOptions(
        mode=args.mode, params=tuple(sorted(given.items())), records=bool(args.records),
        overwrite=bool(args.overwrite), settings=settings_key(args, given),
        tile_shape=tile_shape, halo=halo,
    )


def report(summary: EverythingBatchSummary, out: Path) -> int:
    """The failures on stderr, one summary line; the exit code (1 when a file failed)."""
    print_failures(summary)
    print(summary.text(out))
    return 1 if summary.failed else 0


def run(args: argparse.Namespace) -> int:
    from napari_samscope.core.datasets.annotate_io import list_images
    from napari_samscope.core.everything.batch import everything_files_job, plan_stems
    from napari_samscope.core.progress import run as run_job

    options = batch_options(args)  # checked before the model is loaded
    list_images(args.source)  # a missing source fails before the model is loaded
    if wants_cluster(args):
        refuse_scale(args)
        return run_everything(args, options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = plan_stems(args.source, out)
    model = with_scale(load_model(args.model, args.device, args.dtype), args.scale)
    with ProgressBar() as bar:
        summary = run_job(everything_files_job(items, out, model, options, echo=print), progress=bar)
    return report(summary, out)
