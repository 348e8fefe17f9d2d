"""Point refinement in napari: the session's predictors take the loaded model's
``refine_points`` (the default model's choice, or what the user set on the ``SAM``)."""

from dataclasses import replace

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("setting", [None, False, True])
def test_the_sessions_predictors_take_the_models_refinement(viewer, tiny_sam_factory, setting):
    from napari_samscope import SAM
    from napari_samscope.core.weights.registry import lookup

    spec = replace(lookup("samscope_nuclei"), input_scale=None)  # declares refine_points
    model = SAM.from_sam(tiny_sam_factory("vit", 64), "tiny", spec=spec)
    model.refine_points = setting
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(model)
    expected = True if setting is None else setting
    assert widget.session.predictor.refine_points is expected
    assert widget.session.new_predictor().refine_points is expected


def test_a_model_without_the_declaration_is_not_refined(viewer, tiny_sam_factory):
    from napari_samscope import SAM

    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(SAM.from_sam(tiny_sam_factory("vit", 64), "tiny"))
    assert widget.session.predictor.refine_points is False


def test_a_click_with_the_default_model_is_refined_on_the_canvas(make_napari_viewer, qtbot):
    """A real mouse click on a nucleus with the shipped model: the preview is the refined
    mask (as the predictor gives it for the same click) and it covers the nucleus."""
    import numpy as np
    from widget_helpers import click, wait_idle

    from napari_samscope import SAM
    from napari_samscope.core.predict.predictor import Predictor
    from napari_samscope.core.synthetic import make_nuclei_2d

    image, truth = make_nuclei_2d((256, 256), seed=4)
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    target = truth == ids[np.argmax(areas)]  # the largest nucleus
    rows, cols = np.nonzero(target)
    inside = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    row, col = int(rows[inside]), int(cols[inside])

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    layer = viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(SAM())
    assert widget.session.predictor.refine_points is True
    qtbot.waitUntil(lambda: widget.points_layer is not None, timeout=10_000)
    viewer.reset_view()
    qtbot.wait(50)
    click(qtbot, viewer, layer, (row, col))
    wait_idle(qtbot, widget, timeout=60_000)
    preview = viewer.layers["SAM preview"].data > 0

    def iou(a, b):
        return (a & b).sum() / max((a | b).sum(), 1)

    figures = {}
    for refine in (True, False):
        direct = Predictor(SAM(), refine_points=refine, zoom=1)  # napari does not zoom unless asked
        direct.set_image(image, contrast_limits=layer.contrast_limits)
        figures[refine] = direct.predict(points=[[col, row]]).masks[0]
    assert iou(preview, target) > 0.8
    assert iou(preview, figures[True]) > 0.97
    assert iou(preview, figures[True]) > iou(preview, figures[False])


@pytest.mark.parametrize("setting", [None, 1, 2.5])
def test_the_session_zooms_only_when_the_model_is_told_to(viewer, tiny_sam_factory, setting):
    from napari_samscope import SAM
    from napari_samscope.core.weights.registry import lookup

    spec = replace(lookup("samscope_nuclei"), input_scale=None)  # declares zoom=2
    model = SAM.from_sam(tiny_sam_factory("vit", 64), "tiny", spec=spec)
    model.zoom = setting
    _, widget = viewer.window.add_plugin_dock_widget("napari-samscope", "Segment Anything")
    widget.set_model(model)
    expected = 1.0 if setting is None else float(setting)
    assert widget.session.predictor.zoom == expected
    assert widget.session.new_predictor().zoom == expected

