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

Each row also gives the median process CPU time: with ``--threads 1`` it is close to
the wall time the same work takes on an idle core, which makes the figures usable on a
shared machine (quote the load average printed with them).

Usage: ``PYTHONPATH=src python benchmarks/bench_default_ais.py [--threads 2] [--repeats 5]``
(``--amg-repeats 0`` skips segment-everything).

Before / after in one run: ``--compare OLD_SRC --rounds 5`` (``OLD_SRC``: the ``src`` folder
of another checkout, e.g. ``git worktree add /tmp/old <commit>``) times the stages in
child processes, alternating the other checkout's code and this one's (``PYTHONPATH``),
so that both see the same load; it prints the medians over the rounds of each side's
per-round medians, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import load_average, say


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``repeats`` runs of ``fn`` after ``warmup``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--amg-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", default=None, help="src folder of the code to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="alternations with --compare")
    parser.add_argument("--json", action="store_true", help="print one line of JSON (child runs)")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    torch.set_num_threads(args.threads)

    from napari_samscope import SAM
    from napari_samscope.core.instances.maps import instance_maps_from_embedding
    from napari_samscope.core.instances.postprocess import instances_from_maps
    from napari_samscope.core.synthetic import make_nuclei_2d

    model = SAM()
    if not model.has_instance_decoder:
        raise SystemExit("The default model has no instance decoder.")
    image, labels = make_nuclei_2d((args.side, args.side), seed=9000)
    if not args.json:
        say(f"{args.side}x{args.side}, {int(labels.max())} nuclei, dtype {model.dtype}, "
            f"{torch.get_num_threads()} threads, load {load_average()}")
    predictor = model.predictor()
    encode = timed(lambda: predictor.set_image(image), args.repeats)
    embedding = predictor.get_embedding()
    maps = instance_maps_from_embedding(model.instance_decoder, embedding, model.model.img_size, model.dtype)
    decoder = timed(
        lambda: instance_maps_from_embedding(
            model.instance_decoder, embedding, model.model.img_size, model.dtype
        ),
        args.repeats,
    )
    post = timed(lambda: instances_from_maps(maps), args.repeats)
    ais = timed(lambda: model.segment_instances(image, mode="ais"), args.repeats)
    found = int(model.segment_instances(image, mode="ais").max())
    rows = [("encode (set_image)", encode), ("decoder maps", decoder), ("post-processing", post),
            ("AIS total", ais)]
    if args.amg_repeats > 0:
        rows.append(("AMG 32x32", timed(lambda: model(image), args.amg_repeats, warmup=0)))
    if args.json:
        print(json.dumps({"objects": found, **{
            name: [statistics.median(wall), statistics.median(cpu)] for name, (wall, cpu) in rows
        }}))
        return
    for name, (wall, cpu) in rows:
        print(f"{name:20s} wall median {statistics.median(wall):7.3f} s   CPU median "
              f"{statistics.median(cpu):7.3f} s   wall runs {np.round(wall, 3).tolist()}")
    line = f"AIS objects {found} (truth {int(labels.max())})"
    if args.amg_repeats > 0:
        line += f"; AMG / AIS wall = {statistics.median(rows[-1][1][0]) / statistics.median(ais[0]):.1f}x"
    print(f"{line}; load {load_average()}")


def compare(args: argparse.Namespace) -> None:
    """Alternate child runs of the other checkout's code and this one's; print the stages."""
    here = Path(__file__).resolve()
    sides = {"before": str(Path(args.compare).resolve()), "after": str(here.parents[1] / "src")}
    command = [sys.executable, str(here), "--json", "--side", str(args.side), "--repeats",
               str(args.repeats), "--threads", str(args.threads), "--amg-repeats", "0"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    say(f"before = {sides['before']}, after = {sides['after']}, load {load_average()}")
    for round_ in range(args.rounds):
        for side, src in sides.items():
            env = {**os.environ, "PYTHONPATH": src}
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        say(f"round {round_ + 1}/{args.rounds} done, load {load_average()}")
    stages = [k for k in runs["after"][0] if k != "objects"]
    print(f"{'stage':20s} {'before wall':>11s} {'after wall':>10s} {'after/before':>12s} "
          f"{'before CPU':>10s} {'after CPU':>9s}")
    for stage in stages:
        wall = {s: statistics.median(r[stage][0] for r in runs[s]) for s in sides}
        cpu = {s: statistics.median(r[stage][1] for r in runs[s]) for s in sides}
        print(f"{stage:20s} {wall['before']:11.3f} {wall['after']:10.3f} "
              f"{wall['after'] / wall['before']:12.2f} {cpu['before']:10.3f} {cpu['after']:9.3f}")
    objects = {s: sorted({r["objects"] for r in runs[s]}) for s in sides}
    print(f"AIS objects before {objects['before']}, after {objects['after']}; load {load_average()}")


if __name__ == "__main__":
    main()
