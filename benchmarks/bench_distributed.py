"""``auto_annotate`` on a dask LocalCluster: throughput with 1 and 2 single-threaded
workers, and the per-task overhead of the distributed path against the in-process run
on one thread.

    python benchmarks/bench_distributed.py                 # 40 images of 512 x 512, 3 repeats
    python benchmarks/bench_distributed.py --images 8 --side 256 --repeats 1   # a quick look

Every figure is the median of ``--repeats`` runs after a warm-up on 4 other images;
each run re-annotates the whole folder (``overwrite=True``). The clusters are started before the
timings and kept warm between runs (each worker has loaded the model once), so the
figures compare steady-state annotation, not start-up. The load average is printed at
the start and at the end: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import load_average, measure, say

SPEEDUP_TARGET = 1.6  # 2 workers / 1 worker, throughput
OVERHEAD_TARGET = 0.10  # distributed on 1 worker vs in-process on 1 thread, per task


def _write_images(folder: Path, count: int, side: int) -> None:
    from PIL import Image

    from napari_samscope.core.synthetic import make_nuclei_2d

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = make_nuclei_2d((side, side), seed=1000 + i)
        Image.fromarray(image).save(folder / f"img{i:03d}.png")


def _in_process(folder: Path, out: Path, model: str | None, warm: Path):
    from napari_samscope.core.datasets.annotate import auto_annotate
    from napari_samscope.core.predict.resolve import as_predictor

    predictor = as_predictor(model, device="cpu")  # loaded once, as a worker keeps it

    def annotate(data: Path = folder) -> None:
        auto_annotate(data, sam_model=predictor, device="cpu", output_dir=out, overwrite=True,
                      progress=None, verbose=False)

    annotate(warm)
    return annotate


def _on_cluster(folder: Path, out: Path, model: str | None, address: str, warm: Path):
    from napari_samscope.distributed import auto_annotate

    def annotate(data: Path = folder) -> None:
        auto_annotate(data, sam_model=model, device="cpu", output_dir=out, overwrite=True,
                      progress=None, verbose=False, scheduler=address)

    annotate(warm)  # every worker loads the model
    return annotate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the project default model")
    args = parser.parse_args()

    import torch

    from napari_samscope.distributed.cluster import start_local_cluster

    say(f"load average at start: {load_average()}; {os.cpu_count()} CPU cores")
    root = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    folder = root / "images"
    _write_images(folder, args.images, args.side)
    warm = root / "warm-up"
    _write_images(warm, 4, args.side)
    say(f"{args.images} images of {args.side} x {args.side} in {folder}")

    torch.set_num_threads(1)  # the in-process reference runs on one thread, as one worker does
    here = measure(_in_process(folder, root / "here", args.model, warm), args.repeats, warmup=0)
    say(f"in-process, 1 thread: {here.median:.2f} s (runs {here.spread})")

    timings = {}
    for workers in (1, 2):
        start = time.perf_counter()
        with start_local_cluster(workers, dashboard=False) as cluster:
            say(f"{workers} worker(s) started in {time.perf_counter() - start:.1f} s")
            run = _on_cluster(folder, root / f"w{workers}", args.model, cluster.scheduler_address, warm)
            timings[workers] = measure(run, args.repeats, warmup=0)
        say(f"{workers} worker(s): {timings[workers].median:.2f} s (runs {timings[workers].spread})")

    n = args.images
    one, two = timings[1].median, timings[2].median
    overhead = one / here.median - 1.0
    speedup = one / two
    print()
    print(f"images: {n} x {args.side}x{args.side}, model: {args.model or 'default'}, repeats: {args.repeats}")
    print(f"in-process (1 thread)      {here.median / n * 1000:8.1f} ms/image   {n / here.median:6.2f} images/s")
    print(f"dask, 1 worker             {one / n * 1000:8.1f} ms/image   {n / one:6.2f} images/s")
    print(f"dask, 2 workers            {two / n * 1000:8.1f} ms/image   {n / two:6.2f} images/s")
    print(f"speed-up 2 vs 1 workers    {speedup:8.2f} x     (target >= {SPEEDUP_TARGET})")
    print(f"overhead 1 worker vs here  {overhead * 100:+8.1f} %     (target <= {OVERHEAD_TARGET * 100:.0f} %)")
    say(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
