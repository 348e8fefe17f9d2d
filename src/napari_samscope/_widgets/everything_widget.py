"""The "Segment everything" dock widget: automatic masks on a plane or a whole stack.

Shares the viewer's model session with the main widget. On a stack, every plane is
segmented and ids are linked across planes by overlap, so one object keeps one id
through z. Results go to the plugin's Labels layer "SAM everything".

Modes (``_napari.instances.EverythingMode``): the grid of point prompts (AMG), and, for a
model with an instance decoder (micro-sam's ``*_lm``, ``*_em_organelles``, ...), AIS and
APG; the mode choice and the "Instance decoder" parameters (micro-sam's names) are shown
only for such a model.

Per-model defaults: the threshold fields start at the recommended values of the model
in use (the registry's ``ModelSpec.everything_defaults``; the official values for
official models). When another model is loaded, every field the user has not edited
follows the new model's recommended value; a field the user changed keeps the user's
value. "Model defaults" puts every field back to the current model's values.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QPushButton, QSpinBox

from napari_samscope._napari import layers as plugin_layers
from napari_samscope._napari.coords import current_geometry
from napari_samscope._napari.images import ImageSettings, PlaneSource
from napari_samscope._napari.instances import (
    DECODER_DEFAULTS,
    DECODER_FIELDS,
    EverythingMode,
    decoder_params,
    everything_planes_iter,
    model_has_decoder,
    require_decoder,
)
from napari_samscope._napari.labels import count_ids, write_planes
from napari_samscope._napari.options import Scope, parse
from napari_samscope._widgets.dock_lifecycle import SamscopeDock
from napari_samscope._widgets.main_ui import NORMALIZATION_LABELS
from napari_samscope._widgets.panels import Section, embeddings_field, spin_box
from napari_samscope._widgets.workers import notify_error, notify_info, objects_text

__all__ = ["SegmentEverythingWidget", "EVERYTHING_NAME"]

EVERYTHING_NAME = "SAM everything"
#: Scopes as shown.
SCOPE_LABELS = {"current plane": Scope.PLANE,
                "all planes of the stack (ids linked through z)": Scope.STACK}
#: Modes as shown.
MODE_LABELS = {"grid of point prompts (AMG)": EverythingMode.AMG,
               "instance decoder (AIS)": EverythingMode.AIS,
               "decoder prompts (APG)": EverythingMode.APG}
#: The official defaults of the parameters shown (``core.everything.EVERYTHING_DEFAULTS``,
#: repeated so that building the widget does not import torch; a test checks they agree).
OFFICIAL_SHOWN = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
}


def recommended_params(sam: Any = None, model_name: str | None = None) -> dict[str, Any]:
    """The recommended segment-everything parameters of the loaded ``sam`` (a ``SAM``),
    or, when none is loaded, of the registry model ``model_name`` (default: the
    project's default model). Only the model's own values: ``{}`` for official models,
    models given by path and unknown names."""
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, ModelSpec, lookup

    if sam is not None:
        spec = getattr(sam, "spec", None)
    else:
        spec = lookup(model_name or DEFAULT_MODEL)
    return spec.everything_params() if isinstance(spec, ModelSpec) else {}



class SegmentEverythingWidget(SamscopeDock):
    """Segment everything in an image layer's current plane or whole stack.

    Drive it from code with :meth:`run` (``scope="plane"`` or ``"stack"``).
    """

    #: Emitted when "SAM everything" shows a new result.
    finished = Signal()

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        napari_viewer = self.viewer
        self.runner = self.add_job_runner()

        import napari.layers as nl

        self.image = self.layer_combo("image", nl.Image)
        self.normalization = QComboBox()
        self.normalization.addItems(list(NORMALIZATION_LABELS))
        self.points_per_side = spin_box(QSpinBox, 1, 128, 32, "Grid of point prompts per side")
        self.pred_iou = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.88, "Keep masks whose predicted IoU is above")
        self.stability = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.95, "Keep masks at least this stable")
        self.nms = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.7, "Drop a mask overlapping a better one more")
        self.min_area = spin_box(QSpinBox, 0, 1_000_000, 0, "Remove holes and islands smaller (pixels)")
        self.scope = QComboBox()
        for text, scope in SCOPE_LABELS.items():
            self.scope.addItem(text, scope)
        self.mode = QComboBox()
        for text, mode in MODE_LABELS.items():
            self.mode.addItem(text, mode)
        self.mode.setToolTip("AIS and APG use the model's instance decoder (micro-sam models)")
        self.embeddings = embeddings_field()
        self.tile_large = QCheckBox("tile large planes")
        self.tile_large.setChecked(True)
        self.tile_large.setToolTip(
            "Segment a plane larger than the model input at its scale tile by tile, so that "
            "small objects are not shrunk away (off: the plane is shrunk into one input)")
        self.decoder_fields = {
            f.name: spin_box(QSpinBox if f.integer else QDoubleSpinBox, f.low, f.high,
                             _default(f.name), f.tip)
            for f in DECODER_FIELDS
        }
        self.link_iou = spin_box(QDoubleSpinBox, 0.0, 1.0, 0.3, "Link objects of neighbouring planes "
                              "overlapping at least this much (stack)")
        self._fields = {
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou,
            "stability_score_thresh": self.stability,
            "box_nms_thresh": self.nms,
            "min_mask_region_area": self.min_area,
        }
        #: values last put in the fields by a model change (a differing field was edited)
        self._shown_defaults: dict[str, float] = {}
        #: the model's recommended parameters that have no field (passed as they are)
        self._hidden_defaults: dict[str, Any] = {}
        self.defaults_button = QPushButton("Model defaults")
        self.defaults_button.setToolTip(
            "Put the thresholds back to the values recommended for the current model")
        self.run_button = QPushButton("Segment everything")
        self.run_button.setToolTip("Run in the background; Cancel stops it between batches")

        main = Section("Segment everything")
        main.form.addRow("image", self.image.native)
        main.form.addRow("mode", self.mode)
        main.form.addRow("scope", self.scope)
        main.form.addRow(self.tile_large)
        main.form.addRow(self.run_button)
        self.thresholds = Section("Thresholds", expanded=False)
        form = self.thresholds.form
        form.addRow("normalisation", self.normalization)
        form.addRow("embeddings file", self.embeddings)
        form.addRow("points per side", self.points_per_side)
        form.addRow("predicted IoU >", self.pred_iou)
        form.addRow("stability >=", self.stability)
        form.addRow("box NMS", self.nms)
        form.addRow("min region area", self.min_area)
        form.addRow("link IoU (stack)", self.link_iou)
        form.addRow(self.defaults_button)
        self.decoder = Section("Instance decoder", expanded=False)
        for name, box in self.decoder_fields.items():
            self.decoder.form.addRow(name, box)
        for section in (main, self.thresholds, self.decoder):
            self.body.addWidget(section)
        self.body.addStretch(1)
        self.keep_in_view(main)

        self.run_button.clicked.connect(lambda: self.run())
        self.defaults_button.clicked.connect(lambda: self.apply_model_defaults(keep_edits=False))
        self.mode.currentIndexChanged.connect(lambda _i: self._show_mode())
        self.apply_model_defaults(keep_edits=False)
        self.link(self.session.model_changed, self._model_changed)
        self.link(self.session.selection_changed, lambda _name: self.update_modes())
        self._shown_min_size = self.decoder_fields["min_size"].value()
        self.update_modes()
        self.reset_choices()

    # ------------------------------------------------------------------ public API

    def model_defaults(self) -> dict[str, Any]:
        """The values the fields show for the current model: official defaults updated
        with its recommended ones (of the model selected to load when none is loaded)."""
        if self.session.sam is not None:
            recommended = recommended_params(self.session.sam)
        else:
            recommended = recommended_params(model_name=self.model_panel.selected_model())
        return {**OFFICIAL_SHOWN, **recommended}

    def apply_model_defaults(self, keep_edits: bool = True) -> None:
        """Show the current model's recommended values.

        With ``keep_edits`` a field whose value differs from what the previous model
        put there (the user edited it) keeps its value.
        """
        values = self.model_defaults()
        for name, box in self._fields.items():
            previous = self._shown_defaults.get(name)
            if keep_edits and previous is not None and not _same(box.value(), previous):
                continue
            box.setValue(values[name])
            self._shown_defaults[name] = box.value()
        if self.session.sam is not None:
            hidden = recommended_params(self.session.sam)
        else:
            hidden = recommended_params(model_name=self.model_panel.selected_model())
        self._hidden_defaults = {k: v for k, v in hidden.items() if k not in self._fields}

    def params(self) -> dict[str, Any]:
        """The segment-everything parameters chosen in the widget (plus the model's
        recommended values of parameters without a field)."""
        return {
            **self._hidden_defaults,
            "points_per_side": int(self.points_per_side.value()),
            "pred_iou_thresh": float(self.pred_iou.value()),
            "stability_score_thresh": float(self.stability.value()),
            "box_nms_thresh": float(self.nms.value()),
            "min_mask_region_area": int(self.min_area.value()),
        }

    def decoder_available(self) -> bool:
        """Whether the decoder modes are offered (the model has an instance decoder)."""
        return model_has_decoder(self.session.sam, self.model_panel.selected_model())

    def update_modes(self) -> None:
        """Offer the decoder modes only for a model with an instance decoder."""
        available = self.decoder_available()
        _show_row(self.mode, available)
        if not available and self.mode.currentData().uses_decoder:
            self.mode.setCurrentIndex(0)  # comes back through _show_mode
        self._show_mode()

    def decoder_values(self) -> dict[str, Any]:
        """The AIS / APG parameters of the current mode, micro-sam's names."""
        values = {name: box.value() for name, box in self.decoder_fields.items()}
        return decoder_params(self.mode.currentData(), values)

    def run(self, scope: Scope | str | None = None, mode: EverythingMode | str | None = None) -> None:
        """Segment everything on the current plane (``"plane"``) or the stack (``"stack"``),
        by ``mode`` (``"amg"``, ``"ais"``, ``"apg"``; default: the one chosen)."""
        scope = self.scope.currentData() if scope is None else parse(Scope, scope, "scope")
        if mode is not None:
            index = self.mode.findData(parse(EverythingMode, mode, "mode"))
            self.mode.setCurrentIndex(index)
        mode = self.mode.currentData()
        if not self.with_model(lambda: self.run(scope, mode)):  # load the chosen model, then run
            return
        try:
            image = self.image.value
            if image is None:
                raise ValueError("Choose an image layer first (add one to the viewer).")
            geometry = current_geometry(image, self.viewer.dims.order, self.viewer.dims.point)
            settings = ImageSettings(NORMALIZATION_LABELS[self.normalization.currentText()])
            source = PlaneSource.from_layer(image, geometry, settings,
                                            embeddings=self.embeddings.text(),
                                            tile_large=self.tile_large.isChecked())
            if scope is Scope.STACK and geometry.stack_axis is None:
                raise ValueError(f"'{image.name}' has a single plane; choose 'current plane'.")
            require_decoder(self.session.sam, mode)
            params = self.decoder_values() if mode.uses_decoder else self.params()
            predictor = self.session.new_predictor()
        except ValueError as error:
            notify_error(error)
            return
        sam, link, cache = self.session.sam, float(self.link_iou.value()), self.session.cache

        def job():
            return everything_planes_iter(sam, predictor, cache, source, scope, mode, params, link)

        self.start_job(self.runner, job, lambda planes: self._show(planes, image, geometry, mode),
                       label="segment everything")

    def reset_choices(self, event: Any = None) -> None:
        self.image.reset_choices()

    # ------------------------------------------------------------------ internals

    def _model_changed(self, sam: Any) -> None:
        self.apply_model_defaults(keep_edits=True)
        self.update_modes()

    def _show_mode(self) -> None:
        """Show the fields of the chosen mode; min_size follows the mode's default unless
        the user edited it."""
        mode = self.mode.currentData()
        for box in self._fields.values():
            _show_row(box, not mode.uses_decoder)
        _show_row(self.defaults_button, not mode.uses_decoder)
        self.decoder.setVisible(mode.uses_decoder)
        if mode.uses_decoder:
            for name, box in self.decoder_fields.items():
                _show_row(box, name in DECODER_DEFAULTS[mode])
            min_size = self.decoder_fields["min_size"]
            if _same(min_size.value(), self._shown_min_size):
                min_size.setValue(DECODER_DEFAULTS[mode]["min_size"])
                self._shown_min_size = min_size.value()

    def _show(self, planes: dict[Any, Any], image: Any, geometry: Any,
              mode: EverythingMode = EverythingMode.AMG) -> None:
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer '{image.name}' was removed while it was being "
                             "segmented; the result was discarded.")
        layer, _ = plugin_layers.ensure_plugin_labels(self.viewer, EVERYTHING_NAME, image, geometry)
        write_planes(layer, geometry, planes)
        what = "segment everything" + (f" ({mode.value.upper()})" if mode.uses_decoder else "")
        notify_info(f"{what}: {objects_text(count_ids(planes.values()))} on {len(planes)} "
                    f"plane(s) of '{image.name}'")
        self.finished.emit()


def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def _default(name: str) -> float:
    """The value a decoder field starts at (AIS's default, else APG's)."""
    return DECODER_DEFAULTS[EverythingMode.AIS].get(name, DECODER_DEFAULTS[EverythingMode.APG].get(name, 0))


def _show_row(field: Any, visible: bool) -> None:
    """Show or hide a form row: the field and its label."""
    field.setVisible(visible)
    form = field.parentWidget().layout() if field.parentWidget() is not None else None
    label = form.labelForField(field) if hasattr(form, "labelForField") else None
    if label is not None:
        label.setVisible(visible)
