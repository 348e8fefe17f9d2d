"""Fresh pages: what page faults cost the CPU encoder, and what reusing freed memory saves.

    python benchmarks/bench_host_memory.py [--compare OLD_SRC] [--rounds 5] [--threads 2]

Each side runs in its own child process (glibc's malloc thresholds are a setting of the
whole process), and the sides alternate for ``--rounds`` rounds so that they share the
machine's load. A side loads the default model (bf16 autocast where the CPU has it), then
times ``set_image`` of a 512x512 uint16 nuclei image with the model's default ``flips``
(median of ``--repeats``, after two untimed ones) and automatic instance segmentation of
the same image, and reports the page faults per ``set_image`` and the resident memory at
the end. Sides:

- ``before``: the code in ``OLD_SRC`` (with ``--compare``), glibc's own thresholds;
- ``default``: this checkout, ``SAMSCOPE_HOST_MALLOC=default`` (glibc's own thresholds);
- ``keep``: this checkout, ``SAMSCOPE_HOST_MALLOC=keep`` (``core.host_memory``).

Figures and their reading: benchmarks/RESULTS.md, "Fresh pages".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import load_average, nuclei_prompts, say


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    import torch

    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor

    torch.set_num_threads(args.threads)
    image, _, _ = nuclei_prompts()
    model = SAM()
    predictor = Predictor(model)
    for _ in range(2):
        predictor.set_image(image)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    encode = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.set_image(image)
        encode.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.repeats
    model.segment_instances(image, mode="ais")
    ais = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        found = model.segment_instances(image, mode="ais")
        ais.append(time.perf_counter() - start)
    print(json.dumps({
        "set_image_ms": statistics.median(encode) * 1e3, "faults": faults,
        "ais_ms": statistics.median(ais) * 1e3, "rss_mb": _rss_mb(),
        "objects": int(found.max()), "flips": predictor.flips, "dtype": str(model.dtype),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default=None, help="src folder of the code to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    here = Path(__file__).resolve()
    src = str(here.parents[1] / "src")
    sides = {"default": (src, "default"), "keep": (src, "keep")}
    if args.compare:
        sides = {"before": (str(Path(args.compare).resolve()), "default"), **sides}
    command = [sys.executable, str(here), "--child", "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    say(f"sides {sides}, load {load_average()}")
    for round_ in range(args.rounds):
        for side, (path, malloc) in sides.items():
            env = {**os.environ, "PYTHONPATH": path, "SAMSCOPE_HOST_MALLOC": malloc}
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        say(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{side} {runs[side][-1]['set_image_ms']:.0f} ms" for side in sides))
    first = runs[next(iter(sides))]
    print(f"dtype {first[0]['dtype']}, flips {first[0]['flips']}, {args.threads} threads, "
          f"medians over {args.rounds} rounds of {args.repeats}; load {load_average()}")
    print("| side | set_image (ms) | page faults per set_image | AIS (ms) | resident (MB) "
          "| set_image / first side |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(r["set_image_ms"] for r in first)
    for side in sides:
        med = {k: statistics.median(r[k] for r in runs[side])
               for k in ("set_image_ms", "faults", "ais_ms", "rss_mb")}
        print(f"| {side} | {med['set_image_ms']:.0f} | {med['faults']:.0f} | "
              f"{med['ais_ms']:.0f} | {med['rss_mb']:.0f} | {med['set_image_ms'] / base:.2f} |")
    objects = {side: sorted({r["objects"] for r in runs[side]}) for side in sides}
    print(f"AIS objects per side: {objects}")


if __name__ == "__main__":
    main()
