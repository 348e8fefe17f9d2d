"""Small Qt panels shared by the samscope widgets: the progress row, collapsible sections
and form fields (the model line is ``model_panel.ModelPanel``)."""

from __future__ import annotations

from time import monotonic
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_samscope.core.progress import Progress

__all__ = ["ProgressRow", "Section", "fold_under", "spin_box", "time_left"]


def time_left(seconds: float) -> str:
    """``"about 3 min left"``: a rounded estimate for people, not a timer."""
    if seconds < 60:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s left"
    if seconds < 3600:
        return f"about {int(round(seconds / 60.0))} min left"
    return f"about {seconds / 3600.0:.1f} h left"


class ProgressRow(QWidget):
    """A progress bar with a message, the time left, and a Cancel button.

    The time left is estimated from the pace since the first report of the same
    message (a job's phases, such as downloading then loading, are timed apart).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._busy: set[str] = set()
        self._phase: tuple[str, int, float] | None = None  # message, first done, started
        self._idle_text = ""
        self.label = QLabel("")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (between two steps)")
        self.cancel_button.setEnabled(False)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar.setMaximumWidth(110)
        row = QHBoxLayout(self)  # one line: message (and time left), bar, Cancel
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.bar)
        row.addWidget(self.cancel_button)

    def show_progress(self, report: Progress) -> None:
        now = monotonic()
        if self._phase is None or self._phase[0] != report.message or report.done < self._phase[1]:
            self._phase = (report.message, report.done, now)
        text = report.message
        _message, first, started = self._phase
        if report.total > 0 and report.done > first and report.done < report.total:
            pace = (now - started) / (report.done - first)
            text = f"{text} - {time_left(pace * (report.total - report.done))}"
        self.label.setText(text)
        self.bar.setTextVisible(report.total > 0)
        if report.total > 0:
            self.bar.setRange(0, report.total)
            self.bar.setValue(min(report.done, report.total))
        else:
            self.bar.setRange(0, 0)  # busy indicator

    def tracker(self, source: str):
        """A ``busy(bool)`` callback for one job runner; the row is idle when all are."""

        def busy(state: bool) -> None:
            self.set_busy(state, source)

        return busy

    def set_busy(self, busy: bool, source: str = "job") -> None:
        if busy:
            self._busy.add(source)
        else:
            self._busy.discard(source)
        busy = bool(self._busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self._phase = None
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setTextVisible(False)
            self.label.setText(self._idle_text)

    def set_idle_text(self, text: str) -> None:
        """What the message shows while no job runs (the model in use)."""
        self._idle_text = text
        if not self._busy:
            self.label.setText(text)


class Section(QWidget):
    """A titled part of a dock that folds away: a header button and a form below it.

    Args:
        title: the header text.
        expanded: whether the form shows at first.
    """

    def __init__(self, title: str, expanded: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(expanded)
        self.header.setAutoRaise(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.header.setStyleSheet("QToolButton { font-weight: bold; text-align: left; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(8, 0, 0, 4)
        self.form.setVerticalSpacing(3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        self.header.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        """Show (True) or fold away (False) the section's form."""
        fold_under(self.header, self.body, expanded)


def fold_under(button: QToolButton, body: QWidget, shown: bool) -> bool:
    """Show (True) or fold (False) ``body`` below a checkable arrow ``button`` whose
    ``toggled`` calls back here. Returns False when only the button changed (its
    ``toggled`` then comes back and does the rest)."""
    if button.isChecked() != shown:
        button.setChecked(shown)
        return False
    button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
    body.setVisible(shown)
    return True


def spin_box(kind: type, low: float, high: float, value: float, tip: str, step: float = 0.01) -> Any:
    """A ``QSpinBox``/``QDoubleSpinBox`` with its range, value, tooltip (and step for doubles)."""
    box = kind()
    box.setRange(low, high)
    if kind is QDoubleSpinBox:
        box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def embeddings_field() -> QLineEdit:
    """The "embeddings file" field: a ``.zarr`` folder for a layer's tile embeddings
    (``PlaneSource.embeddings``); empty keeps them in memory."""
    field = QLineEdit()
    field.setPlaceholderText("empty: in memory; e.g. /data/cells.emb.zarr")
    field.setToolTip(
        "A .zarr folder that keeps the image's tile embeddings: created on first use, "
        "reused when the same image is opened again (nothing is encoded twice)")
    return field
