"""``samscope annotate``: auto-annotate a folder of images (YOLO segmentation labels)."""

from __future__ import annotations

import argparse

from napari_samscope.cli._common import (
    DEFAULT_MODEL_HELP,
    ProgressBar,
    UsageError,
    add_channel_axis,
    add_debug,
    add_device,
    add_flips,
    add_scale,
    add_zoom,
)
from napari_samscope.cli._distributed import (
    add_scheduler,
    refuse_scale,
    run_annotate,
    wants_cluster,
)

DESCRIPTION = """\
Detect objects (default: fluorescent nuclei with a blob detector, no weights needed),
segment each with SAM and write YOLO segmentation labels: one <stem>.txt per image,
one line per object 'class x1 y1 x2 y2 ...' normalised to [0, 1]. Multi-page TIFF
stacks give <stem>_z0000.txt, <stem>_z0001.txt, ... Default output folder:
<data parent>/<data name>_auto_annotate_labels/. Images already annotated are skipped
unless --overwrite; unreadable images are reported and skipped (exit code 1 if any).

With --det-model ais (or apg) the model's instance decoder finds the objects and their
masks in one pass (micro-sam models such as vit_b_lm, or a checkpoint with a decoder).

Ultralytics-style: samscope annotate data=path/to/images det_model=blobs sam_model=sam_b.pt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotate", help="auto-annotate a folder of images (detector + SAM -> YOLO labels)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="a folder of images, or one image file")
    parser.add_argument("--det-model", default="blobs",
                        help="'blobs' (default), Ultralytics YOLO weights (needs 'ultralytics'), or "
                        "'ais' / 'apg': the objects and masks of the SAM model's instance decoder "
                        "(a model that has one, e.g. --sam-model vit_b_lm)")
    parser.add_argument("--sam-model", "--model", dest="sam_model", default=None, metavar="MODEL",
                        help=f"SAM model name, alias or checkpoint path; default: {DEFAULT_MODEL_HELP}")
    parser.add_argument("--output-dir", "--out", dest="output_dir", default=None,
                        help="output folder (default: <data parent>/<data name>_auto_annotate_labels)")
    parser.add_argument("--conf", type=float, default=0.25, help="minimum detector score [0.25]")
    parser.add_argument("--classes", nargs="+", type=int, default=None, metavar="ID",
                        help="keep only these class ids")
    parser.add_argument("--max-det", type=int, default=300, help="at most this many objects per image [300]")
    parser.add_argument("--overwrite", action="store_true", help="re-annotate images already annotated")
    parser.add_argument("--save-tiff", action="store_true", help="also write <stem>_labels.tif label images")
    parser.add_argument("--save-coco", action="store_true", help="also write annotations_coco.json")
    parser.add_argument("--split-parts", action="store_true",
                        help="one line per connected part of an object (default: parts bridged in one line)")
    add_channel_axis(parser)
    add_device(parser)
    add_scale(parser)
    add_flips(parser)
    add_zoom(parser)
    add_scheduler(parser)
    add_debug(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_samscope.core.datasets.annotate import auto_annotate

    if not 0.0 <= args.conf <= 1.0:
        raise UsageError(f"--conf must be between 0 and 1, not {args.conf}")
    if wants_cluster(args):  # --scheduler / --workers: the job runs on a dask cluster
        refuse_scale(args)
        return run_annotate(args)
    sam_model = args.sam_model
    if args.dtype != "default" or any(v is not None for v in (args.scale, args.flips, args.zoom)):
        from napari_samscope.cli._common import load_model, with_scale  # load it here with them

        sam_model = with_scale(load_model(args.sam_model, args.device, args.dtype), args.scale,
                               args.flips, zoom=args.zoom)
    with ProgressBar() as bar:
        summary = auto_annotate(
            args.data, det_model=args.det_model, sam_model=sam_model, device=args.device,
            output_dir=args.output_dir, conf=args.conf, classes=args.classes, max_det=args.max_det,
            overwrite=args.overwrite, save_tiff=args.save_tiff, save_coco=args.save_coco,
            split_parts=args.split_parts, channel_axis=args.channel_axis, progress=bar, verbose=False,
        )
    for path, reason in summary.failed:
        print(f"skipped {path}: {reason}")
    print(summary)
    return 1 if summary.failed else 0
