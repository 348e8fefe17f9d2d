"""Train napari-samscope's default model ``samscope_nuclei`` from scratch on synthetic data.

Usage (from the repository root; the figures in training/README.md came from this
exact command on a 2-core CPU)::

    python training/train_default_model.py --out training/runs/default --seed 20240601

The run has ten phases, and four experimental ones (all with ``core.training.train_iter``; trainable "all"
except in ``decode``):

1. ``localise`` - 256x256 images with a few large nuclei: the decoder learns to follow
   the prompt (a SAM decoder trained from scratch first learns to segment *every* bright
   object; few, well-separated objects make following the prompt pay off quickly);
2. ``dense`` - 256x256 images with the full variety of ``synthetic.random_style`` at the
   native pixel scale (many, small, touching, dim, noisy nuclei; uint8 and uint16);
3. ``full`` - the model at its final input size 512 on 512x512 images of the full variety
   (stopped at step 400 of its 1,200-step schedule, ``STOP_AFTER``);
4. ``tighten`` - 600 more steps at 512 with a lower learning rate and focal alpha 0.25,
   which penalises spilling into neighbouring nuclei (the main error after ``full``);
5. ``polish`` - 900 steps at 512 with a still lower learning rate, half of the images
   near the generator's default nuclei look;
6. ``upscale`` - the model at input **1024** on 512x512 images, which the preprocessing
   upsamples 2x exactly as the predictor does: every nucleus spans 4x as many tokens and
   the low-resolution logits get 2 px per cell instead of 4 (the boundary errors of one
   or two pixels were the main loss of the 512-input model);
7. ``lowsnr`` - 260 steps at input 1024 with a lower learning rate, 60% of the images
   dim and noisy (``low_snr_style``);
8. ``settle`` - 200 more steps like ``lowsnr`` on new images at half its learning rate;
9. ``steady`` - 700 more steps like ``lowsnr`` on 400 new images (the low-SNR box IoU
   was still rising at the end of ``lowsnr`` and ``settle``);
10. ``annotate`` - input 1024 on images that look like real fluorescence images
   (``realistic_nuclei_style``: clumps, PSF tails, defocus, chromatin) and on the earlier
   looks, all outlined at half contrast as annotators draw them; a quarter of the steps
   prompt a positive point plus a negative point on a touching neighbour, and half of
   the corrective rounds get no mask prompt (as the napari plugin prompts);
11. ``refine`` - a short fine-tune of ``annotate`` at a low learning rate: 40% of the images
   as ``annotate`` (some of them with mitotic and apoptotic figures), 60% the plain and
   low-SNR looks of the earlier phases (``annotate`` had cost those 0.005-0.016 IoU);
   stopped at step 100 of its 200-step schedule (``STOP_AFTER``). An experiment, not
   shipped (training/README.md has its figures), so not in the default ``--phases``;
12. ``realistic`` - 500 steps from ``annotate`` on 70% ``realistic_nuclei_style`` (some with
   small nuclei, some with mitotic and apoptotic figures) and 30% plain / low-SNR nuclei.
   Also an experiment, not shipped (training/README.md);
13. ``decode`` - from ``annotate``, the **encoder frozen** (so the instance decoder, trained on
   its embeddings, stays valid): the mask decoder and prompt encoder refit on the
   ``realistic`` mix, a quarter of the planes rendered at 256x256 (4x magnified at input
   1024, as a zoomed click's crop is) and the rest at 512x512; stopped at step 500 of its
   800-step schedule (``STOP_AFTER``). An experiment, not shipped (training/README.md);
14. ``zoomed`` - from ``annotate``, every part trained on ``decode``'s planes (the
   ``realistic`` mix, a quarter rendered at 256x256 so that they reach the encoder 4x
   magnified, as the crop of a zoomed box or click does): with ``zoom=2`` half of every
   box mask comes from such a crop, which the encoder had never been trained on.

TinyViT has no absolute position table, so the weights carry over between input sizes
unchanged (``resize_model``); the next phase then adapts them to the new frame. Each
phase writes ``<phase>.pt`` (project format) and the final model is
``samscope_nuclei.pt`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_samscope.core.modeling.build import DecoderConfig, SamConfig, TinyViTConfig, build_sam
from napari_samscope.core.synthetic import (
    SyntheticStyle,
    make_membrane_cells_2d,
    random_style,
    realistic_nuclei_style,
    render_nuclei_2d,
)
from napari_samscope.core.training import TrainConfig, prepare_pair, train_iter
from napari_samscope.core.weights.checkpoint import save_checkpoint

PE_SCALE_AT_256 = 1.0


def model_config(img_size: int) -> SamConfig:
    """The default model's architecture at a given input size."""
    return SamConfig(
        encoder=TinyViTConfig(
            img_size=img_size, embed_dims=(32, 64, 128, 160), depths=(1, 2, 2, 1),
            num_heads=(1, 2, 4, 5), window_sizes=(7, 8, 16, 16), out_chans=128,
        ),
        prompt_embed_dim=128,
        decoder=DecoderConfig(transformer_mlp_dim=512, transformer_heads=4, iou_head_hidden_dim=128),
    )


def plain_nuclei_style(rng: np.random.Generator) -> SyntheticStyle:
    """Nuclei near the generator's default look (``make_nuclei_2d``: dense, some touching),
    with wide contrast, noise, blur and dtype: the most common kind of image users bring."""
    lo = float(rng.uniform(6.0, 12.0))
    return replace(
        SyntheticStyle(),
        radius_range=(lo, lo * float(rng.uniform(1.6, 2.6))),
        density=float(rng.uniform(0.2, 0.4)),
        touching=float(rng.uniform(0.2, 0.5)),
        dtype="uint16" if rng.random() < 0.5 else "uint8",
        snr=float(np.exp(rng.uniform(np.log(2.5), np.log(40.0)))),
        blur=float(rng.uniform(0.3, 2.0)),
        read_noise=float(rng.uniform(1.0, 8.0)),
        background_photons=float(np.exp(rng.uniform(np.log(5.0), np.log(60.0)))),
        uint16_gain=float(np.exp(rng.uniform(np.log(0.5), np.log(20.0)))),
    )


def low_snr_style(rng: np.random.Generator) -> SyntheticStyle:
    """:func:`plain_nuclei_style` at a low signal-to-noise ratio (SNR 2-6, read noise
    3-10 photons, mostly uint16): dim, noisy acquisitions, where boundaries are hardest."""
    return replace(
        plain_nuclei_style(rng),
        snr=float(np.exp(rng.uniform(np.log(2.0), np.log(6.0)))),
        read_noise=float(rng.uniform(3.0, 10.0)),
        background_photons=float(np.exp(rng.uniform(np.log(5.0), np.log(30.0)))),
        dtype="uint16" if rng.random() < 0.7 else "uint8",
    )


def annotate_style(rng: np.random.Generator) -> SyntheticStyle:
    """The ``annotate`` phase's mix: 55% ``realistic_nuclei_style``, 20% ``low_snr_style``,
    15% ``plain_nuclei_style``, 10% ``random_style``; all outlined at half contrast."""
    draw = rng.random()
    if draw < 0.55:
        return realistic_nuclei_style(rng)
    if draw < 0.75:
        style = low_snr_style(rng)
    elif draw < 0.9:
        style = plain_nuclei_style(rng)
    else:
        style = random_style(rng)
    return replace(style, boundary="half_contrast")


def with_figures(style: SyntheticStyle, rng: np.random.Generator) -> SyntheticStyle:
    """``style`` with up to 8% of its nuclei drawn as mitotic and up to 8% as apoptotic
    figures (``core/synthetic/figures.py``)."""
    return replace(style, mitotic_fraction=float(rng.uniform(0.0, 0.08)),
                   apoptotic_fraction=float(rng.uniform(0.0, 0.08)))


def refine_style(rng: np.random.Generator) -> SyntheticStyle:
    """The ``refine`` phase's mix: 40% :func:`annotate_style` (in 60% of those images up
    to 8% mitotic and up to 8% apoptotic figures), 35% ``plain_nuclei_style``, 25%
    ``low_snr_style`` (both with the drawn outlines, as in the phases before ``annotate``)."""
    draw = rng.random()
    if draw < 0.4:
        style = annotate_style(rng)
        return with_figures(style, rng) if rng.random() < 0.6 else style
    if draw < 0.75:
        return plain_nuclei_style(rng)
    return low_snr_style(rng)


def realistic_mix_style(rng: np.random.Generator) -> SyntheticStyle:
    """The ``realistic`` phase's mix, aimed at what the shipped model loses on a real image
    (``training/README.md``): 70% ``realistic_nuclei_style`` outlined at half contrast (a
    fifth of them with small nuclei, major semi-axis from 2.5 px, and a fifth with up to
    8% mitotic and 8% apoptotic figures), 30% ``plain_nuclei_style`` / ``low_snr_style``
    with the drawn outlines, to hold the synthetic figures."""
    draw = rng.random()
    if draw < 0.7:
        style = realistic_nuclei_style(rng)
        kind = rng.random()
        if kind < 0.2:
            lo = float(rng.uniform(2.5, 4.5))
            style = replace(style, radius_range=(lo, lo * float(rng.uniform(1.5, 2.5))))
        elif kind < 0.4:
            style = with_figures(style, rng)
        return style
    if draw < 0.85:
        return plain_nuclei_style(rng)
    return low_snr_style(rng)


#: The phases at input 1024 that train on dim, noisy images (60% ``low_snr_style``).
LOW_SNR_PHASES = ("lowsnr", "settle", "steady")
#: The phases whose other images are half ``plain_nuclei_style``.
PLAIN_MIX_PHASES = ("polish", "upscale", *LOW_SNR_PHASES)


def pool(kind: str, n: int, size: int, rng: np.random.Generator, render: int | None = None) -> list:
    """``n`` synthetic planes of one phase's kind, rendered at ``render`` x ``render``
    (default ``size``) and prepared for a model of input size ``size``."""
    samples = []
    render = render or size
    while len(samples) < n:
        if kind == "localise":
            style = random_style(rng, size_scale=float(rng.uniform(1.0, 2.0)))
            style = replace(style, n_objects=int(rng.integers(2, 7)), touching=0.2)
            image, labels = render_nuclei_2d(style, (size, size), rng)
        elif kind == "annotate":
            image, labels = render_nuclei_2d(annotate_style(rng), (render, render), rng)
        elif kind == "refine":
            image, labels = render_nuclei_2d(refine_style(rng), (render, render), rng)
        elif kind == "realistic":
            image, labels = render_nuclei_2d(realistic_mix_style(rng), (render, render), rng)
        elif kind in ("decode", "zoomed"):
            side = render // 2 if rng.random() < 0.25 else render
            image, labels = render_nuclei_2d(realistic_mix_style(rng), (side, side), rng)
        elif kind in LOW_SNR_PHASES and rng.random() < 0.6:
            image, labels = render_nuclei_2d(low_snr_style(rng), (render, render), rng)
        elif kind in PLAIN_MIX_PHASES and rng.random() < 0.5:
            image, labels = render_nuclei_2d(plain_nuclei_style(rng), (render, render), rng)
        elif rng.random() < 0.08:  # a few membrane-stained cells for variety
            image, labels = make_membrane_cells_2d(
                (render, render), radius_range=tuple(rng.uniform(10, 24) * np.array([1, 1.6])),
                dtype="uint16" if rng.random() < 0.5 else "uint8",
                snr=float(rng.uniform(4, 30)), blur=float(rng.uniform(0.5, 2)), seed=rng)
        else:
            image, labels = render_nuclei_2d(random_style(rng), (render, render), rng)
        sample = prepare_pair(image, labels, size, name=f"{kind} {len(samples)}")
        if len(sample.ids):
            samples.append(sample)
    return samples


#: What the low-SNR phases share; they differ in steps, learning rate and pool size.
_LOW_SNR_STEP = dict(batch_images=2, objects_per_image=16, corrective_rounds=1, warmup_steps=10,
                     focal_alpha=0.25)

PHASES = {
    # name: (input size, pool size, TrainConfig overrides)
    "localise": (256, 300, dict(steps=500, lr=2e-3, batch_images=8, objects_per_image=6,
                                corrective_rounds=0, warmup_steps=30)),
    "dense": (256, 800, dict(steps=1000, lr=1.5e-3, batch_images=4, objects_per_image=16,
                             corrective_rounds=1, warmup_steps=30)),
    "full": (512, 400, dict(steps=1200, lr=1e-3, batch_images=2, objects_per_image=32,
                            corrective_rounds=1, warmup_steps=30)),
    "tighten": (512, 400, dict(steps=600, lr=5e-4, batch_images=2, objects_per_image=32,
                               corrective_rounds=1, warmup_steps=20, focal_alpha=0.25)),
    "polish": (512, 500, dict(steps=900, lr=1.5e-4, batch_images=2, objects_per_image=32,
                              corrective_rounds=1, warmup_steps=20, focal_alpha=0.25)),
    "upscale": (1024, 500, dict(steps=1100, lr=3e-4, batch_images=2, objects_per_image=16,
                                corrective_rounds=1, warmup_steps=30, focal_alpha=0.25)),
    "lowsnr": (1024, 300, dict(steps=260, lr=1e-4, **_LOW_SNR_STEP)),
    "settle": (1024, 300, dict(steps=200, lr=5e-5, **_LOW_SNR_STEP)),
    "steady": (1024, 400, dict(steps=700, lr=1e-4, **_LOW_SNR_STEP)),
    "annotate": (1024, 320, dict(steps=500, lr=1e-4, negative_pair_fraction=0.25,
                                 feedback_mask_p=0.5, **_LOW_SNR_STEP)),
    "refine": (1024, 200, dict(steps=200, lr=5e-5, negative_pair_fraction=0.25,
                               feedback_mask_p=0.5, **_LOW_SNR_STEP)),
    "realistic": (1024, 320, dict(steps=500, lr=1e-4, negative_pair_fraction=0.25,
                                  feedback_mask_p=0.5, **_LOW_SNR_STEP)),
    "decode": (1024, 320, dict(steps=800, lr=1.5e-4, negative_pair_fraction=0.25,
                               feedback_mask_p=0.5, **_LOW_SNR_STEP)),
    "zoomed": (1024, 320, dict(steps=400, lr=1e-4, negative_pair_fraction=0.25,
                               feedback_mask_p=0.5, **_LOW_SNR_STEP)),
}
#: Phases that train only some parts (``TrainConfig.trainable``); the others train all.
TRAINABLE = {"decode": "decoder+prompt"}
#: Phases whose planes are rendered smaller than the model's input (and upsampled by
#: the preprocessing, as the predictor does for a 512x512 image at input 1024).
RENDER_SIZE = {"upscale": 512, "annotate": 512, "refine": 512, "realistic": 512, "decode": 512, "zoomed": 512, **{phase: 512 for phase in LOW_SNR_PHASES}}
#: Phases stopped before the end of their learning-rate schedule (at this step).
STOP_AFTER = {"full": 400, "refine": 100, "decode": 500}


def resize_model(sam, img_size: int):
    """The same weights in a model of another input size (TinyViT has no position table).

    The prompt encoder's Fourier matrix is kept as it is: rescaling it to keep its
    wavelengths in pixels moves every absolute phase, which the trained decoder relies
    on (measured: IoU 0.18 after such a rescale, 0.37-0.51 without, before retraining).
    """
    bigger = build_sam(model_config(img_size))
    bigger.load_state_dict(sam.state_dict())
    return bigger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="training/runs/default")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--phases",
        default="localise,dense,full,tighten,polish,upscale,lowsnr,settle,steady,annotate",
    )
    parser.add_argument("--resume", default=None,
                        help="checkpoint of an earlier phase (<phase>.pt) to continue from")
    parser.add_argument("--whole-schedule", action="store_true",
                        help="run every phase to the end of its schedule (ignore STOP_AFTER)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "a", buffering=1)
    torch.manual_seed(args.seed)
    sam = build_sam(model_config(256))
    with torch.no_grad():
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(PE_SCALE_AT_256)
    if args.resume:  # a checkpoint written by an earlier phase (project format)
        from napari_samscope.core.modeling.build import sam_from_state_dict
        from napari_samscope.core.weights.checkpoint import read_checkpoint

        contents = read_checkpoint(args.resume)
        sam = sam_from_state_dict(contents.state_dict, contents.config)
    history = {}
    for phase in args.phases.split(","):
        index = list(PHASES).index(phase)  # seeds depend on the phase, not on the command
        size, n_pool, overrides = PHASES[phase]
        if sam.img_size != size:
            sam = resize_model(sam, size)
        rng = np.random.default_rng(args.seed + 1000 * (index + 1))
        start = time.time()
        samples = pool(phase, n_pool, size, rng, RENDER_SIZE.get(phase))
        print(f"[{phase}] pool of {len(samples)} planes in {time.time() - start:.0f} s", file=log)
        options = {"focal_alpha": 0.75, **overrides}
        config = TrainConfig(
            trainable=TRAINABLE.get(phase, "all"), autocast="bfloat16", weight_decay=0.05, seed=args.seed + index,
            **options,
        )
        losses, ious = [], []
        job = train_iter(sam, samples, config)
        while True:
            try:
                report = next(job)
            except StopIteration:
                break
            if report.message == "training":
                losses.append(report.info["loss"])
                ious.append(report.info["iou"])
                if report.done % 20 == 0:
                    print(f"[{phase}] step {report.done}/{report.total} loss "
                          f"{np.mean(losses[-20:]):.4f} iou {np.mean(ious[-20:]):.3f} "
                          f"{time.time() - start:.0f} s", file=log)
                if report.done % 100 == 0:
                    torch.save(result_state(sam), out / f"{phase}_latest.pt")
                if not args.whole_schedule and report.done >= STOP_AFTER.get(phase, report.total):
                    job.close()  # stop early: the model keeps the weights of this step
                    break
        sam.eval()
        history[phase] = {"steps": len(losses), "final_loss": float(np.mean(losses[-20:])),
                          "final_iou": float(np.mean(ious[-20:])), "seconds": round(time.time() - start)}
        save_checkpoint(out / f"{phase}.pt", sam, meta={"phase": phase, "seed": args.seed})
        print(f"[{phase}] done {history[phase]}", file=log)
    meta = {"name": "samscope_nuclei", "seed": args.seed, "phases": history,
            "recipe": "training/train_default_model.py"}
    save_checkpoint(out / "samscope_nuclei.pt", sam, meta=meta)
    (out / "history.json").write_text(json.dumps(history, indent=2))


def result_state(sam) -> dict:
    return {k: v.detach().clone() for k, v in sam.state_dict().items()}


if __name__ == "__main__":
    main()
