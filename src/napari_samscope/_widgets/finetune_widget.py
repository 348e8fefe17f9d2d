"""The "Fine-tune SAM" dock widget: train a model on the image + Labels pairs you annotated.

Training runs ``core.training.train_iter`` in a napari worker (the GUI stays live),
plots the loss and the first-prompt IoU as it goes, stops between two steps on Cancel
(nothing is written then), and at the end writes a checkpoint and adds it to the model
dropdown of every samscope widget of the viewer (through the shared model session).
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
)

from napari_samscope._widgets.dock_lifecycle import SamscopeDock
from napari_samscope._widgets.loss_plot import LossPlot
from napari_samscope._widgets.panels import Section
from napari_samscope._widgets.workers import JobRunner, notify_error, notify_info
from napari_samscope.core.progress import Progress

__all__ = ["FineTuneWidget", "LossPlot"]

#: Dropdown entry for the model the session is using.
CURRENT_MODEL = "<model in use>"
#: Default number of training steps: a few minutes on a CPU (a GPU takes more in stride).
DEFAULT_STEPS = 20

_TRAINABLE = {
    "mask decoder": "decoder",
    "decoder + prompt encoder": "decoder+prompt",
    "everything (slow)": "all",
}


def _layer_arrays(image: Any, labels: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Copies of the 2D planes of an Image layer and its Labels layer that hold objects."""
    data = image.data[0] if getattr(image, "multiscale", False) else image.data
    pixels = np.array(data)
    label_data = np.array(labels.data[0] if getattr(labels, "multiscale", False) else labels.data)
    spatial = pixels.shape[:-1] if image.rgb else pixels.shape
    if spatial != label_data.shape:
        raise ValueError(
            f"The image '{image.name}' is {spatial} but the labels '{labels.name}' are "
            f"{label_data.shape}; choose a Labels layer drawn on this image."
        )
    if label_data.ndim < 2:
        raise ValueError(f"The labels '{labels.name}' are not an image.")
    plane_shape = label_data.shape[-2:]
    pixels = pixels.reshape(-1, *plane_shape, *pixels.shape[len(spatial):])
    label_data = label_data.reshape(-1, *plane_shape)
    keep = [z for z in range(label_data.shape[0]) if label_data[z].any()]
    if not keep:
        raise ValueError(
            f"The labels '{labels.name}' hold no objects yet; paint some objects of "
            f"'{image.name}' (each with its own label id) first."
        )
    return [pixels[z] for z in keep], [label_data[z] for z in keep]


class FineTuneWidget(SamscopeDock):
    """Fine-tune a SAM-family model on image + Labels layer pairs of the viewer.

    Drive it from code: :meth:`add_pair`, then :meth:`train` (optionally with a model
    object and :class:`~napari_samscope.core.training.TrainConfig` overrides).
    ``finished`` is emitted with the checkpoint path once the model is registered.
    """

    #: Emitted with the written checkpoint path after a successful run.
    finished = Signal(object)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer, model_line=False)  # "start from" chooses the model
        napari_viewer = self.viewer
        self.pairs: list[tuple[Any, Any]] = []
        self.result: Any = None
        self.plot = LossPlot()
        self.runner = self.add_runner(JobRunner(self._on_progress, self._set_busy))
        #: the "save to" path the widget wrote; a path typed by the user is kept
        self._auto_out = ""

        import napari.layers as nl

        self.image = self.layer_combo("image", nl.Image)
        self.labels = self.layer_combo("labels", nl.Labels)
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(54)
        self.add_button = QPushButton("Add pair")
        self.remove_button = QPushButton("Remove")
        self.model_box = QComboBox()
        self.model_box.setToolTip("The model to start from")
        self.trainable = QComboBox()
        self.trainable.addItems(list(_TRAINABLE))
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(DEFAULT_STEPS)
        self.steps.setToolTip("Training steps; the progress row shows the time left")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1e-1)
        self.lr.setSingleStep(1e-5)
        self.lr.setValue(1e-4)
        self.name = QLineEdit(self._free_name())
        self.out = QLineEdit()
        self.browse = QPushButton("...")
        self.use_now = QCheckBox("use it right away")
        self.use_now.setToolTip("Use the trained model in every samscope dock when training ends")
        self.use_now.setChecked(True)
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train in the background; Cancel stops between two steps")

        main = Section("Fine-tune on image + Labels pairs")
        form = main.form
        row = QHBoxLayout()
        row.addWidget(self.image.native, 1)
        row.addWidget(QLabel("+"))
        row.addWidget(self.labels.native, 1)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        form.addRow(row)
        form.addRow(self.pair_list)
        form.addRow("start from", self.model_box)
        row = QHBoxLayout()
        row.addWidget(self.train_button, 1)
        row.addWidget(self.use_now)
        form.addRow(row)
        options = Section("Training options", expanded=False)
        form = options.form
        row = QHBoxLayout()
        row.addWidget(self.steps)
        row.addWidget(QLabel("learning rate"))
        row.addWidget(self.lr)
        form.addRow("steps", row)
        form.addRow("train", self.trainable)
        form.addRow("model name", self.name)
        row = QHBoxLayout()
        row.addWidget(self.out, 1)
        row.addWidget(self.browse)
        form.addRow("save to", row)
        for section in (main, options):
            self.body.addWidget(section)
        self.body.addWidget(self.plot)
        self.body.addStretch(1)
        self.pair_list.setVisible(False)  # shown once there are pairs
        self.keep_in_view(main)

        self.add_button.clicked.connect(lambda: self.add_pair(self.image.value, self.labels.value))
        self.remove_button.clicked.connect(self._remove_selected)
        self.browse.clicked.connect(self._choose_output)
        self.name.textChanged.connect(self._default_output)
        self.train_button.clicked.connect(lambda: self.train())
        self.link(self.session.models_changed, self.refresh_models)
        self.link(self.session.model_changed, self._model_changed)
        self._default_output()
        self.refresh_models()
        self.reset_choices()

    # ------------------------------------------------------------------ public API

    def add_pair(self, image: Any, labels: Any) -> None:
        """Add an Image layer and the Labels layer annotating it to the training data."""
        if image is None or labels is None:
            notify_error("Choose an image layer and a Labels layer first.")
            return
        if any(i is image and la is labels for i, la in self.pairs):
            return
        self.pairs.append((image, labels))
        self.pair_list.addItem(f"{image.name}  +  {labels.name}")
        self.pair_list.setVisible(True)

    def _model_changed(self, sam: Any) -> None:
        """A model was loaded elsewhere: offer it first and preselect it (after this
        widget's own training, ``_done`` puts back the model that run started from)."""
        self.refresh_models()
        if sam is not None:
            self.model_box.setCurrentIndex(0)

    def refresh_models(self) -> None:
        """Re-read the registry; the model in use (if any) comes first and is preselected."""
        current = self.model_box.currentData()
        self.model_box.clear()
        if self.session.sam is not None:
            self.model_box.addItem(f"model in use ({self.session.model_name})", CURRENT_MODEL)
        for choice in self.session.models():
            self.model_box.addItem(choice.name, choice.name)
        index = self.model_box.findData(current) if current else -1
        self.model_box.setCurrentIndex(max(index, 0))

    def train(self, model: Any = None, **config: Any) -> None:
        """Start training on the pairs (or the chosen image + labels when none was added).

        Args:
            model: what to start from: a ``Sam`` module (copied), a ``SamConfig`` (fresh)
                or a registry name / path; default: the model chosen in the widget.
            **config: :class:`~napari_samscope.core.training.TrainConfig` fields that
                override the widget's values (e.g. ``objects_per_image=4``).
        """
        from napari_samscope.core.training import TrainConfig, TrainingData, train_iter

        try:
            pairs = self.pairs or [(self.image.value, self.labels.value)]
            if any(i is None or la is None for i, la in pairs):
                raise ValueError("Choose an image layer and its Labels layer (or add pairs) first.")
            images, labels, names = [], [], []
            for image, label_layer in pairs:
                planes, label_planes = _layer_arrays(image, label_layer)
                images += planes
                labels += label_planes
                names += [f"{image.name} [{i}]" for i in range(len(planes))]
            name = self.name.text().strip()
            if not name:
                raise ValueError("Give the trained model a name.")
            out = Path(self.out.text().strip()).expanduser()
            if not out.name:
                raise ValueError("Choose where to save the trained model.")
            options = {"steps": int(self.steps.value()), "lr": float(self.lr.value()),
                       "trainable": _TRAINABLE[self.trainable.currentText()],
                       "device": self._device(), **config}
            settings = TrainConfig(**options)
            start = self._start_model(model)
        except (ValueError, TypeError) as error:
            notify_error(error)
            return

        def job():
            data = TrainingData(images, labels, names=names)
            return (yield from train_iter(start, data, settings, out, meta={"name": name}))

        self.plot.clear()
        self.start_job(self.runner, job, partial(self._done, name, self._start_name()),
                       label="fine-tuning (nothing was written)")

    def reset_choices(self, event: Any = None) -> None:
        self.image.reset_choices()
        self.labels.reset_choices()
        alive = set(map(id, self.viewer.layers))
        if any(id(i) not in alive or id(la) not in alive for i, la in self.pairs):
            kept = [(i, la) for i, la in self.pairs if id(i) in alive and id(la) in alive]
            self.pairs = []
            self.pair_list.clear()
            for image, labels in kept:
                self.add_pair(image, labels)
            self.pair_list.setVisible(bool(self.pairs))

    # ------------------------------------------------------------------ internals

    def _device(self) -> str:
        return "auto" if self.session.device in (None, "", "auto") else str(self.session.device)

    def _start_model(self, model: Any) -> Any:
        if model is not None:
            from napari_samscope.core.modeling.sam import Sam

            return copy.deepcopy(model) if isinstance(model, Sam) else model
        chosen = self.model_box.currentData()
        if chosen is None:
            raise ValueError("Choose the model to start from.")
        if chosen == CURRENT_MODEL:
            sam = self.session.require_model()
            return copy.deepcopy(sam.model)  # never train the model the other widgets use
        return str(chosen)

    def _free_name(self) -> str:
        from napari_samscope.core.weights.registry import model_names

        taken = {n.lower() for n in model_names()}
        index = 1
        while f"finetuned_{index}" in taken:
            index += 1
        return f"finetuned_{index}"

    def _default_output(self) -> None:
        """Follow the model name in "save to", unless the user typed or chose a path."""
        from napari_samscope.core.weights.download import cache_dir

        if self.out.text().strip() not in ("", self._auto_out):
            return
        name = self.name.text().strip() or "finetuned"
        self._auto_out = str(cache_dir() / "finetuned" / f"{name}.pt")
        self.out.setText(self._auto_out)

    def _start_name(self) -> str | None:
        """The concrete model the chosen "start from" entry stands for now."""
        chosen = self.model_box.currentData()
        return self.session.model_name if chosen == CURRENT_MODEL else chosen

    def _choose_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the trained model", self.out.text(),
                                              "PyTorch checkpoint (*.pt)")
        if path:
            self.out.setText(path)

    def _remove_selected(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self.pairs):
            del self.pairs[row]
            self.pair_list.takeItem(row)
        self.pair_list.setVisible(bool(self.pairs))

    def _on_progress(self, report: Progress) -> None:
        self.progress.show_progress(report)
        if report.message == "training" and report.info:
            self.plot.add(report.done, report.info["loss"], report.info["iou"])

    def _set_busy(self, busy: bool) -> None:
        self.progress.set_busy(busy, "training")
        self.train_button.setEnabled(not busy)

    def _done(self, name: str, started_from: str | None, result: Any) -> None:
        self.result = result
        description = f"fine-tuned in napari ({len(result.history)} steps)"
        self.session.add_model(name, result.checkpoint, description)
        if self.use_now.isChecked():
            self.session.set_model(result.sam, name=name)
        index = self.model_box.findData(started_from) if started_from is not None else -1
        if index >= 0:  # the next run starts where this one did, not from the model just trained
            self.model_box.setCurrentIndex(index)
        notify_info(f"Model '{name}' trained and saved to {result.checkpoint}. The next run "
                    f"starts from {self.model_box.currentText()}.")
        saved = Path(result.checkpoint)
        self.name.setText(self._free_name())
        if self.out.text().strip() != self._auto_out:  # a typed path: next run beside it
            self.out.setText(str(saved.with_name(f"{self.name.text().strip()}{saved.suffix}")))
        self.finished.emit(result.checkpoint)
