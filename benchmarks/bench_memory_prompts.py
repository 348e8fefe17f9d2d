"""Peak memory of many box prompts on a large image.

Usage, from the repository root::

    python benchmarks/bench_memory_prompts.py                  # 2,000 boxes on 4096 x 4096
    python benchmarks/bench_memory_prompts.py --boxes 300 --eager-boxes 50

Each figure is measured in a fresh process (``ru_maxrss``): a tiny random SAM of the real
architecture (input 1024, so the logits are 256 x 256 as in the official models) encodes a
random 8-bit RGB image, ``Predictor.predict`` decodes one box per object, then the
prediction's areas, boxes and label image are made. The compact form keeps the logits
and makes each mask only while it is painted; the ``eager`` row forces the full-size
masks of every object (the behaviour for few objects), on fewer boxes, to show what each
box would cost that way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET_MB = 2048.0


def probe(size: int, boxes: int, eager: bool, threads: int) -> dict:
    """One measurement in this process (run it in a fresh one)."""
    import numpy as np
    import torch
    from _common import peak_rss_mb

    torch.set_num_threads(threads)
    from napari_samscope.core.modeling.build import build_sam
    from napari_samscope.core.modeling.config import tiny_config
    from napari_samscope.core.predict import results
    from napari_samscope.core.predict.predictor import Predictor

    if eager:
        results.EAGER_MASK_BYTES = 1 << 62
    torch.manual_seed(0)
    sam = build_sam(tiny_config("vit", 1024)).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size - 16, (boxes, 2))
    prompts = np.concatenate([xy, xy + rng.uniform(6, 16, (boxes, 2))], axis=1)
    predictor = Predictor(sam)
    predictor.set_image(image)
    before = peak_rss_mb()
    start = time.perf_counter()
    prediction = predictor.predict(bboxes=prompts)
    after_predict = peak_rss_mb()
    predicted = time.perf_counter() - start
    labels = prediction.to_label_image()
    areas = prediction.areas
    return {
        "boxes": boxes,
        "size": size,
        "compact": prediction.is_compact,
        "before_predict_mb": round(before, 1),
        "after_predict_mb": round(after_predict, 1),
        "peak_mb": round(peak_rss_mb(), 1),
        "predict_s": round(predicted, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "labelled_fraction": round(float((labels > 0).mean()), 3),
        "median_area": int(np.median(areas)),
    }


def _in_child(size: int, boxes: int, eager: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", "--size", str(size), "--boxes", str(boxes),
           "--threads", str(threads)] + (["--eager"] if eager else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(size: int = 4096, boxes: int = 2000, eager_boxes: int = 50, threads: int = 1) -> list:
    """The benchmark rows: compact ``boxes`` and eager ``eager_boxes`` on a ``size``² image."""
    from _common import Row

    rows = []
    compact = _in_child(size, boxes, False, threads)
    rows.append(Row(
        "memory", f"{boxes} boxes, {size}x{size}, predict + label image (peak RSS)",
        compact.get("peak_mb"), "MB", target=f"< {TARGET_MB:.0f} MB",
        met=None if "peak_mb" not in compact else compact["peak_mb"] < TARGET_MB,
        note=json.dumps(compact), extra=compact,
    ))
    if eager_boxes:
        eager = _in_child(size, eager_boxes, True, threads)
        per_box = None
        if "peak_mb" in eager:
            per_box = (eager["peak_mb"] - eager["before_predict_mb"]) / eager_boxes
        rows.append(Row(
            "memory", f"{eager_boxes} boxes, {size}x{size}, full-size masks held (peak RSS)",
            eager.get("peak_mb"), "MB",
            note=f"{per_box:.1f} MB per box" if per_box else json.dumps(eager), extra=eager,
        ))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--boxes", type=int, default=2000)
    parser.add_argument("--eager-boxes", type=int, default=50, help="0: skip the eager row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.size, args.boxes, args.eager, args.threads)))
        return 0
    from _common import text_table

    rows = run(args.size, args.boxes, args.eager_boxes, args.threads)
    print(text_table(rows))
    for row in rows:
        print(f"{row.workload}: {row.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
