"""Small nuclei in a large image: box prompts on the whole downscaled image vs on crops.

A 4096x4096 synthetic image with 2,000 nuclei of radius 3-5 pixels (``core.synthetic``),
the shipped default model (``SAM()``), tight boxes of ``--boxes`` randomly chosen true
nuclei. Prints the IoU of each way against the true masks: the whole image (what
``Predictor.predict`` does: the image is shrunk 4x to the model input) and
``core.predict.crops.segment_boxes`` (crops at the model's scale, as ``annotate`` and
``samscope predict --bboxes`` now do).

    python benchmarks/small_objects.py --boxes 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--nuclei", type=int, default=2000)
    parser.add_argument("--boxes", type=int, default=60)
    parser.add_argument("--skip-whole", action="store_true", help="only the crops (the whole image is slow)")
    args = parser.parse_args()

    from scipy import ndimage

    from napari_samscope.core.predict.crops import crop_side, segment_boxes
    from napari_samscope.core.predict.resolve import as_predictor
    from napari_samscope.core.predict.sam_api import SAM
    from napari_samscope.core.synthetic import make_nuclei_2d

    image, truth = make_nuclei_2d((args.size, args.size), n=args.nuclei, radius_range=(3.0, 5.0),
                                  seed=1, touching=False)
    slices = ndimage.find_objects(truth)
    ids = np.random.default_rng(0).choice(len(slices), args.boxes, replace=False) + 1
    boxes = np.array([[slices[i - 1][1].start, slices[i - 1][0].start,
                       slices[i - 1][1].stop - 1, slices[i - 1][0].stop - 1] for i in ids], float)
    predictor = as_predictor(SAM(), scale="fill")  # the whole image does not fit "auto"

    def iou(offset: tuple[int, int], piece: np.ndarray, label: int) -> float:
        r, c = offset
        inside = truth[r : r + piece.shape[0], c : c + piece.shape[1]] == label
        overlap = int((piece & inside).sum())
        return overlap / (int(piece.sum()) + int((truth == label).sum()) - overlap)

    side = crop_side(boxes, image.shape, predictor.img_size)
    print(f"{args.size}x{args.size}, {truth.max()} nuclei, {len(boxes)} boxes, median box side "
          f"{np.median(boxes[:, 2] - boxes[:, 0] + 1):.0f} px; model input {predictor.img_size}, crop side {side}")
    if not args.skip_whole:
        start = time.perf_counter()
        predictor.set_image(image)
        masks = predictor.predict(bboxes=boxes).masks
        predictor.reset_image()
        whole = np.array([iou((0, 0), m, i) for m, i in zip(masks, ids)])
        print(f"whole image: mean IoU {whole.mean():.3f}, median {np.median(whole):.3f}, "
              f"IoU >= 0.5: {(whole >= 0.5).mean():.0%} ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    results = segment_boxes(predictor, image, boxes)
    cropped = np.array([0.0 if r is None else iou(*r, i) for r, i in zip(results, ids)])
    print(f"crops:       mean IoU {cropped.mean():.3f}, median {np.median(cropped):.3f}, "
          f"IoU >= 0.5: {(cropped >= 0.5).mean():.0%} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
