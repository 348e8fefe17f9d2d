"""Compare the ways an interactive flow can pass a negative click on a touching neighbour.

For every touching pair (``core.training.touching_pairs``: an object and its largest
neighbour, clicked at their centres) the object is clicked once (positive), then the
neighbour (negative), and the second decode is made in each of these ways:

- A: the two points alone, single-mask output;
- B / C: the two points alone, 3 candidates, kept by best score / by the rule "the
  positive point inside, the negative point outside, then best score";
- D: single-mask first click; its logits as ``mask_input`` with the two points, single
  mask (what the napari preview does);
- E: 3 candidates on the first click, the best-scored one shown; its logits as
  ``mask_input``, single mask (SAM's interactive demo);
- F: as E with 3 candidates on the second click, kept by the rule;
- G: as D with 3 candidates on the second click, kept by the rule.

It prints, for all pairs and for those where the single-mask first click failed
(IoU < 0.7), the mean IoU before -> after the negative click and the mean fraction of
the neighbour's pixels inside the mask before -> after.

``--negative-on spilled`` clicks, instead of the largest touching neighbour, the other
object that the single-mask first click covers most (where a person looking at the
preview clicks; the largest neighbour when the mask covers no other object).

    python scripts/compare_negative_click.py --synthetic 10 --seed 9000
    python scripts/compare_negative_click.py --image img2d.tif --labels mask2d.tif
"""

from __future__ import annotations

import argparse
import json

import numpy as np

WAYS = {
    "A": "points alone, single mask",
    "B": "points alone, 3 candidates, best score",
    "C": "points alone, 3 candidates, rule",
    "D": "single-mask 1st -> logits, single mask (plugin)",
    "E": "3-candidate 1st best -> logits, single mask (SAM demo)",
    "F": "3-candidate 1st best -> logits, 3 candidates, rule",
    "G": "single-mask 1st -> logits, 3 candidates, rule",
}


def _pick(result, positive, negative, rule: bool) -> int:
    order = [int(i) for i in np.argsort(-np.asarray(result.scores))]
    if not rule:
        return order[0]
    for i in order:
        mask = result.masks[i]
        if mask[positive[1], positive[0]] and (negative is None or not mask[negative[1], negative[0]]):
            return i
    return order[0]


def _scores(mask, target, neighbour) -> tuple[float, float]:
    iou = np.logical_and(mask, target).sum() / max(np.logical_or(mask, target).sum(), 1)
    return float(iou), float(np.logical_and(mask, neighbour).sum() / neighbour.sum())


def _spilled_into(label: np.ndarray, mask: np.ndarray, obj: int, fallback: int) -> int:
    """The other object with the most pixels inside ``mask`` (``fallback`` if none)."""
    counts = np.bincount(label[mask].ravel(), minlength=int(label.max()) + 1)
    counts[[0, obj]] = 0
    return int(np.argmax(counts)) if counts.max() > 0 else fallback


def compare(predictor, images, labels, spilled: bool = False) -> dict[str, dict[str, list[float]]]:
    from napari_samscope.core.training.touching_pairs import _centre, touching_pairs

    rows: dict[str, dict[str, list[float]]] = {k: {"iou0": [], "iou1": [], "nb0": [], "nb1": []} for k in WAYS}
    for image, label in zip(images, labels):
        label = np.asarray(label)
        pairs = touching_pairs(label, min_area=30)
        if not pairs:
            continue
        predictor.set_image(image)
        for obj, other in pairs:
            target = label == obj
            r0, c0 = _centre(target)
            one, labels1, labels2 = np.array([[c0, r0]], float), np.array([1]), np.array([1, 0])
            single = predictor.predict(points=one, labels=labels1)
            if spilled:
                other = _spilled_into(label, single.masks[0], obj, other)
            neighbour = label == other
            r1, c1 = _centre(neighbour)
            p, n = (c0, r0), (c1, r1)
            two = np.array([[c0, r0], [c1, r1]], float)
            multi = predictor.predict(points=one, labels=labels1, multimask_output=True)
            best = _pick(multi, p, None, False)
            plain = predictor.predict(points=two, labels=labels2)
            plain3 = predictor.predict(points=two, labels=labels2, multimask_output=True)
            d = predictor.predict(points=two, labels=labels2, masks=single.logits[0])
            e = predictor.predict(points=two, labels=labels2, masks=multi.logits[best])
            f = predictor.predict(points=two, labels=labels2, masks=multi.logits[best], multimask_output=True)
            g = predictor.predict(points=two, labels=labels2, masks=single.logits[0], multimask_output=True)
            first_single, first_multi = single.masks[0], multi.masks[best]
            outcomes = {
                "A": (first_single, plain.masks[0]),
                "B": (first_single, plain3.masks[_pick(plain3, p, n, False)]),
                "C": (first_single, plain3.masks[_pick(plain3, p, n, True)]),
                "D": (first_single, d.masks[0]),
                "E": (first_multi, e.masks[0]),
                "F": (first_multi, f.masks[_pick(f, p, n, True)]),
                "G": (first_single, g.masks[_pick(g, p, n, True)]),
            }
            for way, (before, after) in outcomes.items():
                row = rows[way]
                iou0, nb0 = _scores(before, target, neighbour)
                iou1, nb1 = _scores(after, target, neighbour)
                row["iou0"].append(iou0)
                row["iou1"].append(iou1)
                row["nb0"].append(nb0)
                row["nb1"].append(nb1)
    predictor.reset_image()
    return rows


def summary(rows: dict[str, dict[str, list[float]]], failed_below: float = 0.7,
            merged_above: float = 0.2) -> dict[str, dict[str, float]]:
    failed = np.asarray(rows["A"]["iou0"]) < failed_below  # the single-mask first click failed
    merged = np.asarray(rows["A"]["nb0"]) > merged_above  # ... and held the neighbour
    out = {}
    for way, row in rows.items():
        a = {k: np.asarray(v) for k, v in row.items()}
        mean = lambda v: round(float(v.mean()), 4) if len(v) else float("nan")  # noqa: E731
        out[way] = {"pairs": len(a["iou0"]), **{k: mean(v) for k, v in a.items()},
                    "failed_pairs": int(failed.sum()), **{f"failed_{k}": mean(v[failed]) for k, v in a.items()},
                    "merged_pairs": int(merged.sum()), **{f"merged_{k}": mean(v[merged]) for k, v in a.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry name or checkpoint (default model)")
    parser.add_argument("--synthetic", type=int, default=0, help="held-out synthetic images")
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--image", help="a 2D image file")
    parser.add_argument("--labels", help="its label image")
    parser.add_argument("--negative-on", choices=("largest", "spilled"), default="largest",
                        help="the neighbour clicked: the largest touching one, or the one the "
                             "first mask covers most")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from napari_samscope.core.predict.image import load_image
    from napari_samscope.core.predict.resolve import as_predictor
    from napari_samscope.core.predict.sam_api import SAM

    if args.synthetic:
        from napari_samscope.core.training.evaluate import synthetic_eval_set

        images, labels = synthetic_eval_set(args.synthetic, args.seed)
    elif args.image and args.labels:
        images, labels = [load_image(args.image)], [load_image(args.labels)]
    else:
        parser.error("give --synthetic N or --image and --labels")
    predictor = as_predictor(SAM(args.model, device="cpu", dtype="float32"))
    figures = summary(compare(predictor, list(images), list(labels), spilled=args.negative_on == "spilled"))
    print(f"{'way':58s} {'IoU before -> after':>20s} {'neighbour in mask':>18s} | failed first clicks "
          "(IoU < 0.7) | first mask held > 20% of the neighbour")
    for way, f in figures.items():
        cells = [f"{f[p + 'iou0']:.3f} -> {f[p + 'iou1']:.3f}   {f[p + 'nb0']:6.1%} -> {f[p + 'nb1']:6.1%}"
                 for p in ("", "failed_", "merged_")]
        print(f"{way} {WAYS[way]:56s} {cells[0]} | ({f['failed_pairs']}) {cells[1]} | "
              f"({f['merged_pairs']}) {cells[2]}")
    print(f"pairs: {figures['A']['pairs']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)


if __name__ == "__main__":
    main()
