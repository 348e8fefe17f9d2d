"""Modes that cross the layers (core, napari adapters, widgets, CLI) as string enums.

A :class:`Choice` member *is* its string (``Normalization.MINMAX == "minmax"``), so
callers may pass either; :meth:`Choice.parse` turns either into the member, or raises
a ``ValueError`` that lists the valid strings.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

__all__ = ["Choice"]

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """Base of the package's string enums."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The valid strings, in declaration order."""
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls: type[_C], value: Any, name: str | None = None) -> _C:
        """``value`` (a member or its string) as a member.

        Raises:
            ValueError: not one of :meth:`values`; the message names the argument
                (``name``, default: the enum's name).
        """
        try:
            return cls(value)
        except ValueError:
            what = name or cls.__name__
            raise ValueError(f"{what} must be one of {list(cls.values())}, not {value!r}.") from None
