"""Object-level quality of AIS (the instance decoder) next to segment-everything (AMG).

On the held-out images of ``samscope evaluate --synthetic N --seed 9000`` (512x512 nuclei,
uint8, and uint16 low-SNR), prints per set and mode: object F1 at IoU 0.5, precision,
recall and the mean IoU of the matched objects (``core.training.instance_eval``).

Usage (from the repository root)::

    python training/evaluate_instance_decoder.py                      # the shipped decoder
    python training/evaluate_instance_decoder.py --decoder training/runs/decoder/samscope_nuclei_decoder.pt
"""

from __future__ import annotations

import argparse
import json

import torch

from napari_samscope.core.training.instance_eval import synthetic_instance_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="samscope_nuclei", help="SAM model (registry name or file)")
    parser.add_argument("--decoder", default=None, help="decoder file (default: the model's own)")
    parser.add_argument("--n", type=int, default=10, help="images per set")
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--no-amg", action="store_true", help="skip segment-everything")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from napari_samscope import SAM

    model = SAM(args.model)
    if args.decoder:
        model.set_instance_decoder(args.decoder)
    modes = {"AIS": lambda im: model.segment_instances(im, mode="ais")}
    if not args.no_amg:
        modes["AMG"] = lambda im: model(im).to_label_image()
    figures = {name: synthetic_instance_scores(fn, args.n, args.seed) for name, fn in modes.items()}
    print(f"{'set':16s} {'mode':4s} {'F1@0.5':>7s} {'prec':>6s} {'recall':>6s} {'mIoU':>6s} {'objects':>7s}")
    for name, sets in figures.items():
        for set_name, s in sets.items():
            print(f"{set_name:16s} {name:4s} {s['f1']:7.3f} {s['precision']:6.3f} {s['recall']:6.3f} "
                  f"{s['mean_matched_iou']:6.3f} {int(s['objects']):7d}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "decoder": args.decoder, "n": args.n, "seed": args.seed,
                       "figures": figures}, f, indent=2)


if __name__ == "__main__":
    main()
