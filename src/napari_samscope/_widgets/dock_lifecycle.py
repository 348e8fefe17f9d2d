"""Shutting a plugin widget down when napari closes its dock.

napari removes a dock widget by taking it out of its dock (a Qt ``ParentChange``),
not always by closing it, so every samscope widget watches both events and calls its
own ``shutdown()`` (stop workers, disconnect from the viewer) exactly when it leaves.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent

__all__ = ["ShutsDownWithDock"]


class ShutsDownWithDock:
    """Mixin for ``QWidget`` subclasses that define ``shutdown()``; list it before ``QWidget``."""

    _docked = False

    def shutdown(self) -> None:  # pragma: no cover - every widget defines its own
        raise NotImplementedError

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.shutdown()
        super().closeEvent(event)  # type: ignore[misc]

    def changeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        """napari closes a dock by taking the widget out of it: shut down then."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:  # type: ignore[attr-defined]
                self._docked = True
            elif self._docked:
                self.shutdown()
        super().changeEvent(event)  # type: ignore[misc]
