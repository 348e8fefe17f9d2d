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
