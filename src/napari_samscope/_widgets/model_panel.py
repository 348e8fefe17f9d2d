"""The model line every samscope dock shows: the model, Load and a checkpoint file, with
the model options (device, input scale, flip averaging, zoom) folded under "options"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_samscope._napari.options import SCALE_CHOICES
from napari_samscope._napari.session import DEVICES, ModelSession
from napari_samscope._widgets.panels import ProgressRow, fold_under
from napari_samscope._widgets.workers import JobRunner, notify_error, notify_info

__all__ = ["ModelPanel", "option_box", "show_choice", "zoom_text"]

_CHECKPOINT_FILTER = "SAM checkpoints (*.pt *.pth *.ckpt *.bin);;All files (*)"


def option_box(choices: list[tuple[str, Any]], tip: str) -> QComboBox:
    """A drop-down of ``(text, value)`` choices, wide enough for its longest text beside
    napari's 26 px drop-down arrow and padding (Qt's size hint leaves them out)."""
    box = QComboBox()
    for text, value in choices:
        box.addItem(text, value)
    box.setMinimumWidth(max(box.fontMetrics().horizontalAdvance(t) for t, _ in choices) + 60)
    box.setToolTip(tip)
    return box


def show_choice(box: QComboBox, value: Any, text: str) -> None:
    """Select ``value`` in an option box without emitting; a value the box does not list
    (such as a zoom set in the console) is added to it as ``text``."""
    index = box.findData(value)
    if index < 0:
        box.addItem(text, value)
        index = box.count() - 1
    if index != box.currentIndex():
        box.blockSignals(True)
        box.setCurrentIndex(index)
        box.blockSignals(False)


def zoom_text(zoom: float | None) -> str:
    """The zoom box's text for a session's zoom: ``"zoom auto"``, ``"zoom off"``, ``"zoom 2"``."""
    return f"zoom {'auto' if zoom is None else 'off' if zoom == 1 else f'{zoom:g}'}"


class ModelPanel(QWidget):
    """The model line: model dropdown, "options", Load and "..." (a checkpoint file); below
    it, folded until "options" is pressed, the option row: device, input scale, flip
    averaging and zoom. Folded, the line is as narrow as a dock can be (every dock shows
    one, side by side beside the canvas); the button's tooltip lists the options in use.

    Every samscope dock of a viewer shows one of these over the viewer's shared
    session: the chosen model is the session's (choosing it in one dock chooses it in
    all), so the docks behave as one model panel. Loading runs in a worker; progress
    goes to ``progress`` (a :class:`ProgressRow`; its owner wires Cancel to
    ``runner.cancel``).
    """

    def __init__(self, session: ModelSession, progress: ProgressRow, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self.progress = progress
        self.runner = JobRunner(progress.show_progress, self._set_busy, background=True)
        self.model_box = QComboBox()
        self.model_box.setToolTip("The model every samscope dock uses; 'not cached' ones are "
                                  "downloaded once. Actions load it when needed.")
        self.model_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(12)
        self.model_box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICES))
        self.device_box.setToolTip("Device: auto = CUDA, then Apple MPS, then CPU")
        #: How images go into the model input; editable: a magnification may be typed.
        self.scale_box = QComboBox()
        self.scale_box.setEditable(True)
        self.scale_box.addItems(list(SCALE_CHOICES))
        self.scale_box.setCurrentText(str(session.scale))
        self.scale_box.setMinimumContentsLength(4)
        self.scale_box.setToolTip(
            "Input scale: 'auto' keeps images at the magnification the model was trained for "
            "(small crops are not blown up; models that declare none fill the input), 'fill' "
            "resizes the longest side to the model input (SAM's way), a number is the "
            "magnification. Prompts and masks stay in image pixels."
        )
        #: Flip averaging (core.predict.flips): None = the model's own choice.
        self.flips_box = option_box(
            [(f"flips {'auto' if f is None else f}", f) for f in (None, 1, 2, 4)],
            "Flip averaging: every prompt is decoded on the image and on its flipped copies "
            "(2: upside down; 4: also left-right) and the masks are averaged: outlines follow "
            "the objects more closely, for 2 or 4 times the encoding time. 'auto' is the "
            "model's choice (2 for the default model, 1 for SAM and micro-sam models).",
        )
        #: Zoom (core.predict.zoom): 1.0 = off (the session's default), None = the model's choice.
        self.zoom_box = option_box(
            [(zoom_text(z), z) for z in (1.0, None, 2.0, 4.0)],
            "Zoom: boxes and refined clicks are also decoded on a crop of the plane magnified "
            "2 or 4 times more, for sharper outlines. The first click in each region of a "
            "plane encodes its crop (about a third of a second on a CPU); later ones there "
            "reuse it. 'auto' is the model's choice (2 for the default model, 1 (off) for "
            "SAM and micro-sam models).",
        )
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the chosen model now (in the background)")
        self.file_button = QPushButton("...")
        self.file_button.setToolTip("Load a SAM / MobileSAM / samscope checkpoint file")
        self.file_button.setMaximumWidth(32)
        #: The model state; shown in the progress row while no job runs (one line less).
        self.status = QLabel("No model loaded", self)
        self.status.setVisible(False)

        #: Shows or folds the option row (folded at first).
        self.options_button = QToolButton()
        self.options_button.setText("options")
        self.options_button.setCheckable(True)
        self.options_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        #: The option row: device, input scale, flips, zoom.
        self.options = QWidget(self)
        options_row = QHBoxLayout(self.options)
        options_row.setContentsMargins(0, 0, 0, 0)
        for box in (self.device_box, self.scale_box, self.flips_box, self.zoom_box):
            options_row.addWidget(box, 1)

        line = QHBoxLayout()
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(self.model_box, 1)
        line.addWidget(self.options_button)
        line.addWidget(self.load_button)
        line.addWidget(self.file_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(line)
        column.addWidget(self.options)
        self._show_flips(session.flips)
        self._show_zoom(session.zoom)
        self.options_button.toggled.connect(self.show_options)
        self.show_options(False)
        self.device_box.currentTextChanged.connect(lambda _text: self._describe_options())

        self.load_button.clicked.connect(lambda: self.load(self.selected_model()))
        self.file_button.clicked.connect(self._choose_file)
        self.model_box.currentIndexChanged.connect(self._chosen)
        self.scale_box.activated.connect(lambda _index: self.choose_scale(self.scale_box.currentText()))
        self.scale_box.lineEdit().editingFinished.connect(
            lambda: self.choose_scale(self.scale_box.currentText())
        )
        session.scale_changed.connect(self._show_scale)
        self.flips_box.activated.connect(lambda index: self.session.set_flips(self.flips_box.itemData(index)))
        session.flips_changed.connect(self._show_flips)
        self.zoom_box.activated.connect(lambda index: self.session.set_zoom(self.zoom_box.itemData(index)))
        session.zoom_changed.connect(self._show_zoom)
        session.models_changed.connect(self.refresh_models)
        session.model_changed.connect(self._show_model)
        session.selection_changed.connect(self._select)
        self.refresh_models()
        self._show_model(session.sam)

    # ------------------------------------------------------------------ public

    def refresh_models(self) -> None:
        """Re-read the registry (cached state, models added by other widgets)."""
        current = self.session.selected_model or self.selected_model()
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

    def show_options(self, shown: bool) -> None:
        """Unfold (True) or fold (False) the option row; the button follows."""
        if fold_under(self.options_button, self.options, shown):
            self._describe_options()

    def choose_scale(self, text: str) -> None:
        """Use the input scale ``text`` for the viewer's session; a bad one is a
        notification and the box shows the current scale again."""
        if text.strip() == str(self.session.scale):
            return
        try:
            self.session.set_scale(text)
        except ValueError as error:
            notify_error(error)
            self._show_scale(self.session.scale)

    def load(self, model: str | Path | None, device: str | None = None, then: Any = None) -> Any:
        """Load ``model`` (registry name or file) in a worker; ``then()`` runs after success.

        While another dock of the viewer is loading a model, ``then`` waits for that
        model instead of loading a second one.
        """
        if self.session.loading and not self.runner.busy:
            if then is not None:
                self.session.after_load(then)
            return None
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
        self.progress.set_idle_text(self.status.text())
        self.runner.start(job, done, label=f"loading the model {model}")
        return self.runner.worker

    def shutdown(self) -> None:
        self.runner.shutdown()
        self.session.models_changed.disconnect(self.refresh_models)
        self.session.model_changed.disconnect(self._show_model)
        self.session.selection_changed.disconnect(self._select)
        self.session.scale_changed.disconnect(self._show_scale)
        self.session.flips_changed.disconnect(self._show_flips)
        self.session.zoom_changed.disconnect(self._show_zoom)

    # ------------------------------------------------------------------ internals

    def _chosen(self, _index: int) -> None:
        self.session.select_model(self.selected_model())

    def _select(self, name: str | None) -> None:
        index = self.model_box.findData(name) if name is not None else -1
        if index >= 0 and index != self.model_box.currentIndex():
            self.model_box.blockSignals(True)
            self.model_box.setCurrentIndex(index)
            self.model_box.blockSignals(False)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a SAM checkpoint", "", _CHECKPOINT_FILTER)
        if path:
            self.load(Path(path))

    def _show_scale(self, scale: Any) -> None:
        if self.scale_box.currentText() != str(scale):
            self.scale_box.blockSignals(True)
            self.scale_box.setCurrentText(str(scale))
            self.scale_box.blockSignals(False)
        self._describe_options()

    def _show_flips(self, flips: Any) -> None:
        show_choice(self.flips_box, flips, f"flips {flips}")
        self._describe_options()

    def _show_zoom(self, zoom: Any) -> None:
        show_choice(self.zoom_box, zoom, zoom_text(zoom))
        self._describe_options()

    def _describe_options(self) -> None:
        """The options button's tooltip: the options in use, readable while folded."""
        self.options_button.setToolTip(
            f"Model options ({'hide' if self.options_button.isChecked() else 'show'}): device "
            f"{self.device_box.currentText()}, scale {self.scale_box.currentText()}, "
            f"{self.flips_box.currentText()}, {self.zoom_box.currentText()}"
        )

    def _set_busy(self, busy: bool) -> None:
        self.session.set_loading(busy)
        self.progress.set_busy(busy, "model")
        self.load_button.setEnabled(not busy)
        self.file_button.setEnabled(not busy)
        if not busy:
            self._show_model(self.session.sam)

    def _show_model(self, sam: Any) -> None:
        if sam is None:
            self.status.setText("No model loaded (actions load the chosen one)")
        else:
            self.status.setText(f"Loaded: {sam.name} on {sam.device}")
        self.progress.set_idle_text(self.status.text())
