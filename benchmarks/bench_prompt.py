"""Prompt latency on an encoded 768x1024 image: one point (multimask), one box, ten
boxes batched. Each figure covers what a user waits for: prompt in, bool masks at the
original size out (numpy), on both sides.

The "first point after set_image" row is the median latency of the first point prompt
after each of 5 ``set_image`` calls (images of 5 sizes near 768x1024, so that nothing
kept per image size is reused) on a new predictor, against the steady-state median of
the same prompt: a click right after encoding is the common case."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _common import Row, measure
from _data import centre, object_boxes, rgb_image
from _models import BenchModel

IMAGE_SHAPE = (768, 1024)
POINT_TARGET_MS = 30.0
#: image sizes of the first-prompt row: near IMAGE_SHAPE, none equal to it or to another
FIRST_PROMPT_SHAPES = ((760, 1016), (772, 1024), (768, 1012), (756, 1000), (780, 1020))
#: the first prompt after set_image may cost this much more than the steady state
FIRST_PROMPT_MARGIN_MS = 5.0


def _official_calls(pred: Any, point: list[float], boxes: np.ndarray) -> dict[str, Any]:
    def point_call() -> Any:
        return pred.predict(point_coords=np.array([point]), point_labels=np.array([1]),
                            multimask_output=True)

    def box_call() -> Any:
        return pred.predict(box=boxes[0], multimask_output=False)

    def boxes_call() -> Any:
        t = torch.as_tensor(boxes, dtype=torch.float32)
        t = pred.transform.apply_boxes_torch(t, pred.original_size)
        masks, scores, low = pred.predict_torch(None, None, boxes=t, multimask_output=False)
        return masks.numpy(), scores.numpy(), low.numpy()

    return {"point": point_call, "box": box_call, "10 boxes": boxes_call}


def _our_calls(pred: Any, point: list[float], boxes: np.ndarray) -> dict[str, Any]:
    return {
        "point": lambda: pred.predict(points=[point], labels=[1], multimask_output=True),
        "box": lambda: pred.predict(bboxes=boxes[0]),
        "10 boxes": lambda: pred.predict(bboxes=boxes),
    }


def run(models: list[BenchModel], official: bool, repeats: int, dtype: str | None = None) -> list[Row]:
    """Median latency in ms of each prompt kind, per model."""
    from napari_samscope.core.predict.predictor import Predictor

    image, labels = rgb_image(*IMAGE_SHAPE)
    boxes = object_boxes(labels, 10)
    point = centre(labels, boxes[0])
    rows: list[Row] = []
    for model in models:
        ours = Predictor(model.sam, dtype=dtype)
        ours.set_image(image)
        our_calls = _our_calls(ours, point, boxes)
        official_calls: dict[str, Any] = {}
        if official:
            import _official

            off = _official.predictor(
                _official.build_official(model.config, model.state_dict()),
                model.config.encoder_type,
            )
            if off is not None:
                off.set_image(image)
                official_calls = _official_calls(off, point, boxes)
        label = "fp32" if dtype is None else dtype
        for kind, call in our_calls.items():
            mine = measure(call, repeats, warmup=3)
            theirs = measure(official_calls[kind], repeats, warmup=3) if kind in official_calls else None
            target = met = None
            if kind == "point":
                target = f"<= {POINT_TARGET_MS:.0f} ms"
                met = mine.median * 1000 <= POINT_TARGET_MS
            rows.append(Row(
                "prompt", f"{model.name} {kind} ({label})", mine.median * 1000, "ms",
                theirs.median * 1000 if theirs else None, target=target or "", met=met,
                spread=f"{min(mine.runs) * 1000:.1f}-{max(mine.runs) * 1000:.1f}",
                extra={"model": model.key},
            ))
        rows.append(_first_prompt_row(model, dtype, label, repeats))
    return rows


def _first_prompt_row(model: BenchModel, dtype: str | None, label: str, repeats: int) -> Row:
    """Median of the first point prompt after each ``set_image`` against the steady state."""
    from napari_samscope.core.predict.predictor import Predictor

    predictor = Predictor(model.sam, dtype=dtype)
    firsts = []
    for shape in FIRST_PROMPT_SHAPES:
        image, labels = rgb_image(*shape, seed=len(firsts) + 1)
        point = centre(labels, object_boxes(labels, 1)[0])
        predictor.set_image(image)
        first = measure(_our_calls(predictor, point, np.zeros((1, 4)))["point"], 1, warmup=0)
        firsts.append(first.median * 1000)
    steady = measure(_our_calls(predictor, point, np.zeros((1, 4)))["point"], repeats, warmup=3)
    first_ms, steady_ms = float(np.median(firsts)), steady.median * 1000
    print(
        f"{model.name} ({label}): first point after set_image {first_ms:.1f} ms (median of "
        f"{', '.join(f'{v:.1f}' for v in firsts)}), steady state {steady_ms:.1f} ms, "
        f"difference {first_ms - steady_ms:+.1f} ms",
        flush=True,
    )
    return Row(
        "prompt", f"{model.name} first point after set_image ({label})", first_ms, "ms",
        target=f"<= steady + {FIRST_PROMPT_MARGIN_MS:.0f} ms",
        met=first_ms - steady_ms <= FIRST_PROMPT_MARGIN_MS,
        note=f"steady {steady_ms:.1f} ms, difference {first_ms - steady_ms:+.1f} ms",
        spread=f"{min(firsts):.1f}-{max(firsts):.1f}",
        extra={"model": model.key},
    )
