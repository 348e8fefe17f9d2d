"""AIS with the default model ``samscope_nuclei`` and its shipped instance decoder.

Prints medians of ``--repeats`` runs (after one warm-up) on a ``--side`` x ``--side``
synthetic nuclei image (uint8, the generator's default look):

- ``encode``: ``set_image`` (the model's default dtype, bf16 where the CPU computes it natively);
- ``decoder``: the decoder's maps from the embedding, at the original size;
- ``post``: the seeded watershed (``instances_from_maps``, micro-sam's defaults);
- ``AIS total``: ``SAM().segment_instances(image, mode="ais")``, encoding included
  (target <= 0.5 s at 1024x1024 on a 2-core CPU);
- ``AMG``: segment-everything (32x32 grid, the model's thresholds), once unless
  ``--amg-repeats``; the ratio AMG / AIS (target >= 10x).

Usage: ``PYTHONPATH=src python benchmarks/bench_default_ais.py [--threads 2] [--repeats 5]``.
Quote the load average printed with the figures.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import load_average, measure, say


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amg-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from napari_samscope import SAM
    from napari_samscope.core.instances.maps import instance_maps_from_embedding
    from napari_samscope.core.instances.postprocess import instances_from_maps
    from napari_samscope.core.synthetic import make_nuclei_2d

    model = SAM()
    if not model.has_instance_decoder:
        raise SystemExit("The default model has no instance decoder.")
    image, labels = make_nuclei_2d((args.side, args.side), seed=9000)
    say(f"{args.side}x{args.side}, {int(labels.max())} nuclei, dtype {model.dtype}, "
        f"{torch.get_num_threads()} threads, load {load_average()}")
    predictor = model.predictor()
    encode = measure(lambda: predictor.set_image(image), args.repeats)
    embedding = predictor.get_embedding()
    maps = instance_maps_from_embedding(model.instance_decoder, embedding, model.model.img_size, model.dtype)
    decoder = measure(
        lambda: instance_maps_from_embedding(
            model.instance_decoder, embedding, model.model.img_size, model.dtype
        ),
        args.repeats,
    )
    post = measure(lambda: instances_from_maps(maps), args.repeats)
    ais = measure(lambda: model.segment_instances(image, mode="ais"), args.repeats)
    found = int(model.segment_instances(image, mode="ais").max())
    amg = measure(lambda: model(image), args.amg_repeats, warmup=0)
    rows = [("encode (set_image)", encode), ("decoder maps", decoder), ("post-processing", post),
            ("AIS total", ais), ("AMG 32x32", amg)]
    for name, timing in rows:
        print(f"{name:22s} median {timing.median:7.3f} s   runs {np.round(timing.runs, 3).tolist()}")
    print(f"AIS objects {found} (truth {int(labels.max())}); AMG / AIS = {amg.median / ais.median:.1f}x; "
          f"load {load_average()}")


if __name__ == "__main__":
    main()
