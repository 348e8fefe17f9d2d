"""Mitotic and apoptotic figures: nuclei whose chromatin is condensed.

In a nuclear (DNA) stain a dividing or dying cell does not look like an interphase
nucleus:

- **mitotic**: the chromatin condenses into a bright *metaphase plate* (an elongated bar
  across the middle of the former nucleus) or, in anaphase/telophase, into two bright bars
  or two small bright blobs that move apart along the spindle axis; the rest of the former
  nucleus is dark;
- **apoptotic**: the nucleus shrinks into a small, very bright, round body (pyknosis) or
  breaks into a few bright bodies lying close together (karyorrhexis).

Labelling convention (as annotators of DSB-2018-like nuclei data draw them): **one object
per separate chromatin mass set**. A metaphase plate is one object; the two sister sets
of an anaphase or telophase figure are two objects (each becomes a daughter nucleus, and
annotators outline them separately once they are apart); an apoptotic nucleus is one
object, and a fragmented one is still **one** object made of all its bright bodies (its
label may have several connected pieces). The outline is the drawn shape of the
condensed chromatin, not the former nucleus.

:func:`cell_cycle_figures` turns a random fraction of the objects of a rendered label
image into such figures; it consumes the random generator only when
``style.mitotic_fraction + style.apoptotic_fraction > 0``, so every style without them
renders exactly as before.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from napari_samscope.core.synthetic.style import SyntheticStyle

__all__ = ["FigureKind", "cell_cycle_figures"]

FigureKind = Literal["metaphase", "anaphase", "pyknotic", "fragmented"]


def _axes(own: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Centre, unit major-axis direction (row, col) and the semi-axes of a mask."""
    rows, cols = np.nonzero(own)
    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    centre = coords.mean(axis=0)
    cov = np.cov(coords.T) if len(coords) > 2 else np.eye(2)
    values, vectors = np.linalg.eigh(cov + 1e-6 * np.eye(2))
    major, minor = 2.0 * math.sqrt(max(values[1], 0.25)), 2.0 * math.sqrt(max(values[0], 0.25))
    return centre, vectors[:, 1], major, minor


def _ellipse(grid: tuple[np.ndarray, np.ndarray], centre: np.ndarray, direction: np.ndarray,
             half_length: float, half_width: float) -> np.ndarray:
    """Normalised squared distance of every grid point to an ellipse along ``direction``."""
    dr, dc = grid[0] - centre[0], grid[1] - centre[1]
    along = dr * direction[0] + dc * direction[1]
    across = -dr * direction[1] + dc * direction[0]
    return (along / half_length) ** 2 + (across / half_width) ** 2


def cell_cycle_figures(
    labels: np.ndarray, signal: np.ndarray, style: SyntheticStyle, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[int, FigureKind]]:
    """Turn ``style.mitotic_fraction`` / ``style.apoptotic_fraction`` of the objects into
    condensed-chromatin figures.

    Args:
        labels: ``(H, W)`` uint32 labels, ids 1..N (the interphase nuclei as drawn).
        signal: ``(H, W)`` float32 relative brightness (~1 on objects), before blur.
        style: gives the two fractions.
        rng: the random generator.

    Returns:
        ``labels`` (ids 1..M; an anaphase figure adds one id at the end), ``signal`` (the
        former nuclei dark, their condensed chromatin 2-4x as bright as the nucleus was)
        and ``{id: kind}`` of every figure (an anaphase figure lists both of its ids).
        The inputs are returned unchanged (and ``rng`` is not used) when both fractions
        are 0.
    """
    n = int(labels.max())
    if style.mitotic_fraction + style.apoptotic_fraction <= 0 or n == 0:
        return labels, signal, {}
    draw = rng.random(n)
    mitotic = draw < style.mitotic_fraction
    apoptotic = ~mitotic & (draw < style.mitotic_fraction + style.apoptotic_fraction)
    labels, signal = labels.copy(), signal.copy()
    kinds: dict[int, FigureKind] = {}
    next_id = n + 1
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or not (mitotic[index - 1] or apoptotic[index - 1]):
            continue
        own = labels[box] == index
        if int(own.sum()) < 12:
            continue
        level = float(np.mean(signal[box][own]))
        centre, direction, major, minor = _axes(own)
        grid = np.meshgrid(np.arange(own.shape[0], dtype=np.float64),
                           np.arange(own.shape[1], dtype=np.float64), indexing="ij")
        radius = math.sqrt(major * minor)
        pieces: list[np.ndarray] = []  # normalised distance maps, one per chromatin body
        if mitotic[index - 1]:
            width = max(1.3, radius * float(rng.uniform(0.15, 0.28)))
            if rng.random() < 0.5:
                kind: FigureKind = "metaphase"  # the plate lies across the spindle axis
                across = np.array([-direction[1], direction[0]])
                pieces.append(_ellipse(grid, centre, across, max(width * 1.8, minor * float(rng.uniform(0.65, 0.9))), width))
            else:
                kind = "anaphase"  # two sister sets apart along the spindle axis
                apart = major * float(rng.uniform(0.4, 0.65))
                blob = rng.random() < 0.4
                for sign in (-1.0, 1.0):
                    where = centre + sign * apart * direction
                    if blob:
                        size = max(1.5, radius * float(rng.uniform(0.22, 0.32)))
                        pieces.append(_ellipse(grid, where, direction, size, size))
                    else:
                        across = np.array([-direction[1], direction[0]])
                        length = max(width * 1.6, minor * float(rng.uniform(0.5, 0.75)))
                        pieces.append(_ellipse(grid, where, across, length, width * 0.9))
            gain = float(rng.uniform(2.0, 4.0))
        else:
            if rng.random() < 0.6:
                kind = "pyknotic"  # one small round body
                size = max(1.8, radius * float(rng.uniform(0.45, 0.65)))
                pieces.append(_ellipse(grid, centre, direction, size, size * float(rng.uniform(0.85, 1.0))))
            else:
                kind = "fragmented"  # a few bright bodies close together: one object
                for _ in range(int(rng.integers(2, 5))):
                    angle = rng.uniform(0, 2 * math.pi)
                    where = centre + radius * float(rng.uniform(0.15, 0.5)) * np.array(
                        [math.sin(angle), math.cos(angle)])
                    size = max(1.5, radius * float(rng.uniform(0.2, 0.32)))
                    pieces.append(_ellipse(grid, where, direction, size, size))
            gain = float(rng.uniform(2.5, 5.0))
        region_labels, region_signal = labels[box], signal[box]
        region_labels[own] = 0
        region_signal[own] = 0.0
        drawn = []
        for d in pieces:
            body = own & (d < 1.0)
            drawn.append(body)
            region_signal[body] = level * gain * (1.0 - 0.25 * d[body])
        if kind == "anaphase" and drawn[0].any() and drawn[1].any():
            region_labels[drawn[0]] = index
            region_labels[drawn[1] & ~drawn[0]] = next_id
            kinds[index], kinds[next_id] = kind, kind
            next_id += 1
        elif any(body.any() for body in drawn):
            region_labels[np.logical_or.reduce(drawn)] = index
            kinds[index] = kind
    # ids 1..M in the order of the old ids (a figure with no pixel left is gone)
    present = np.unique(labels)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
    kinds = {int(lookup[old]): kind for old, kind in kinds.items() if lookup[old] > 0}
    return lookup[labels], signal, kinds
