"""The life cycle every samscope dock shares: one base, :class:`SamscopeDock`.

A dock gets the viewer (unwrapped from napari's proxy), the viewer's model session,
a model line and a progress row with Cancel. It registers its job runners with
:meth:`SamscopeDock.add_runner` and its signal connections with
:meth:`SamscopeDock.link`; the base then cancels, reports cancellation, and shuts
everything down in one place. :meth:`SamscopeDock.with_model` is how every action
makes sure a model is loaded (the one chosen in the model line) before it runs.

napari removes a dock widget by taking it out of its dock (a Qt ``ParentChange``),
not always by closing it, so the base watches both events and shuts down exactly
when the widget leaves, and again (harmlessly) when Qt destroys it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QVBoxLayout, QWidget

from napari_samscope._napari.session import get_session, unwrap_viewer
from napari_samscope._widgets.model_panel import ModelPanel
from napari_samscope._widgets.panels import ProgressRow
from napari_samscope._widgets.workers import notify_info

__all__ = ["SamscopeDock", "ShutsDownWithDock"]


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


class SamscopeDock(ShutsDownWithDock, QWidget):
    """Base of the samscope docks (see the module docstring).

    Subclasses build their controls into ``self.body`` (a ``QVBoxLayout`` between the
    model line and the progress row), define ``reset_choices`` for their layer
    dropdowns, and may extend ``shutdown``.

    Args:
        napari_viewer: the viewer (or napari's proxy of it).
        model_line: show the model line (the fine-tuning dock chooses its own model).
    """

    def __init__(self, napari_viewer: Any, model_line: bool = True) -> None:
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = get_session(self.viewer)
        self.progress = ProgressRow()
        self.model_panel = ModelPanel(self.session, self.progress)
        self.model_panel.setVisible(model_line)
        self._runners: list[Any] = []
        self._links: list[tuple[Any, Callable[..., Any]]] = []
        self._shut = False
        self._docked = False
        self.destroyed.connect(partial(type(self).shutdown, self))
        self.add_runner(self.model_panel.runner)
        self.progress.cancel_button.clicked.connect(self.cancel)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            self.link(event, self.reset_choices)

        # model line, then the dock's own controls (scrolled when the screen is short),
        # then the progress row
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)
        outer.addWidget(self.model_panel)
        content = QWidget()
        self.body = QVBoxLayout(content)
        self.body.setContentsMargins(0, 0, 0, 0)
        self.body.setSpacing(2)
        self.scroll = QScrollArea()
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(self.scroll, 1)
        outer.addWidget(self.progress)

    # ------------------------------------------------------------------ for subclasses

    def add_runner(self, runner: Any) -> Any:
        """Cancel and shut ``runner`` down with the dock; returns it."""
        self._runners.append(runner)
        return runner

    def add_job_runner(self) -> Any:
        """A runner for this dock's long jobs (a background worker reporting into the
        dock's progress row), cancelled and shut down with the dock."""
        from napari_samscope._widgets.workers import JobRunner

        return self.add_runner(
            JobRunner(self.progress.show_progress, self.progress.tracker("job"), background=True)
        )

    def layer_combo(self, label: str, kind: type, nullable: bool = False) -> Any:
        """A magicgui ComboBox listing the viewer's layers of type ``kind``."""
        from magicgui.widgets import ComboBox

        viewer = self.viewer
        return ComboBox(label=label, nullable=nullable, choices=lambda _w: [
            (layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)])

    def link(self, signal: Any, slot: Callable[..., Any]) -> None:
        """Connect ``signal`` to ``slot`` until the dock shuts down."""
        signal.connect(slot)
        self._links.append((signal, slot))

    def keep_in_view(self, section: Any) -> None:
        """Never shrink the dock below ``section`` (the one with its main action): when
        napari squeezes several docks into one column, the rest scrolls, not this.

        Dropdowns are made to narrow to the dock (long layer and model names are cut,
        their full text is in the list), so that nothing scrolls sideways.
        """
        for box in self.findChildren(QComboBox):
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(3)

        def fit(_expanded: bool = True) -> None:
            self.scroll.setMinimumHeight(section.sizeHint().height() + 2)

        section.header.toggled.connect(fit)
        fit()

    def with_model(self, action: Callable[[], Any]) -> bool:
        """True when a model is loaded. Otherwise start loading the model chosen in the
        model line, run ``action()`` once it is in place, and return False."""
        if self.session.sam is not None:
            return True
        if not self.model_panel.runner.busy:
            self.model_panel.load(self.model_panel.selected_model(), then=action)
        return False

    def start_job(self, runner: Any, job: Any, on_done: Callable[[Any], Any], label: str) -> None:
        """Start ``job`` on ``runner``; a busy runner becomes a notification."""
        try:
            runner.start(job, on_done, label=label)
        except RuntimeError as error:
            from napari_samscope._widgets.workers import notify_error

            notify_error(str(error))

    # ------------------------------------------------------------------ shared behaviour

    def reset_choices(self, event: Any = None) -> None:  # pragma: no cover - overridden
        """Refresh the layer dropdowns (napari calls this when layers change)."""

    def cancel(self) -> None:
        """Stop every running job of this dock (between two steps) and say what stopped."""
        stopped = [r.label for r in self._runners if r.busy and r.label]
        for runner in self._runners:
            runner.cancel()
        if stopped:
            notify_info(f"Cancelled: {'; '.join(stopped)}.")

    def shutdown(self) -> None:
        """Stop workers and disconnect from the viewer and the session (the dock is
        closing). Runs again when Qt destroys the widget, touching no Qt object then."""
        if self._shut:
            return
        self._shut = True
        for runner in self._runners:
            runner.shutdown()
        self.model_panel.shutdown()
        for signal, slot in self._links:
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError, ValueError):  # already gone with the viewer
                pass
        self._links = []
