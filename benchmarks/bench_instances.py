"""Automatic instance segmentation (AIS) against micro-sam, and against segment-everything.

Rows (medians of ``--repeats`` runs, same process, same image; ``--warmup`` runs first):

1. AIS with a ViT-B SAM and a UNETR decoder (random weights, the decoder's last layer
   scaled so the maps spread over [0, 1]), end to end on a 1024x1024 RGB image: encoding,
   decoder, post-processing. Ours in float32 and in the model's default dtype (bf16 where
   the CPU computes it natively, as ``SAM("vit_b")`` runs), vs micro-sam's
   ``InstanceSegmentationWithDecoder.initialize`` + ``generate`` on the same checkpoint
   (run in ``$SAMSCOPE_MICROSAM_PYTHON`` with the same number of torch threads).
   Target: ours / micro-sam <= 0.7.
2. AIS vs segment-everything (32x32 grid, official thresholds) with the same model and
   dtype. Target: AIS >= 10x faster.

Usage: ``PYTHONPATH=src python benchmarks/bench_instances.py [--repeats 3] [--side 1024]``.
The figures depend on what else runs on the machine: quote medians with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from _common import load_average, measure, say

MICROSAM_TIMER = '''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[3]))
from micro_sam.instance_segmentation import (
    InstanceSegmentationWithDecoder, get_predictor_and_decoder,
)
predictor, decoder = get_predictor_and_decoder("vit_b", sys.argv[1], device="cpu")
image = np.load(sys.argv[2])
segmenter = InstanceSegmentationWithDecoder(predictor, decoder)
runs, count = [], 0
warmup = int(sys.argv[5])
for i in range(int(sys.argv[4]) + warmup):
    start = time.perf_counter()
    segmenter.initialize(image)
    labels = segmenter.generate()
    if i >= warmup:
        runs.append(time.perf_counter() - start)
    count = int(labels.max())
print(json.dumps({"runs": runs, "objects": count}))
'''


def random_checkpoint(path: Path) -> None:
    from napari_samscope.core.instances.decoder import UNETRDecoder
    from napari_samscope.core.modeling.build import ARCHITECTURES, build_sam

    torch.manual_seed(0)
    sam = build_sam(ARCHITECTURES["vit_b"]).eval()
    decoder = UNETRDecoder(conv_transpose=True).eval()
    with torch.no_grad():
        captured = []
        hook = decoder.out_conv.register_forward_hook(lambda m, i, out: captured.append(out))
        decoder(torch.randn(1, 256, 64, 64))
        hook.remove()
        decoder.out_conv.weight.mul_(3.0 / float(captured[0].std()))
    torch.save({"model_state": {"sam." + k: v for k, v in sam.state_dict().items()},
                "decoder_state": decoder.state_dict()}, path)


def microsam_runs(checkpoint: Path, image: np.ndarray, repeats: int, warmup: int) -> dict | None:
    python = os.environ.get("SAMSCOPE_MICROSAM_PYTHON")
    if not python:
        say("SAMSCOPE_MICROSAM_PYTHON is not set: no micro-sam reference")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", image)
        (Path(tmp) / "timer.py").write_text(textwrap.dedent(MICROSAM_TIMER))
        result = subprocess.run(
            [python, str(Path(tmp) / "timer.py"), str(checkpoint), str(Path(tmp) / "image.npy"),
             str(torch.get_num_threads()), str(repeats), str(warmup)],
            capture_output=True, text=True, check=True,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amg-repeats", type=int, default=1)
    parser.add_argument("--dtypes", default="float32,auto",
                        help="our dtypes to time, comma-separated (float32, auto)")
    parser.add_argument("--amg-dtypes", default="float32",
                        help="dtypes for the segment-everything row")
    args = parser.parse_args()

    from _data import rgb_image

    from napari_samscope import SAM

    image, _labels = rgb_image(args.side, args.side, seed=0)
    say(f"torch threads {torch.get_num_threads()}, load average {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "vit_b_random_microsam_format.pt"
        random_checkpoint(checkpoint)
        requests = {"float32": None, "auto": "auto"}
        models = {name: SAM(str(checkpoint), device="cpu", dtype=requests[name])
                  for name in args.dtypes.split(",") if name}
        ais = {}
        for name, model in models.items():
            say(f"ours AIS ({name}) ...")
            ais[name] = measure(lambda m=model: m.segment_instances(image), args.repeats, args.warmup)
            say(f"ours AIS ({name}): median {ais[name].median:.2f} s, runs {ais[name].runs}")
        say("micro-sam AIS ...")
        theirs = microsam_runs(checkpoint, image, args.repeats, args.warmup)
        load_after = load_average()
        if theirs is not None:
            reference = float(np.median(theirs["runs"]))
            say(f"micro-sam AIS: median {reference:.2f} s, runs {theirs['runs']}")
            for name, timing in ais.items():
                rows.append((f"AIS vit_b {args.side}^2, ours ({name}) / micro-sam",
                             timing.median, reference, timing.median / reference, "<= 0.7"))
        for name in [n for n in args.amg_dtypes.split(",") if n]:
            model = models[name]
            say(f"ours AMG 32x32 ({name}) ...")
            amg = measure(lambda m=model: m(image), args.amg_repeats, args.warmup)
            say(f"ours AMG ({name}): median {amg.median:.2f} s, runs {amg.runs}")
            rows.append((f"AMG 32x32 / AIS, vit_b {args.side}^2 ({name})",
                         amg.median, ais[name].median, amg.median / ais[name].median, ">= 10"))
    print()
    print(f"load average after the AIS rows: {load_after}; at the end: {load_average()}")
    print("| row | seconds | reference s | ratio | target |")
    print("|---|---|---|---|---|")
    for label, ours, ref, ratio, target in rows:
        print(f"| {label} | {ours:.2f} | {ref:.2f} | {ratio:.2f} | {target} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
