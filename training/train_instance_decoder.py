"""Train the instance decoder (AIS) of a SAM checkpoint, by default ``samscope_nuclei``.

Usage (from the repository root; training/README.md, "The instance decoder", has the
figures of this exact command)::

    python training/train_instance_decoder.py --out training/runs/decoder --seed 20240615

The SAM model is frozen; the decoder (``core.training.instance_decoder``) learns the
foreground, centre-distance and boundary-distance maps of generated nuclei:

- ``--planes`` images rendered at 512x512 and upsampled 2x by the preprocessing (as the
  default model was trained at input 1024): 40% ``plain_nuclei_style``, 30%
  ``low_snr_style`` (both from ``train_default_model.py``; geometric outlines) and 30%
  ``realistic_nuclei_style`` (clumps, PSF tails, defocus, chromatin; half-contrast
  outlines);
- each plane encoded once (bfloat16), ``--steps`` steps on random 32x32-token crops.

Writes ``<out>/samscope_nuclei_decoder.pt`` (the format ``core.instances.load`` reads) and
``<out>/samscope_nuclei_decoder.pt.json`` (recipe, SAM checkpoint and its sha256, timings,
and AIS on the held-out images of ``samscope evaluate --synthetic N --seed 9000``). To ship
it, copy both into ``src/napari_samscope/models/`` and update ``SAMSCOPE_NUCLEI_DECODER_SIZE``
and ``SAMSCOPE_NUCLEI_DECODER_SHA256`` in ``core/weights/registry.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from train_default_model import low_snr_style, plain_nuclei_style

from napari_samscope.core.instances.decoder import UNETRDecoder
from napari_samscope.core.synthetic import realistic_nuclei_style, render_nuclei_2d
from napari_samscope.core.training.data import prepare_pair
from napari_samscope.core.training.instance_decoder import (
    DecoderTrainConfig,
    save_decoder,
    train_decoder_iter,
)
from napari_samscope.core.weights.download import file_sha256
from napari_samscope.core.weights.loader import load_sam

#: (style, share of the planes), drawn per plane in this order.
MIX = (("plain", 0.4), ("low_snr", 0.3), ("realistic", 0.3))
STYLES = {"plain": plain_nuclei_style, "low_snr": low_snr_style, "realistic": realistic_nuclei_style}
RENDER = 512
#: Seed of the held-out images (``samscope evaluate --synthetic N --seed 9000``); never trained on.
EVAL_SEED = 9000


def make_pool(n: int, img_size: int, rng: np.random.Generator) -> tuple[list, dict[str, int]]:
    """``n`` prepared planes of the mix, and how many of each style."""
    names = [name for name, _ in MIX]
    shares = np.array([share for _, share in MIX])
    samples, counts = [], dict.fromkeys(names, 0)
    while len(samples) < n:
        name = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        image, labels = render_nuclei_2d(STYLES[name](rng), (RENDER, RENDER), rng)
        sample = prepare_pair(image, labels, img_size, name=f"{name} {len(samples)}")
        if len(sample.ids):
            samples.append(sample)
            counts[name] += 1
    return samples, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="samscope_nuclei",
                        help="SAM checkpoint (registry name or file) whose encoder the decoder reads")
    parser.add_argument("--out", default="training/runs/decoder")
    parser.add_argument("--seed", type=int, default=20240615)
    parser.add_argument("--planes", type=int, default=160, help="training planes (each encoded once)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--features", default="64,32,16,8",
                        help="decoder widths, each half the one before (32,16,8,4 is faster)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--eval", type=int, default=10, metavar="N",
                        help="held-out images per set for the AIS figures in the sidecar (0: none)")
    args = parser.parse_args()
    if args.planes < 1:
        parser.error("--planes must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "a", buffering=1)
    loaded = load_sam(args.sam, device="cpu")
    sam = loaded.sam
    start = time.perf_counter()
    samples, counts = make_pool(args.planes, sam.img_size, np.random.default_rng(args.seed))
    render_s = time.perf_counter() - start
    print(f"pool of {len(samples)} planes {counts} in {render_s:.0f} s", file=log)
    try:
        features = tuple(int(v) for v in args.features.split(","))
        config = DecoderTrainConfig(steps=args.steps, seed=args.seed, features=features)
    except ValueError as error:
        parser.error(str(error))
    torch.manual_seed(config.seed)
    decoder = UNETRDecoder(embed_dim=int(sam.prompt_encoder.embed_dim), features=config.features)
    job = train_decoder_iter(sam, samples, config, decoder=decoder)
    losses: list[float] = []
    while True:
        try:
            report = next(job)
        except StopIteration as stop:
            result = stop.value
            break
        if report.message.startswith("training"):
            losses.append(report.info["loss"])
        if report.message.startswith("training") and report.done % 50 == 0:
            print(f"step {report.done}/{report.total} loss {np.mean(losses[-50:]):.4f} "
                  f"{time.perf_counter() - start:.0f} s", file=log)
        if report.message.startswith("training") and report.done % 200 == 0:
            save_decoder(out / "latest_decoder.pt", decoder)
    meta = {
        "recipe": "training/train_instance_decoder.py", "seed": args.seed,
        "sam": str(loaded.path), "sam_sha256": file_sha256(loaded.path),
        "planes": counts, "render_size": RENDER, "config": config.as_dict(),
        "final_loss": result.recent_loss(50),
        "seconds": {"render": round(render_s), **{k: round(v) for k, v in result.seconds.items()}},
    }
    path = save_decoder(out / "samscope_nuclei_decoder.pt", result.decoder, meta=meta)
    if args.eval:
        from napari_samscope.core.predict.sam_api import SAM
        from napari_samscope.core.training.instance_eval import synthetic_ais_scores

        model = SAM(str(loaded.path))
        model.set_instance_decoder(path)
        meta["held_out"] = synthetic_ais_scores(model, args.eval, EVAL_SEED)
    meta["seconds"]["total"] = round(time.perf_counter() - start)
    meta["seconds"]["cpu"] = round(time.process_time())  # all threads; ~ the wall time of one idle core
    meta["file"] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2), file=log)
    print(json.dumps({k: meta[k] for k in ("final_loss", "seconds", "file", *(["held_out"] if args.eval else []))},
                     indent=2))


if __name__ == "__main__":
    main()
