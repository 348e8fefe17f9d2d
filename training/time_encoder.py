"""Median time to encode one 512x512 image with a model (fp32, CPU by default).

    python training/time_encoder.py [--model samscope_nuclei] [--repeats 15] [--threads 2]

Prints the median and quartiles of ``Predictor.set_image`` (normalisation, resizing,
encoder) and of the image encoder alone. The project's benchmark suite measures the
same thing more thoroughly; this script is the quick check of the training recipe.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_samscope.core.predict.predictor import Predictor
from napari_samscope.core.synthetic import make_nuclei_2d
from napari_samscope.core.weights.loader import load_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name or path (default model)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sam = load_sam(args.model, device="cpu").sam
    image, _ = make_nuclei_2d((512, 512), dtype="uint16", seed=7)
    predictor = Predictor(sam)
    predictor.set_image(image)  # warm-up
    x = torch.zeros(1, 3, sam.img_size, sam.img_size)
    with torch.inference_mode():
        sam.image_encoder(x)
    full, encoder = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.set_image(image)
        full.append(time.perf_counter() - start)
        with torch.inference_mode():
            start = time.perf_counter()
            sam.image_encoder(x)
            encoder.append(time.perf_counter() - start)
    for name, times in (("set_image 512x512", full), ("image encoder", encoder)):
        q1, median, q3 = np.percentile(times, [25, 50, 75])
        print(f"{name}: median {median:.3f} s (quartiles {q1:.3f}-{q3:.3f}, "
              f"{args.repeats} runs, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
