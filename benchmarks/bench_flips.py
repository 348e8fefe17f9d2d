"""Flip averaging: what ``flips=1|2|4`` costs with the default model.

    python benchmarks/bench_flips.py [--repeats 7] [--threads 2]

For each number of flips and each precision (float32, bf16 autocast): the median
``set_image`` time of a 512x512 uint16 synthetic nuclei image (the orientations are
encoded in one encoder batch) and the median time of one point prompt and of a batch of
32 box prompts (every prompt is decoded once per orientation); the point is timed with
and without ``refine_points`` (its second decoder pass, ``core/predict/point_refine.py``).
The issue's target for ``set_image`` of 512x512 is 0.3 s. Quality is measured by ``samscope evaluate --flips``
(figures in training/README.md).
"""

from __future__ import annotations

from _common import measure, nuclei_prompts, repeats_and_threads, say

SET_IMAGE_TARGET = 0.3  # seconds, 512x512, the default model


def main() -> None:
    args = repeats_and_threads(__doc__)

    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor

    image, all_boxes, point = nuclei_prompts()
    boxes = all_boxes[:32]
    say(f"512x512 uint16, {len(all_boxes)} nuclei, {args.threads} threads, "
        f"median of {args.repeats}")
    print("| precision | flips | set_image (s) | one point (ms) | one point, refined (ms) "
          "| 32 boxes (ms) | set_image target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dtype in ("float32", "bfloat16"):
        model = SAM(dtype=dtype)
        for flips in (1, 2, 4):
            predictor = Predictor(model, flips=flips)
            encode = measure(lambda p=predictor: p.set_image(image), args.repeats)
            predictor.refine_points = False
            one = measure(lambda p=predictor: p.predict(points=point), args.repeats * 3)
            predictor.refine_points = True
            refined = measure(lambda p=predictor: p.predict(points=point), args.repeats * 3)
            many = measure(lambda p=predictor: p.predict(bboxes=boxes), args.repeats)
            met = "met" if encode.median <= SET_IMAGE_TARGET else "NOT met"
            print(f"| {dtype} | {flips} | {encode.median:.3f} | {one.median * 1e3:.1f} | "
                  f"{refined.median * 1e3:.1f} | {many.median * 1e3:.1f} | {met} |", flush=True)


if __name__ == "__main__":
    main()
