"""napari-side benchmark of the "Segment Anything" widget.

Measures, in a real napari viewer (under Xvfb when there is no display):

1. **prompt-to-preview latency**: from a point added to "SAM points" (as a click
   does) to the "SAM preview" layer showing the new mask, with the plane already
   encoded, on a ``--prompt-shape`` image (512x512 by default); median and 90th
   percentile over ``--repeats`` prompts. It includes napari's own work for the added
   point, the hand-off to the preview worker and back, reading the prompts, the
   decoder, upsampling, and writing the preview layer; the median of each of these
   stages is reported too (``stage_*``, see ``STAGES``). A model whose full decode
   takes several decoder passes (the default model: flip averaging, refined clicks)
   first shows a one-pass draft: ``prompt_to_draft_*`` times it, and the preview
   latency and stages are those of the full result (``--no-draft`` turns drafts off).
2. **longest event-loop stall while a stack is encoded**: a 5 ms ``QTimer``
   heartbeat runs on the GUI thread while "Precompute embeddings" encodes a stack in
   its worker; the longest gap between two heartbeats, minus the 5 ms period, is the
   longest time the GUI could not react. The same heartbeat is first run with nothing
   to do (``--idle`` seconds): on a loaded machine that baseline shows the stalls the
   operating system causes by itself.

Usage::

    xvfb-run -a python benchmarks/bench_napari.py            # default model if installed
    python benchmarks/bench_napari.py --model vit_t-random   # MobileSAM architecture, random weights
    python benchmarks/bench_napari.py --model path/to/ckpt.pt --planes 16 --json out.json

``vit_t-random`` times the real MobileSAM architecture (weights do not change the
timings). ``measure()`` returns the figures as a dict for other benchmark scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

HEARTBEAT_MS = 5


def _load_model(name: str) -> Any:
    from napari_samscope.core.modeling.build import build_sam
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models

    if name == "auto":
        installed = any(m.name == DEFAULT_MODEL and m.cached for m in list_models())
        name = DEFAULT_MODEL if installed else "vit_t-random"
    if name.endswith("-random"):
        return SAM.from_sam(build_sam(name.removesuffix("-random")).eval(), name, device="cpu")
    return SAM(name, device="cpu")


def _wait(app: Any, predicate: Any, timeout: float) -> bool:
    """Run the event loop until ``predicate()`` (False after ``timeout`` seconds).

    The loop sleeps until an event arrives, as napari's does while a user waits; a
    polling loop would keep part of a core and the GIL busy beside the very worker whose
    result it waits for. A 10 ms timer wakes it to check ``predicate`` and the timeout.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    waker = QTimer()
    waker.start(10)
    end = time.perf_counter() + timeout
    try:
        while not predicate():
            if time.perf_counter() > end:
                return False
            app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
    finally:
        waker.stop()
    return True


#: Stages of one prompt-to-preview (medians reported): name -> (from mark, to mark).
STAGES = {
    "napari_add": ("start", "handler"),  # napari's own Points.add work before our handler
    "to_decoder": ("handler", "predict"),  # reading prompts, hand-off to the worker
    "decoder": ("predict", "predict_end"),  # Predictor.predict: decoder + upsampling
    "back_to_gui": ("predict_end", "show"),  # result waiting for the GUI thread
    "write_preview": ("show", "end"),  # writing the preview Labels layer
}


def _mark_calls(owner: Any, name: str, marks: dict[str, float], mark: str) -> None:
    """Record in ``marks[mark]`` when ``owner.name`` is first called (per prompt)."""
    stock = getattr(owner, name)

    def marked(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault(mark, time.perf_counter())
        return stock(*args, **kwargs)

    setattr(owner, name, marked)


def _preview_idle(widget: Any) -> bool:
    timer = getattr(widget, "_timer", None)  # older widgets debounced with a QTimer
    return not widget.preview_runner.busy and not (timer is not None and timer.isActive())


def measure(
    model: str = "auto", repeats: int = 30, planes: int = 8, size: int = 512, idle_s: float = 10.0,
    prompt_shape: tuple[int, int] = (512, 512), drafts: bool = True, zoom: Any = None,
) -> dict[str, Any]:
    """Run both measurements; returns a dict of figures (milliseconds)."""
    import numpy as np
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d

    sam = _load_model(model)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
        widget.set_model(sam)
        if not drafts:
            widget.interactive.draft_decode_ms = 0
        if zoom is not None:
            widget.session.set_zoom(zoom)
        image, truth = make_nuclei_2d(tuple(prompt_shape), dtype="uint16", seed=3)
        layer = viewer.add_image(image, name="nuclei")
        _wait(app, lambda: widget.points_layer is not None, 30)
        points = widget.points_layer
        centres = [np.argwhere(truth == i).mean(0) for i in np.unique(truth)[1:]]
        updated: list[float] = []
        widget.preview_updated.connect(lambda: updated.append(time.perf_counter()))
        drafted: list[float] = []  # when a draft was drawn (the full result follows)
        drafted_signal = getattr(widget, "preview_drafted", None)
        if drafted_signal is not None:
            drafted_signal.connect(lambda: drafted.append(time.perf_counter()))
        to_draft: list[float] = []
        # stage marks of the current prompt: the widget's prompt handler is reached, the
        # decoder starts and ends, the preview starts being written
        marks: dict[str, float] = {}
        _mark_calls(widget.wiring, "_on_change", marks, "handler")
        _mark_calls(widget, "_show_preview", marks, "show")

        def prompt(rc: Any, timeout: float = 600) -> float:
            count, drafts_before = len(updated), len(drafted)
            marks.clear()
            start = marks["start"] = time.perf_counter()
            points.add(np.asarray(rc, float)[None])
            if not _wait(app, lambda: len(updated) > count and not widget.preview_runner.busy,
                         timeout):
                raise RuntimeError("the preview did not update")
            if len(drafted) > drafts_before:
                to_draft.append((drafted[drafts_before] - start) * 1000.0)
            return (updated[-1] - start) * 1000.0

        # time spent in the decoder (predict) during each preview, to separate the
        # widget's own cost from the model's
        predictor = widget.session.predictor
        zoom_used = getattr(predictor, "zoom", None)
        decoder_ms: list[float] = []
        stock_predict = predictor.predict

        def timed_predict(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("draft"):  # the draft is timed as prompt_to_draft
                return stock_predict(*args, **kwargs)
            start = time.perf_counter()
            marks.setdefault("predict", start)
            try:
                return stock_predict(*args, **kwargs)
            finally:
                marks["predict_end"] = time.perf_counter()
                decoder_ms.append((marks["predict_end"] - start) * 1000.0)

        predictor.predict = timed_predict
        first = prompt(centres[0])  # encodes the plane
        to_draft.clear()
        widget.clear_prompts()
        _wait(app, lambda: _preview_idle(widget), 60)
        latencies, decoder, overhead = [], [], []
        stages: dict[str, list[float]] = {name: [] for name in STAGES}
        for i in range(repeats):
            decoder_ms.clear()
            latencies.append(prompt(centres[(i + 1) % len(centres)], 60))
            marks["end"] = updated[-1]
            for name, (a, b) in STAGES.items():
                if a in marks and b in marks:
                    stages[name].append((marks[b] - marks[a]) * 1000.0)
            decoder.append(sum(decoder_ms))
            overhead.append(latencies[-1] - decoder[-1])
            widget.clear_prompts()
            _wait(app, lambda: _preview_idle(widget), 60)
        predictor.predict = stock_predict

        viewer.layers.remove(layer)
        volume, _ = make_nuclei_3d((planes, size, size), seed=3)
        viewer.add_image(volume, name="stack")
        _wait(app, lambda: widget.image_layer is not None and widget.image_layer.name == "stack", 10)
        clock, gaps = QElapsedTimer(), []
        clock.start()
        last = [clock.elapsed()]

        def beat() -> None:
            now = clock.elapsed()
            gaps.append(now - last[0])
            last[0] = now

        heartbeat = QTimer()
        heartbeat.setInterval(HEARTBEAT_MS)
        heartbeat.timeout.connect(beat)
        heartbeat.start()
        # the same heartbeat with nothing running: the machine's own scheduling noise
        if idle_s > 0:
            _wait(app, lambda: False, idle_s)
        idle_gaps, gaps[:] = sorted(gaps), []
        last[0] = clock.elapsed()
        before = len(widget.session.cache)
        started = time.perf_counter()
        widget.precompute()
        _wait(app, lambda: not widget.runner.busy, 3600)
        encode_s = time.perf_counter() - started
        heartbeat.stop()
        cached = len(widget.session.cache) - before
    finally:
        viewer.close()
    gaps.sort()
    return {
        "model": sam.name,
        "zoom": zoom_used,
        "prompt_image_shape": "x".join(str(int(s)) for s in prompt_shape),
        "first_prompt_with_encoding_ms": round(first, 1),
        "prompt_to_preview_median_ms": round(statistics.median(latencies), 1),
        "prompt_to_preview_p90_ms": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 1),
        "prompt_to_draft_median_ms": round(statistics.median(to_draft), 1) if to_draft else None,
        "prompt_to_draft_p90_ms": round(sorted(to_draft)[int(0.9 * (len(to_draft) - 1))], 1)
        if to_draft else None,
        "prompts_with_draft": len(to_draft),
        "decoder_in_preview_median_ms": round(statistics.median(decoder), 1),
        "widget_overhead_median_ms": round(statistics.median(overhead), 1),
        **{f"stage_{name}_median_ms": round(statistics.median(v), 1) if v else None
           for name, v in stages.items()},
        "repeats": repeats,
        "stack_planes": planes,
        "stack_plane_size": size,
        "stack_encoding_s": round(encode_s, 2),
        "planes_cached": cached,
        "longest_stall_ms": max(0, gaps[-1] - HEARTBEAT_MS) if gaps else None,
        "stall_p99_ms": max(0, gaps[int(0.99 * (len(gaps) - 1))] - HEARTBEAT_MS) if gaps else None,
        "heartbeats": len(gaps),
        "idle_longest_stall_ms": max(0, idle_gaps[-1] - HEARTBEAT_MS) if idle_gaps else None,
        "idle_seconds": idle_s,
        "cpu_threads": __import__("torch").get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="auto",
                        help="registry name, checkpoint path, or <arch>-random (default: the "
                             "project default model if installed, else vit_t-random)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--prompt-shape", default="512x512",
                        help="rows x columns of the image of the latency measurement (512x512)")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds of heartbeat with nothing running, as a baseline")
    parser.add_argument("--no-draft", action="store_true",
                        help="no draft before the full result (as before drafts existed)")
    parser.add_argument("--zoom", help="the session's zoom: auto, off, 2, 4 (default: the session's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux") and not os.environ.get(
            "SAMSCOPE_BENCH_NO_XVFB"):
        if shutil.which("xvfb-run"):
            os.environ["SAMSCOPE_BENCH_NO_XVFB"] = "1"
            os.execvp("xvfb-run", ["xvfb-run", "-a", sys.executable, *sys.argv])
        print("No display: run under xvfb-run.", file=sys.stderr)
        return 2
    try:
        shape = tuple(int(v) for v in args.prompt_shape.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 64:
        parser.error(f"--prompt-shape must look like 512x512 (at least 64 each), not {args.prompt_shape!r}")
    figures = measure(args.model, args.repeats, args.planes, args.size, args.idle, shape,
                      drafts=not args.no_draft, zoom=args.zoom)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
