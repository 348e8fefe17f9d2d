"""``samscope evaluate``: mean IoU of a model for point and box prompts."""

from __future__ import annotations

import argparse
import json

from napari_samscope.cli._common import (
    UsageError,
    add_debug,
    add_device,
    add_flips,
    add_refine_points,
    add_scale,
    add_zoom,
)

DESCRIPTION = """\
Prompt every labelled object once with a single positive point at a random interior
position and once with its bounding box, and report the mean IoU of each (plus the
point IoU when the best of 3 candidate masks is kept), next to a baseline that needs no
model: Otsu's threshold inside the same box. Data: --images/--labels folders
(matching names, stacks split into planes) or --synthetic N generated nuclei images
with --seed (use a seed never used in training; --uint16 and --low-snr give the
harder variants). For a model with an instance decoder it also reports automatic
instance segmentation (AIS): object F1 at IoU 0.5 and the mean IoU of matched objects,
next to a baseline that needs no model either: an Otsu threshold of the whole image with
touching objects split by a watershed of the distance transform. Every mean comes with
its standard error over the objects. --compare MODEL evaluates a second model on the same
objects with the same points and options and prints its difference from --model object by
object, with the standard error of each difference (AIS and --touching-pairs are reported
for --model only).

examples:
  samscope evaluate --model my_model.pt --images imgs --labels masks
  samscope evaluate --synthetic 20 --seed 9000 --uint16 --low-snr
  samscope evaluate --synthetic 10 --seed 9000 --touching-pairs
  samscope evaluate --images imgs --labels masks --compare my_model.pt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "evaluate", help="mean IoU of a model for point and box prompts",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None,
                        help="registry name/alias or checkpoint path (default: the project default)")
    parser.add_argument("--images", help="folder of images (TIFF/PNG)")
    parser.add_argument("--labels", help="folder of label images with the same names")
    parser.add_argument("--label-suffix", default=None,
                        help="label file names are <image name><suffix>, e.g. _labels")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="evaluate on N generated nuclei images (see --size)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic images and of the random points")
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic images")
    parser.add_argument("--uint16", action="store_true", help="synthetic images as uint16")
    parser.add_argument("--low-snr", action="store_true", help="synthetic images with low SNR")
    parser.add_argument("--outline", choices=("geometric", "half_contrast"), default="geometric",
                        help="synthetic ground truth: the drawn ellipses (default) or outlines at "
                             "half contrast, where annotators draw them")
    parser.add_argument("--touching-pairs", action="store_true",
                        help="also report one positive click vs positive + negative click on "
                             "the touching neighbour (passed as the plugin does, with the first "
                             "mask as the mask prompt), and how much of the neighbour the mask "
                             "holds before and after, for every touching pair")
    parser.add_argument("--compare", default=None, metavar="MODEL",
                        help="a second model (registry name or checkpoint path) evaluated on the "
                             "same objects with the same points and options; prints its figures "
                             "and its difference from --model object by object, with the "
                             "standard error of each difference")
    parser.add_argument("--min-area", type=int, default=10, help="skip smaller objects (pixels)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_device(parser)
    add_scale(parser)
    add_flips(parser)
    add_refine_points(parser)
    add_zoom(parser)
    add_debug(parser)
    parser.set_defaults(func=run)


def _pairs(args: argparse.Namespace) -> tuple[list, list]:
    if args.synthetic:
        if args.images or args.labels:
            raise UsageError("give either --synthetic or --images/--labels, not both")
        if args.synthetic < 1:
            raise UsageError("--synthetic needs a positive number of images")
        from napari_samscope.core.training.evaluate import synthetic_eval_set

        images, labels = synthetic_eval_set(
            args.synthetic, args.seed, shape=(args.size, args.size), uint16=args.uint16,
            low_snr=args.low_snr, boundary=args.outline,
        )
        return list(images), list(labels)
    if args.uint16 or args.low_snr or args.outline != "geometric":
        raise UsageError("--uint16, --low-snr and --outline only apply to --synthetic images")
    if not args.images or not args.labels:
        raise UsageError("--images and --labels are both required (or use --synthetic N)")
    from napari_samscope.core.training import TrainingData

    data = TrainingData.from_folders(args.images, args.labels, label_suffix=args.label_suffix)
    return [p[0] for p in data.planes], [p[1] for p in data.planes]


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the figures. Returns the exit code."""
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.training.evaluate import evaluate

    images, labels = _pairs(args)

    def load(name: str | None) -> SAM:
        model = SAM(name, device=args.device or "auto", dtype=args.dtype, progress="tqdm")
        model.scale = args.scale
        model.flips = args.flips
        model.refine_points = args.refine_points
        model.zoom = args.zoom
        return model

    def measure(model: SAM):
        return evaluate(model, images, labels, seed=args.seed, min_area=args.min_area,
                        n_images=len(images), progress="tqdm")

    model = load(args.model)
    result = measure(model)
    precision = "float32" if model.dtype is None else str(model.dtype).replace("torch.", "")
    from napari_samscope.core.predict.flips import declared_flips
    from napari_samscope.core.predict.point_refine import declared_refine_points
    from napari_samscope.core.predict.zoom import declared_zoom

    figures = {"model": str(args.model or "default"), "dtype": precision,
               "flips": declared_flips(model), "refine_points": declared_refine_points(model),
               "zoom": declared_zoom(model),
               **result.as_dict()}
    other = None
    if args.compare:
        from napari_samscope.core.training.evaluate import paired_differences

        other_model = load(args.compare)
        other = measure(other_model)
        figures["compare"] = {"model": str(args.compare), "flips": declared_flips(other_model),
                              "refine_points": declared_refine_points(other_model),
                              "zoom": declared_zoom(other_model), **other.as_dict(),
                              **paired_differences(result, other)}
        del other_model
    pairs = None
    if args.touching_pairs:
        from napari_samscope.core.training.touching_pairs import evaluate_touching_pairs

        pairs = evaluate_touching_pairs(model, images, labels, n_images=len(images), progress="tqdm")
        figures["touching_pairs"] = pairs.as_dict()
    if model.has_instance_decoder:
        from napari_samscope.core.training.baselines import threshold_watershed_labels
        from napari_samscope.core.training.instance_eval import instance_scores

        ais = instance_scores([model.segment_instances(im, mode="ais") for im in images], labels)
        base = instance_scores([threshold_watershed_labels(im) for im in images], labels)
        figures["ais_f1"] = ais["f1"]
        figures["ais_mean_matched_iou"] = ais["mean_matched_iou"]
        figures["ais_baseline_f1"] = base["f1"]
        figures["ais_baseline_mean_matched_iou"] = base["mean_matched_iou"]
    if args.json:
        print(json.dumps(figures))
    else:
        se = result.standard_errors()
        print(
            f"{figures['model']} ({precision}, flips {figures['flips']}, refined points "
            f"{'on' if figures['refine_points'] else 'off'}, zoom {figures['zoom']:g}): point IoU "
            f"{result.point_iou:.4f} ± {se['point_iou_se']:.4f} (best of 3: "
            f"{result.point_multimask_iou:.4f}), box IoU {result.box_iou:.4f} ± {se['box_iou_se']:.4f} "
            f"over {result.objects} objects in {result.images} images; "
            f"baseline without a model, Otsu threshold in the box: {result.otsu_box_iou:.4f} ± "
            f"{se['otsu_box_iou_se']:.4f}; box minus Otsu, object by object: "
            f"{result.box_minus_otsu:+.4f} ± {se['box_minus_otsu_se']:.4f} "
            f"(±: one standard error of the mean over the objects)"
        )
        if other is not None:
            c = figures["compare"]
            print(
                f"{c['model']} (flips {c['flips']}, refined points "
                f"{'on' if c['refine_points'] else 'off'}, zoom {c['zoom']:g}): point IoU "
                f"{c['point_iou']:.4f}, box IoU {c['box_iou']:.4f}; minus {figures['model']}, "
                f"object by object (same points): point {c['point_iou_diff']:+.4f} ± "
                f"{c['point_iou_diff_se']:.4f}, best of 3 {c['point_multimask_iou_diff']:+.4f} ± "
                f"{c['point_multimask_iou_diff_se']:.4f}, box {c['box_iou_diff']:+.4f} ± "
                f"{c['box_iou_diff_se']:.4f}"
            )
        if pairs is not None:
            tp = pairs.as_dict()
            print(
                f"touching pairs ({pairs.pairs}): one positive click {tp['positive_iou']:.4f}, "
                f"plus a negative click on the neighbour {tp['pair_iou']:.4f} (neighbour inside the "
                f"mask {tp['neighbour_before']:.1%} -> {tp['neighbour_after']:.1%}); where the "
                f"positive click alone was below IoU 0.7 ({tp['failed_pairs']} pairs): "
                f"{tp['failed_positive_iou']:.4f} -> {tp['failed_pair_iou']:.4f} (neighbour inside "
                f"{tp['failed_neighbour_before']:.1%} -> {tp['failed_neighbour_after']:.1%}); where its "
                f"mask held over 20% of the neighbour ({tp['merged_pairs']} pairs): "
                f"{tp['merged_positive_iou']:.4f} -> {tp['merged_pair_iou']:.4f} (neighbour inside "
                f"{tp['merged_neighbour_before']:.1%} -> {tp['merged_neighbour_after']:.1%})"
            )
        if "ais_f1" in figures:
            print(f"AIS: object F1 at IoU 0.5 {figures['ais_f1']:.4f}, mean matched IoU "
                  f"{figures['ais_mean_matched_iou']:.4f}; baseline without a model, Otsu "
                  f"threshold and distance watershed: F1 {figures['ais_baseline_f1']:.4f}, "
                  f"mean matched IoU {figures['ais_baseline_mean_matched_iou']:.4f}")
    return 0
