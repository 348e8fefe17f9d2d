"""``samscope train``: fine-tune a SAM-family model (or train a fresh one) on labelled images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_samscope.cli._common import UsageError, add_debug

DESCRIPTION = """\
Train on pairs of images and instance label images (0 = background, one integer id
per object). --images and --labels are folders of TIFF/PNG files with matching names
(cells_01.tif <-> cells_01.tif, or cells_01_labels.tif); stacks are split into planes.
Instead of folders, --synthetic N trains on N generated fluorescence images.

The starting point is --model (a registry name such as vit_t or sam_b.pt, or a
checkpoint; default: the project default model) or --config, a JSON file with a
fresh architecture (SamConfig.to_dict()). The result is written to --out in the
project format with a JSON sidecar (--out + '.json'); load it with --model PATH.

examples:
  samscope train --images imgs --labels masks --model vit_t --out my_model.pt --epochs 10
  samscope train --images imgs --labels masks --trainable all --steps 2000 --out m.pt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    from napari_samscope.core.training.trainer import TRAINABLE_PARTS, TrainConfig

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train", help="fine-tune or train a model on labelled images",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", help="folder of training images (TIFF/PNG)")
    parser.add_argument("--labels", help="folder of label images with the same names")
    parser.add_argument("--label-suffix", default=None,
                        help="label file names are <image name><suffix>, e.g. _labels")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="train on N generated nuclei images instead of folders")
    parser.add_argument("--model", default=None,
                        help="starting model: registry name/alias or checkpoint path "
                             "(default: the project default model)")
    parser.add_argument("--config", default=None, metavar="JSON",
                        help="train a fresh model of this architecture (SamConfig.to_dict() JSON)")
    parser.add_argument("--out", required=True, help="checkpoint to write (e.g. my_model.pt)")
    parser.add_argument("--trainable", choices=TRAINABLE_PARTS, default=defaults.trainable,
                        help=f"parts to train (default: {defaults.trainable})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"optimisation steps (default: {defaults.steps})")
    parser.add_argument("--epochs", type=float, default=None,
                        help="passes over the training planes (overrides --steps)")
    parser.add_argument("--batch-images", type=int, default=defaults.batch_images)
    parser.add_argument("--objects-per-image", type=int, default=defaults.objects_per_image)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--corrective-rounds", type=int, default=defaults.corrective_rounds)
    parser.add_argument("--no-augment", action="store_true", help="no flips / transposes")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (faster on recent CPUs and GPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    add_debug(parser)
    parser.set_defaults(func=run)


def _data(args: argparse.Namespace):  # -> TrainingData
    from napari_samscope.core.training import TrainingData

    if args.synthetic:
        if args.images or args.labels:
            raise UsageError("give either --synthetic or --images/--labels, not both")
        if args.synthetic < 1:
            raise UsageError("--synthetic needs a positive number of images")
        import numpy as np

        from napari_samscope.core.synthetic import random_style, render_nuclei_2d

        rng = np.random.default_rng(args.seed)
        pairs = [render_nuclei_2d(random_style(rng), (512, 512), rng) for _ in range(args.synthetic)]
        return TrainingData([p[0] for p in pairs], [p[1] for p in pairs])
    if not args.images or not args.labels:
        raise UsageError("--images and --labels are both required (or use --synthetic N)")
    return TrainingData.from_folders(args.images, args.labels, label_suffix=args.label_suffix)


def _model(args: argparse.Namespace):  # -> str | SamConfig | None
    if args.config is None:
        from napari_samscope.core.weights.registry import DEFAULT_MODEL

        return args.model or DEFAULT_MODEL
    if args.model is not None:
        raise UsageError("give either --model (fine-tune) or --config (fresh model), not both")
    from napari_samscope.core.modeling.build import SamConfig

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"No config file at {path}.")
    try:
        return SamConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Train and write the checkpoint; prints a one-line summary. Returns the exit code."""
    from napari_samscope.core.training import TrainConfig, train

    model = _model(args)
    config = TrainConfig(
        steps=args.steps,
        epochs=args.epochs,
        batch_images=args.batch_images,
        objects_per_image=args.objects_per_image,
        lr=args.lr,
        trainable=args.trainable,
        corrective_rounds=args.corrective_rounds,
        augment=not args.no_augment,
        autocast="bfloat16" if args.bf16 else None,
        device=args.device,
        seed=args.seed,
    )
    data = _data(args)
    result = train(model, data, config, out=args.out, progress="tqdm")
    print(
        f"trained {len(result.history)} steps in {result.seconds:.0f} s: "
        f"loss {result.recent('loss'):.4f}, first-prompt IoU {result.recent('iou'):.3f} "
        f"(mean of the last 20 steps); wrote {result.checkpoint}",
        file=sys.stdout,
    )
    return 0
