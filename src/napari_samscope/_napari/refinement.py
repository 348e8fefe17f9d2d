"""The previous preview fed back into the next click, as SAM's interactive demo does.

When a click is added to an object that was just decoded, the decoder gets that
object's last low-resolution logits as its mask prompt (``mask_input``) next to all of
its points. A negative click on a touching neighbour then removes more of it than the
points alone would: the decoder refines the mask it already drew instead of starting
again from the clicks. ``scripts/compare_negative_click.py`` compares the ways of
passing the second click on touching nuclei.

An object's prompts "extend" a remembered object when they have the same box, no mask
prompt of their own (a polygon), and start with the remembered points in the same
order and polarity. Prompts equal to a remembered object's reuse the mask prompt that
made it, so decoding the same prompts again gives the same mask; anything else (a point
moved, deleted or flipped, another model, image or plane) starts afresh from the
points alone.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_samscope._napari.prompts import ObjectPrompt

__all__ = ["ClickMemory", "Decoded"]


@dataclass(frozen=True)
class Decoded:
    """One decoded object: its prompts, the mask prompt it was given, its logits.

    Attributes:
        prompt: the object's points, labels and box (SAM coordinates).
        mask_input: ``(L, L)`` float32 logits given as the mask prompt, or ``None``.
        logits: ``(L, L)`` float32 low-resolution logits of the decoded mask.
    """

    prompt: ObjectPrompt
    mask_input: np.ndarray | None
    logits: np.ndarray


def _same_box(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b))


def _extends(old: ObjectPrompt, new: ObjectPrompt) -> bool:
    """``new`` has ``old``'s box and starts with its points and polarities."""
    n = len(old.points)
    return (
        _same_box(old.box, new.box)
        and len(new.points) >= n
        and np.array_equal(np.asarray(new.labels[:n]), np.asarray(old.labels))
        and bool(np.allclose(new.points[:n], old.points))
    )


class ClickMemory:
    """The last decoded objects of each plane, to refine them with the next click.

    Thread-safe: the live preview decodes on the GUI thread or in a worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planes: dict[Hashable, list[Decoded]] = {}
        self._image: Any = None

    def switch(self, image: Any) -> None:
        """Prompts now belong to ``image`` (any identity): forget another image's objects."""
        with self._lock:
            if image is not self._image:
                self._image = image
                self._planes.clear()

    def clear(self) -> None:
        """Forget everything (prompts cleared or committed)."""
        with self._lock:
            self._planes.clear()

    def mask_input(self, scope: Hashable, obj: ObjectPrompt) -> np.ndarray | None:
        """The mask prompt for ``obj`` on ``scope`` (a plane and its embedding), or ``None``."""
        if obj.mask is not None or not len(obj.points):
            return None  # a polygon's own mask prompt, or a box alone: nothing to refine
        with self._lock:
            remembered = list(self._planes.get(scope, ()))
        best: Decoded | None = None
        for entry in remembered:
            if _extends(entry.prompt, obj) and (best is None or len(entry.prompt.points) > len(best.prompt.points)):
                best = entry
        if best is None:
            return None
        return best.mask_input if len(best.prompt.points) == len(obj.points) else best.logits

    def remember(self, scope: Hashable, decoded: Sequence[Decoded]) -> None:
        """``decoded`` are now the objects of ``scope`` (replacing the earlier ones)."""
        with self._lock:
            self._planes[scope] = list(decoded)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._planes.values())
