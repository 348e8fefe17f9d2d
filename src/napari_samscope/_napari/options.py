"""The choices the widgets and the console API offer, as enums (never bare strings).

Each enum's values are the words the public methods accept (``run(scope="stack")``),
so ``Scope("stack")`` turns such a word into the enum and rejects any other with a
sentence for the user (:func:`parse`).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = ["Scope", "BoxSource", "PropagationMode", "SCALE_CHOICES", "parse", "parse_scale"]


class Scope(str, Enum):
    """Which planes a job covers."""

    PLANE = "plane"  # the plane the viewer shows
    STACK = "stack"  # every plane of the stack line through it


class BoxSource(str, Enum):
    """Where auto-annotate's boxes come from."""

    BLOBS = "blobs"  # the blob detector (fluorescent nuclei, no weights)
    SHAPES = "shapes"  # the rectangles, polygons and ellipses of a Shapes layer


class PropagationMode(str, Enum):
    """How each plane prompts the next one when an object is followed through a stack."""

    MASK = "mask"
    BOX = "box"
    POINTS = "points"


#: What the model line's scale box offers: how images are placed into the model input
#: (``core.predict.input_scale``); any other magnification above 0 may be typed.
SCALE_CHOICES = ("auto", "fill", "1", "2", "4")


def parse_scale(value: str | float) -> str | float:
    """A scale typed or chosen in a widget: ``"auto"``, ``"fill"`` or a magnification
    (``"2"``, ``"2x"``); ``ValueError`` with a sentence otherwise."""
    from napari_samscope.core.predict.input_scale import check_scale

    if isinstance(value, str) and value.strip().lower().endswith("x"):
        value = value.strip()[:-1]
    return check_scale(value)


E = TypeVar("E", bound=Enum)


def parse(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``kind``; ``ValueError`` naming the choices otherwise."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{what} must be one of {choices}, not {value!r}.") from None
