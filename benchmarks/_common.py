"""Shared helpers of the benchmark suite: timing, result rows, environment, tables."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs (after warm-up)."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> str:
        """``min-max`` in the unit of :attr:`median` (for the table)."""
        return f"{min(self.runs):.3g}-{max(self.runs):.3g}"


_START = time.perf_counter()


def say(message: str) -> None:
    """A progress line (the benchmark takes a while)."""
    print(f"[{time.perf_counter() - _START:7.1f} s]   {message}", flush=True)


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (``gc`` collected between)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeats)):
        gc.collect()
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return Timing(runs)


def repeats_and_threads(doc: str) -> Any:
    """The ``--repeats`` (default 7) and ``--threads`` (default 2) of a one-image
    benchmark script, parsed, with torch set to that many threads."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def nuclei_prompts(seed: int = 1) -> tuple[Any, Any, Any]:
    """A 512x512 uint16 synthetic nuclei image, the ``(N, 4)`` XYXY boxes of its nuclei
    (label order) and a point ``[x, y]`` at the centroid of the first one."""
    import numpy as np

    from napari_samscope.core.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((512, 512), dtype="uint16", seed=seed)
    boxes = []
    for i in (i for i in np.unique(labels) if i):
        rows, cols = np.nonzero(labels == i)
        boxes.append([cols.min(), rows.min(), cols.max(), rows.max()])
    rows, cols = np.nonzero(labels == np.unique(labels)[1])
    return image, np.asarray(boxes, dtype=np.float64), [float(cols.mean()), float(rows.mean())]


@dataclass
class Row:
    """One figure of the results table.

    ``ours`` / ``official`` are in ``unit``; ``ratio`` is ``ours / official``. ``target``
    is a human-readable target; ``met`` is True/False when it can be judged, else None.
    """

    section: str
    workload: str
    ours: float | None
    unit: str
    official: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    spread: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.official:
            return None
        return self.ours / self.official


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("s",):
        return f"{value:.2f}"
    if unit in ("ms",):
        return f"{value:.1f}"
    if unit in ("MB", "GB"):
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def status(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else "NOT met"


def markdown_table(rows: list[Row]) -> str:
    """The results as a Markdown table (one line per row)."""
    head = "| section | workload | ours | official | ratio | unit | runs (min-max) | target | status | note |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        lines.append(
            f"| {r.section} | {r.workload} | {fmt(r.ours, r.unit)} | {fmt(r.official, r.unit)} | "
            f"{ratio} | {r.unit} | {r.spread} | {r.target} | {status(r)} | {r.note} |"
        )
    return "\n".join(lines)


def text_table(rows: list[Row]) -> str:
    """The results as a fixed-width table for the terminal."""
    cols = ["section", "workload", "ours", "official", "ratio", "unit", "target", "status"]
    data = []
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        data.append([r.section, r.workload, fmt(r.ours, r.unit), fmt(r.official, r.unit), ratio,
                     r.unit, r.target, status(r)])
    widths = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(d, widths)) for d in data]
    return "\n".join(out)


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int, official: str | None) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    from napari_samscope.core.device import cpu_has_native_bf16

    return {
        "cpu": cpu_name(),
        "logical cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": threads,
        "native bf16": cpu_has_native_bf16(),
        "python": platform.python_version(),
        "official code": official or "not importable (absolute figures only)",
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (``ru_maxrss``)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
