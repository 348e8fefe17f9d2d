"""Small Qt panels shared by the samscope widgets: the model chooser and the progress row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_samscope._napari.session import DEVICES, ModelSession
from napari_samscope._widgets.workers import JobRunner, notify_info
from napari_samscope.core.progress import Progress

__all__ = ["ModelPanel", "ProgressRow"]

_CHECKPOINT_FILTER = "SAM checkpoints (*.pt *.pth *.ckpt *.bin);;All files (*)"


class ProgressRow(QWidget):
    """A progress bar with a message and a Cancel button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._busy: set[str] = set()
        self.label = QLabel("")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (between two steps)")
        self.cancel_button.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout.addWidget(self.label)
        layout.addLayout(row)

    def show_progress(self, report: Progress) -> None:
        self.label.setText(report.message)
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
            self.bar.setRange(0, 1)
            self.bar.setValue(0)
            self.bar.setTextVisible(False)
            self.label.setText("")


class ModelPanel(QGroupBox):
    """Model dropdown (registry, cached or not), "Load checkpoint...", device, Load.

    Loading runs in a worker; progress goes to ``progress`` (a :class:`ProgressRow`;
    its owner wires the Cancel button to ``runner.cancel``). Every widget of a viewer shows the same session, so a
    model loaded here is the model of all of them.
    """

    def __init__(self, session: ModelSession, progress: ProgressRow, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.session = session
        self.progress = progress
        self.runner = JobRunner(progress.show_progress, self._set_busy, background=True)
        self.model_box = QComboBox()
        self.model_box.setToolTip("Registry models; 'not cached' ones are downloaded once")
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICES))
        self.device_box.setToolTip("auto: CUDA, then Apple MPS, then CPU")
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the chosen model (in the background)")
        self.file_button = QPushButton("Load checkpoint...")
        self.file_button.setToolTip("Load a SAM / MobileSAM / samscope checkpoint file")
        self.status = QLabel("No model loaded")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.model_box, 1)
        row.addWidget(self.load_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.file_button)
        row.addWidget(QLabel("Device:"))
        row.addWidget(self.device_box)
        layout.addLayout(row)
        layout.addWidget(self.status)

        self.load_button.clicked.connect(lambda: self.load(self.selected_model()))
        self.file_button.clicked.connect(self._choose_file)
        session.models_changed.connect(self.refresh_models)
        session.model_changed.connect(self._show_model)
        self.refresh_models()
        self._show_model(session.sam)

    # ------------------------------------------------------------------ public

    def refresh_models(self) -> None:
        """Re-read the registry (cached state, models added by other widgets)."""
        current = self.selected_model()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for choice in self.session.models():
            self.model_box.addItem(choice.label, choice.name)
            self.model_box.setItemData(self.model_box.count() - 1, choice.description, 3)
        if current is not None and self.model_box.findData(current) >= 0:
            self.model_box.setCurrentIndex(self.model_box.findData(current))
        self.model_box.blockSignals(False)

    def selected_model(self) -> str | None:
        data = self.model_box.currentData()
        return None if data is None else str(data)

    def device(self) -> str:
        return self.device_box.currentText()

    def load(self, model: str | Path | None, device: str | None = None, then: Any = None) -> Any:
        """Load ``model`` (registry name or file) in a worker; ``then()`` runs after success."""
        worker_device = device or self.device()

        def job():
            return self.session.load_iter(model, worker_device)

        def done(loaded: Any) -> None:
            self.session.device = worker_device
            self.session.set_model(loaded)
            self.refresh_models()  # a download makes a model 'cached'
            notify_info(f"Model '{loaded.name}' loaded on {loaded.device}.")
            if then is not None:
                then()

        self.status.setText(f"Loading {model}...")
        self.runner.start(job, done)
        return self.runner.worker

    def shutdown(self) -> None:
        self.runner.shutdown()

    # ------------------------------------------------------------------ internals

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a SAM checkpoint", "", _CHECKPOINT_FILTER)
        if path:
            self.load(Path(path))

    def _set_busy(self, busy: bool) -> None:
        self.progress.set_busy(busy, "model")
        self.load_button.setEnabled(not busy)
        self.file_button.setEnabled(not busy)
        if not busy:
            self._show_model(self.session.sam)

    def _show_model(self, sam: Any) -> None:
        if sam is None:
            self.status.setText("No model loaded")
        else:
            self.status.setText(f"Loaded: {sam.name} on {sam.device}")


def spin_box(kind: type, low: float, high: float, value: float, tip: str, step: float = 0.01) -> Any:
    """A ``QSpinBox``/``QDoubleSpinBox`` with its range, value, tooltip (and step for doubles)."""
    box = kind()
    box.setRange(low, high)
    if kind is QDoubleSpinBox:
        box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box
