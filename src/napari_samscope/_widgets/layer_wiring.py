"""Key bindings and change events on the plugin's layers (never global).

:class:`LayerWiring` binds the widget's keys on the layers the plugin uses (its
prompt layers and its preview) with ``layer.bind_key``, so they only act while one
of those layers is active and napari's own keys stay untouched elsewhere, and it
watches the prompt layers' ``data`` events to drive the live preview.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["LayerWiring", "KEYS"]

#: napari key -> widget method name.
KEYS = {
    "S": "segment",
    "Shift-S": "segment_all_slices",
    "C": "commit",
    "Shift-C": "clear_prompts",
    "T": "toggle_polarity",
}

_FINISHED_ACTIONS = ("added", "removed", "changed")


class LayerWiring:
    """Binds ``KEYS`` to methods of ``target`` on chosen layers; watches prompt changes.

    Args:
        target: the object whose methods the keys call.
        on_change: called after a prompt layer finished a change (add, remove, move).
    """

    def __init__(self, target: Any, on_change: Callable[[], Any]) -> None:
        self._target = weakref.ref(target)  # a closed widget must not live on in keymaps
        self._on_change = on_change
        self.bound: list[Any] = []
        self.watched: list[Any] = []

    def bind(self, layers: list[Any]) -> None:
        """Bind the keys on ``layers`` (in addition to those already bound)."""
        for layer in layers:
            if layer is None or layer in self.bound:
                continue
            for key, method in KEYS.items():
                layer.bind_key(key, self._handler(method), overwrite=True)
            self.bound.append(layer)

    def unbind(self) -> None:
        """Remove the keys from every layer they were bound on."""
        for layer in self.bound:
            for key in KEYS:
                layer.bind_key(key, None, overwrite=True)
        self.bound = []

    def forget(self, layer: Any) -> None:
        """A layer left the viewer: stop tracking it."""
        if layer in self.bound:
            self.bound.remove(layer)
        if layer in self.watched:
            layer.events.data.disconnect(self._data_event)
            self.watched.remove(layer)

    def watch(self, layers: list[Any]) -> None:
        """Watch exactly ``layers`` (``None`` entries ignored) for finished data changes."""
        for layer in self.watched:
            layer.events.data.disconnect(self._data_event)
        self.watched = [layer for layer in layers if layer is not None]
        for layer in self.watched:
            layer.events.data.connect(self._data_event)

    def _data_event(self, event: Any) -> None:
        action = getattr(event, "action", None)
        if str(getattr(action, "value", action or "changed")) in _FINISHED_ACTIONS:
            self._on_change()

    def _handler(self, method: str) -> Callable[[Any], None]:
        target_ref = self._target

        def handler(_layer: Any) -> None:
            target = target_ref()
            if target is not None:
                getattr(target, method)()

        handler.__name__ = f"samscope_{method}"
        return handler
