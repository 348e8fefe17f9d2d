"""Zoom: what ``zoom=2`` (the default model's choice) costs per prompt.

    python benchmarks/bench_zoom.py [--repeats 7] [--threads 2]

The default model with its defaults (bf16 autocast where the CPU has native bf16,
``flips=2``, refined points) on a 512x512 uint16 synthetic nuclei image, with ``zoom``
1 (off) and 2. ``set_image`` does not depend on the zoom; a zoomed prompt encodes the
crop that holds it the first time a prompt needs that crop (``first in its crop``) and
decodes on the kept crop afterwards (``crop kept``). Every timing is a median of
``--repeats`` runs in one process. Quality is measured by ``samscope evaluate --zoom``
(figures in training/README.md, "Zoom").
"""

from __future__ import annotations

import dataclasses

import numpy as np
from _common import measure, nuclei_prompts, repeats_and_threads, say


def main() -> None:
    args = repeats_and_threads(__doc__)

    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor

    image, boxes, point = nuclei_prompts()
    order = np.random.default_rng(0).permutation(len(boxes))[:32]  # 32 nuclei all over the image
    model = SAM()
    say(f"512x512 uint16, {len(boxes)} nuclei, {args.threads} threads, {model!r}, flips "
        f"{model.spec.flips}, median of {args.repeats}")
    print("| zoom | set_image (s) | one box, first in its crop (ms) | one box, crop kept (ms) "
          "| one refined point, first in its crop (ms) | one refined point, crop kept (ms) "
          "| 32 boxes over the image, no crop kept (s) | crops encoded for them |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for zoom in (1, 2):
        predictor = Predictor(model, zoom=zoom)
        encode = measure(lambda p=predictor: p.set_image(image), args.repeats)
        embedding = predictor.get_embedding()
        box_first = _first_in_crop(predictor, embedding, args.repeats, bboxes=boxes[0])
        point_first = _first_in_crop(predictor, embedding, args.repeats, points=point)
        box_kept = measure(lambda p=predictor: p.predict(bboxes=boxes[0]), args.repeats * 3)
        point_kept = measure(lambda p=predictor: p.predict(points=point), args.repeats * 3)
        many = _first_in_crop(predictor, embedding, args.repeats, bboxes=boxes[order])
        source = predictor.zoom_source(predictor.get_embedding())
        crops = 0 if source is None else source.encoded
        print(f"| {zoom} | {encode.median:.3f} | {box_first.median * 1e3:.0f} | "
              f"{box_kept.median * 1e3:.1f} | {point_first.median * 1e3:.0f} | "
              f"{point_kept.median * 1e3:.1f} | {many.median:.2f} | {crops} |", flush=True)


def _first_in_crop(predictor, embedding, repeats: int, **prompt):
    """Timing of ``predict(**prompt)`` on the image with no crop encoded yet (the same
    embedding set again with a copy of its pixels, so the crops are forgotten)."""

    def run():
        predictor.set_embedding(dataclasses.replace(embedding, pixels=embedding.pixels.copy()))
        predictor.predict(**prompt)

    return measure(run, repeats)


if __name__ == "__main__":
    main()
