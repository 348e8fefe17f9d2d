"""``samscope export MODEL --format onnx``: two ONNX files (image encoder, prompt decoder)."""

from __future__ import annotations

import argparse

from napari_samscope.cli._common import DEFAULT_MODEL_HELP, add_debug

DESCRIPTION = """\
Export a model to ONNX as two files in --out: <name>_encoder.onnx (preprocessed image
1x3xSxS -> embedding 1xCxExE) and <name>_decoder.onnx (embedding, point_coords,
point_labels with boxes as corner points labelled 2 and 3, mask_input, has_mask_input,
orig_im_size -> masks, iou_predictions, low_res_masks; any number of points). The
input/output names are those of the official segment-anything ONNX decoder.
Needs the optional 'onnx' package (pip install 'napari-samscope[onnx]').
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX (encoder + decoder files)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", default=None,
                        help=f"name, alias or checkpoint path; default: {DEFAULT_MODEL_HELP}")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format [onnx]")
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument("--name", default=None, help="file-name prefix (default: the model's name)")
    parser.add_argument("--multimask", action="store_true",
                        help="the decoder returns 3 candidate masks instead of 1")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version [17]")
    add_debug(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_samscope.cli._common import load_model

    model = load_model(args.model, "cpu")
    files = model.export(format=args.format, out_dir=args.out, name=args.name,
                         multimask_output=args.multimask, opset=args.opset)
    for path in files:
        print(path)
    return 0
