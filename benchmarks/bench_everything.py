"""Segment everything (32x32 grid) against the official automatic mask generator:
time, and how many of the official masks ours reproduces (IoU >= 0.9).

Random weights give SAM masks that cover nearly the whole image and are unstable, so
the official default thresholds (0.88 predicted IoU, 0.95 stability) keep few or none.
Timings are therefore taken with the default thresholds (what users run), and the mask
agreement is also checked on a configuration that keeps many masks: thresholds
lowered to 0 **on both sides** and box NMS off, on a 16x16 grid. When the trained
default model is installed, its masks (default thresholds) are compared as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import Row, measure, say
from _data import rgb_image
from _models import BenchModel

IMAGE_SHAPE = (768, 1024)  # 1024 wide, 768 high
RATIO_TARGET = 0.25
MATCH_TARGET = 0.95
MATCH_IOU = 0.9
RSS_TARGET_MB = 4096.0
LOW_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def _ours(model: BenchModel, dtype: str | None, **params: Any) -> Any:
    from napari_samscope.core.everything.generator import MaskGenerator
    from napari_samscope.core.predict.predictor import Predictor

    return MaskGenerator(Predictor(model.sam, dtype=dtype), **params)


def _boxes_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def matched_fraction(reference: list[dict[str, Any]], ours: Any) -> tuple[float, int, int]:
    """Fraction of ``reference`` masks (official records) matched by one of ``ours``
    at mask IoU >= 0.9; also the two mask counts. 1.0 when there are none."""
    if not reference:
        return 1.0, 0, len(ours)
    our_boxes = _boxes_xyxy([r.bbox for r in ours]) if len(ours) else np.zeros((0, 4))
    our_masks: dict[int, np.ndarray] = {}
    hits = 0
    for ref in reference:
        mask = ref["segmentation"]
        x0, y0, x1, y1 = _boxes_xyxy(ref["bbox"])[0]
        overlap = (our_boxes[:, 0] <= x1) & (our_boxes[:, 2] >= x0) & (our_boxes[:, 1] <= y1) & (
            our_boxes[:, 3] >= y0
        )
        area = mask.sum()
        for j in np.flatnonzero(overlap):
            if j not in our_masks:
                our_masks[j] = ours[int(j)].mask
            other = our_masks[j]
            inter = np.logical_and(mask, other).sum()
            union = area + other.sum() - inter
            if union and inter / union >= MATCH_IOU:
                hits += 1
                break
    return hits / len(reference), len(reference), len(ours)


def _official_generator(model: BenchModel, **params: Any) -> Any:
    import _official

    sam = _official.build_official(model.config, model.state_dict())
    return _official.mask_generator(sam, model.config.encoder_type, **params)


def run(models: list[BenchModel], official: bool, repeats: int, dtypes: list[str | None]) -> list[Row]:
    image, _ = rgb_image(*IMAGE_SHAPE)
    rows: list[Row] = []
    for model in models:
        off = _official_generator(model) if official else None
        theirs = official_records = None
        if off is not None:
            say(f"{model.name}: official automatic mask generator")
            official_records = off.generate(image)  # also the warm-up
            theirs = measure(lambda g=off: g.generate(image), max(1, repeats - 1), warmup=0)
        for dtype in dtypes:
            label = "fp32" if dtype is None else "bf16"
            say(f"{model.name}: ours {label}")
            gen = _ours(model, dtype)
            result = gen.generate(image)
            mine = measure(lambda g=gen: g.generate(image), max(1, repeats - 1), warmup=0)
            ratio = mine.median / theirs.median if theirs else None
            row = Row(
                "everything", f"{model.name} 32x32 grid {label}", mine.median, "s",
                theirs.median if theirs else None,
                target=f"ratio <= {RATIO_TARGET}" if model.key == "vit_b" else "",
                met=(ratio <= RATIO_TARGET) if (ratio is not None and model.key == "vit_b") else None,
                spread=mine.spread, note=f"{len(result)} masks, default thresholds",
                extra={"model": model.key, "dtype": label},
            )
            rows.append(row)
            if official_records is not None:
                rows.append(_match_row(model, label, official_records, result, "32x32, default thresholds"))
        if off is not None and model.key == "vit_b":
            # many masks: thresholds lowered equally on both sides, no box NMS
            say(f"{model.name}: mask agreement with lowered thresholds")
            off_low = _official_generator(model, points_per_side=16, **LOW_THRESHOLDS)
            reference = off_low.generate(image)
            for dtype in dtypes:
                label = "fp32" if dtype is None else "bf16"
                result = _ours(model, dtype, points_per_side=16, **LOW_THRESHOLDS).generate(image)
                rows.append(_match_row(model, label, reference, result,
                                       "16x16, thresholds 0 and NMS off on both sides"))
        del off
    return rows


def _match_row(model: BenchModel, label: str, reference: list, result: Any, what: str) -> Row:
    fraction, n_ref, n_ours = matched_fraction(reference, result)
    judged = n_ref > 0
    return Row(
        "everything", f"{model.name} official masks matched {label}", fraction, "fraction",
        target=f">= {MATCH_TARGET} at IoU >= {MATCH_IOU}",
        met=(fraction >= MATCH_TARGET) if judged else None,
        note=f"{what}; official {n_ref} masks, ours {n_ours}" + ("" if judged else " (vacuous)"),
        extra={"model": model.key, "dtype": label},
    )


# ---------------------------------------------------------------------- peak memory

def peak_rss(models: list[BenchModel], official: bool, side: int = 4096,
             official_cap_gb: float = 12.0) -> list[Row]:
    """Peak RSS of segment-everything on a ``side x side`` image, each in a fresh process."""
    rows = []
    image = Path(tempfile.gettempdir()) / f"samscope_bench_rgb_{side}.npy"
    if not image.exists():
        say(f"writing the {side} x {side} test image once")
        _probe("prepare", "-", side, image=image)
    for model in models:
        say(f"{model.name}: peak memory, {side} x {side}")
        mine = _probe("ours", model.key, side, image=image)
        theirs = None
        if official:
            import _official

            if _official.supports(model.config):
                theirs = _probe("official", model.key, side, official_cap_gb, image=image)
        note = (f"{mine.get('masks', '?')} masks in {mine.get('seconds', 0):.0f} s; "
                f"{mine.get('before_run_mb', '?')} MB before the run (model and image)")
        official_mb = None
        if theirs is not None:
            if "error" in theirs:
                note += f"; official failed under a {official_cap_gb:.0f} GB address-space cap: " + theirs["error"]
            else:
                official_mb = theirs["maxrss_mb"]
        judged = "maxrss_mb" in mine
        rows.append(Row(
            "memory", f"{model.name} everything {side}x{side} peak RSS",
            mine.get("maxrss_mb"), "MB", official_mb, target=f"<= {RSS_TARGET_MB:.0f} MB",
            met=(mine["maxrss_mb"] <= RSS_TARGET_MB) if judged else None,
            note=note if judged else mine.get("error", ""),
        ))
    return rows


def _probe(side_name: str, model_key: str, size: int, cap_gb: float | None = None,
           image: Path | None = None) -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, str(here / "_rss_probe.py"), side_name, model_key, str(size)]
    if cap_gb:
        cmd += ["--cap-gb", str(cap_gb)]
    if image is not None:
        cmd += ["--image", str(image)]
    env = {**os.environ, "PYTHONPATH": str(here) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])
