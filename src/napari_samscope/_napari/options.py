"""The choices the widgets and the console API offer, as enums (never bare strings).

Each enum's values are the words the public methods accept (``run(scope="stack")``),
so ``Scope("stack")`` turns such a word into the enum and rejects any other with a
sentence for the user (:func:`parse`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "Scope", "BoxSource", "PropagationMode", "SCALE_CHOICES", "parse", "parse_scale", "parse_zoom",
]


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


def parse_zoom(value: Any) -> float | None:
    """A zoom chosen in a widget or the console (``core.predict.zoom``): None or
    ``"auto"`` (each model's own choice, returned as None), ``"off"`` (1.0), or a factor
    >= 1 or its text (``"2"``, ``"2x"``); ``ValueError`` / ``TypeError`` with a sentence
    otherwise."""
    from napari_samscope.core.predict.zoom import check_zoom

    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", ""):
            return None
        if text == "off":
            return 1.0
        try:
            value = float(text[:-1] if text.endswith("x") else text)
        except ValueError:
            raise ValueError(
                f"zoom must be 'auto', 'off' or a number >= 1 (such as 2), not {value!r}."
            ) from None
    return None if value is None else check_zoom(value)


E = TypeVar("E", bound=Enum)


def parse(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``kind``; ``ValueError`` naming the choices otherwise."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{what} must be one of {choices}, not {value!r}.") from None
