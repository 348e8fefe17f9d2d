"""The controls of the main widget (layout only; behaviour lives in ``main_widget``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_samscope._napari.images import ImageSettings, Normalization
from napari_samscope._napari.options import PropagationMode
from napari_samscope._napari.session import DEFAULT_CACHE_MB
from napari_samscope._widgets.panels import Section, embeddings_field

__all__ = ["MainControls", "NORMALIZATION_LABELS", "PROPAGATION_LABELS", "NEW_LABELS_CHOICE"]

#: Normalisation choices as shown, in order.
NORMALIZATION_LABELS = {
    "layer contrast limits": Normalization.CONTRAST,
    "automatic percentiles (0.5-99.5%)": Normalization.PERCENTILE,
    "min / max": Normalization.MINMAX,
}
#: Propagation modes as shown.
PROPAGATION_LABELS = {
    "mask prompt": PropagationMode.MASK,
    "box": PropagationMode.BOX,
    "points": PropagationMode.POINTS,
}
#: What an empty "commit into" choice means.
NEW_LABELS_CHOICE = "new layer 'SAM labels'"


def _button(text: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button


class MainControls:
    """Every control of :class:`SegmentAnythingWidget`, laid out in group boxes.

    Args:
        layer_choices: ``kind -> callable`` returning ``[(name, layer), ...]`` for the
            magicgui layer dropdowns (kinds: image, points, shapes, labels).
    """

    def __init__(self, layer_choices: dict[str, Callable[[Any], list[tuple[str, Any]]]]) -> None:
        # image
        self.image = ComboBox(label="image", choices=layer_choices["image"])
        self.image.tooltip = "The image to segment: grey, RGB or multichannel, any dtype, 2D to nD"
        self.normalization = QComboBox()
        self.normalization.addItems(list(NORMALIZATION_LABELS))
        self.normalization.setToolTip("How intensities become SAM's 8-bit input")
        self.channel_axis = QComboBox()
        self.channel_axis.setToolTip("The layer axis that holds channels (none: grey or RGB)")
        self.channels = QLineEdit()
        self.channels.setPlaceholderText("e.g. 0,1,2")
        self.channels.setToolTip("Channels shown as R,G,B (needed with more than 3 channels)")
        self.embeddings = embeddings_field()
        # prompts
        self.points = ComboBox(label="points", choices=layer_choices["points"], nullable=True)
        self.points.tooltip = "Point prompts; T toggles the polarity (green +, red -)"
        self.shapes = ComboBox(label="boxes", choices=layer_choices["shapes"], nullable=True)
        self.shapes.tooltip = "Rectangles = boxes; polygons and ellipses = box + mask"
        self.new_prompts = _button("New prompt layers", "Create 'SAM points' and 'SAM boxes'")
        self.live = QCheckBox("Live preview")
        self.live.setChecked(True)
        self.live.setToolTip("Re-segment whenever the prompts change (a quick one-pass draft shows "
                             "first when the model's full decode takes several passes; only the "
                             "full result is committed)")
        self.target = ComboBox(label="target", choices=layer_choices["labels"], nullable=True)
        self.target.null_string = NEW_LABELS_CHOICE
        self.points.null_string = self.shapes.null_string = "none"
        self.target.tooltip = "Labels layer to commit into (empty: create 'SAM labels')"
        self.overwrite = QCheckBox("overwrite")
        self.overwrite.setToolTip("Overwrite existing labels; off: committed objects only fill "
                                  "background pixels")
        self.segment = _button("Segment (S)", "Segment the prompts now [S]")
        self.commit = _button("Commit (C)", "Write the preview into the labels layer [C]")
        self.clear = _button("Clear (Shift+C)", "Remove all prompts [Shift+C]")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # stacks
        self.cache_mb = QSpinBox()
        self.cache_mb.setRange(0, 1_000_000)
        self.cache_mb.setValue(DEFAULT_CACHE_MB)
        self.cache_mb.setSuffix(" MB")
        self.cache_mb.setToolTip("Bound of the embedding cache (least recently used planes go first)")
        self.cache_label = QLabel("embeddings: 0 MB")
        self.cache_label.setToolTip("Embeddings held in memory, updated while they are computed")
        self.precompute = _button(
            "Precompute embeddings", "Encode every plane of the stack now (can be cancelled)"
        )
        self.mode = QComboBox()
        self.mode.addItems(list(PROPAGATION_LABELS))
        self.mode.setToolTip("How each plane prompts the next one")
        self.iou = QDoubleSpinBox()
        self.iou.setRange(0.0, 1.0)
        self.iou.setSingleStep(0.05)
        self.iou.setValue(0.5)
        self.iou.setToolTip("Stop when a plane's mask overlaps the previous one less than this")
        self.propagate = _button(
            "Segment all slices (Shift+S)",
            "Follow the prompted object through the stack [Shift+S]; a plane with a single "
            "negative point stops it; between two prompted planes both sides fill in",
        )

    def build(self, body: QVBoxLayout) -> None:
        """Lay the controls out in collapsible sections added to ``body``: what a click
        needs first, the image conversion and the stack tools folded away."""
        self.prompts_section = Section("Segment")
        form = self.prompts_section.form
        form.addRow("image", self.image.native)
        form.addRow("points", self.points.native)
        form.addRow("boxes", self.shapes.native)
        row = QHBoxLayout()
        for button in (self.segment, self.commit, self.clear):
            row.addWidget(button)
        form.addRow(row)
        form.addRow(self.status)
        row = QHBoxLayout()
        row.addWidget(self.target.native, 1)
        row.addWidget(self.overwrite)
        form.addRow("commit into", row)
        row = QHBoxLayout()
        row.addWidget(self.new_prompts)
        row.addWidget(self.live)
        form.addRow(row)
        body.addWidget(self.prompts_section)

        self.image_section = Section("Image conversion", expanded=False)
        form = self.image_section.form
        form.addRow("normalisation", self.normalization)
        row = QHBoxLayout()
        row.addWidget(self.channel_axis)
        row.addWidget(QLabel("R,G,B"))
        row.addWidget(self.channels, 1)
        form.addRow("channel axis", row)
        form.addRow("embeddings file", self.embeddings)
        body.addWidget(self.image_section)

        self.stack_section = Section("3D stacks and time series", expanded=False)
        form = self.stack_section.form
        row = QHBoxLayout()
        row.addWidget(self.cache_mb)
        row.addWidget(self.cache_label, 1)
        form.addRow("cache", row)
        form.addRow(self.precompute)
        row = QHBoxLayout()
        row.addWidget(self.mode, 1)
        row.addWidget(QLabel("stop below IoU"))
        row.addWidget(self.iou)
        form.addRow("propagate with", row)
        form.addRow(self.propagate)
        body.addWidget(self.stack_section)
        body.addStretch(1)

    def set_axes(self, ndim: int) -> None:
        """Offer ``none`` and the axes ``0 .. ndim-1`` as the channel axis."""
        self.channel_axis.clear()
        self.channel_axis.addItem("none", None)
        for axis in range(ndim):
            self.channel_axis.addItem(str(axis), axis)

    def settings(self) -> ImageSettings:
        """The image conversion settings chosen here.

        Raises:
            ValueError: the channels field is not a comma-separated list of integers.
        """
        text = self.channels.text().strip()
        axis = self.channel_axis.currentData()
        try:
            channels = tuple(int(c) for c in text.replace(" ", "").split(",") if c) or None
        except ValueError:
            raise ValueError(f"Channels must be integers separated by commas, not {text!r}.") from None
        return ImageSettings(
            normalization=NORMALIZATION_LABELS[self.normalization.currentText()],
            channel_axis=None if axis is None else int(axis),
            channels=channels if axis is not None else None,
        )

    def layer_combos(self) -> list[ComboBox]:
        return [self.image, self.points, self.shapes, self.target]
