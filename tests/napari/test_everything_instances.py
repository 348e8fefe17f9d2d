"""The "Segment everything" dock's instance-decoder modes (AIS, APG), through the real
manifest with a tiny random SAM and a tiny random instance decoder."""

import numpy as np
import pytest

from _decoder_model import blob_image, tiny_sam_with_decoder
from napari_samscope._napari.instances import (
    DECODER_DEFAULTS,
    EverythingMode,
    decoder_params,
    model_has_decoder,
)

PLUGIN = "napari-samscope"
PERCENTILES = "automatic percentiles (0.5-99.5%)"


@pytest.fixture
def decoder_sam():
    return tiny_sam_with_decoder()


@pytest.fixture
def ais_widget(viewer, decoder_sam):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    widget.session.set_model(decoder_sam)
    widget.normalization.setCurrentText(PERCENTILES)
    # the tiny model's input is smaller than these images: compare with the one-pass core
    # result here (tiling large planes is tested in test_tiled_instances_napari.py)
    widget.tile_large.setChecked(False)
    return widget


def as_cached(sam, image, mode, **params):
    """``sam.segment_instances`` on ``image``'s embedding as the session's cache keeps it
    (float16 features), which is what the dock decodes."""
    from napari_samscope.core.volume import EmbeddingCache

    predictor = sam.predictor()
    predictor.set_image(image)
    stored = EmbeddingCache().put("plane", predictor.get_embedding())
    return sam.segment_instances(stored, mode=mode, **params)


def _run(qtbot, widget, **kwargs):
    with qtbot.waitSignal(widget.finished, timeout=30_000):
        widget.run(**kwargs)


def test_mode_choice_hidden_for_a_model_without_decoder(viewer, everything_widget, notifications):
    assert everything_widget.mode.isHidden() and everything_widget.decoder.isHidden()
    assert everything_widget.mode.currentData() is EverythingMode.AMG
    viewer.add_image(blob_image(), name="blobs")
    everything_widget.reset_choices()
    everything_widget.run(mode="ais")
    errors = notifications.errors()
    assert any("has no instance decoder" in m and "vit_b_lm" in m for m in errors), errors
    assert "SAM everything" not in viewer.layers
    with pytest.raises(ValueError, match="mode must be"):
        everything_widget.run(mode="watershed")


def test_mode_choice_follows_the_selected_and_the_loaded_model(viewer, decoder_sam):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    assert widget.session.sam is None
    widget.session.select_model("vit_b_lm")  # a registry model with a decoder, not loaded
    assert not widget.mode.isHidden()
    widget.session.select_model("vit_b")
    assert widget.mode.isHidden()
    widget.session.set_model(decoder_sam)
    assert not widget.mode.isHidden()
    widget.mode.setCurrentIndex(widget.mode.findData(EverythingMode.AIS))
    assert not widget.decoder.isHidden() and widget.thresholds.isHidden() is False
    assert widget.points_per_side.isHidden()  # AMG's fields give way to the decoder's
    widget.session.set_model(tiny_sam_with_decoder("no-decoder"))
    widget.session.sam.set_instance_decoder(None)
    widget.update_modes()
    assert widget.mode.isHidden() and widget.mode.currentData() is EverythingMode.AMG
    assert widget.decoder.isHidden() and not widget.points_per_side.isHidden()


@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_decoder_mode_on_a_plane_gives_the_core_labels(
    viewer, ais_widget, decoder_sam, qtbot, notifications, mode
):
    image = blob_image()
    viewer.add_image(image, name="blobs")
    ais_widget.reset_choices()
    _run(qtbot, ais_widget, mode=mode)
    labels = viewer.layers["SAM everything"].data
    expected = as_cached(decoder_sam, image, mode)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    count = len(np.unique(expected)) - 1
    assert count >= 5
    np.testing.assert_array_equal(labels, expected)
    # the float16 cache moves at most a few boundary pixels from the float32 result
    direct = decoder_sam.segment_instances(image, mode=mode)
    assert len(np.unique(direct)) - 1 == count and (direct == labels).mean() >= 0.995
    assert (f"segment everything ({mode.upper()}): {count} objects on 1 plane(s) of 'blobs'"
            in notifications())


def test_decoder_parameters_reach_the_core(viewer, ais_widget, decoder_sam, qtbot):
    image = blob_image()
    viewer.add_image(image, name="blobs")
    ais_widget.reset_choices()
    ais_widget.mode.setCurrentIndex(ais_widget.mode.findData(EverythingMode.AIS))
    ais_widget.decoder_fields["foreground_threshold"].setValue(0.7)
    ais_widget.decoder_fields["min_size"].setValue(30)
    _run(qtbot, ais_widget)
    expected = as_cached(decoder_sam, image, "ais", foreground_threshold=0.7, min_size=30)
    assert not np.array_equal(expected, as_cached(decoder_sam, image, "ais"))
    np.testing.assert_array_equal(viewer.layers["SAM everything"].data, expected)


def test_min_size_follows_the_mode_unless_edited(ais_widget):
    min_size = ais_widget.decoder_fields["min_size"]
    nms = ais_widget.decoder_fields["nms_threshold"]
    ais_widget.mode.setCurrentIndex(ais_widget.mode.findData(EverythingMode.AIS))
    assert min_size.value() == 0 and nms.isHidden()
    ais_widget.mode.setCurrentIndex(ais_widget.mode.findData(EverythingMode.APG))
    assert min_size.value() == 25 and not nms.isHidden()
    assert ais_widget.decoder_fields["distance_smoothing"].isHidden()
    min_size.setValue(7)
    ais_widget.mode.setCurrentIndex(ais_widget.mode.findData(EverythingMode.AIS))
    assert min_size.value() == 7
    assert ais_widget.decoder_values() == {**DECODER_DEFAULTS[EverythingMode.AIS], "min_size": 7}


def test_ais_on_a_stack_links_ids_through_z(viewer, ais_widget, decoder_sam, qtbot):
    from napari_samscope.core.volume.everything import link_labels

    stack = np.stack([blob_image(seed=s) for s in range(3)])
    viewer.add_image(stack, name="stack")
    ais_widget.reset_choices()
    _run(qtbot, ais_widget, scope="stack", mode="ais")
    labels = viewer.layers["SAM everything"].data
    planes = np.stack([as_cached(decoder_sam, p, "ais") for p in stack])
    np.testing.assert_array_equal(labels, link_labels(planes, link_iou=0.3))
    # objects of neighbouring planes share ids (one object, one id through z)
    shared = set(np.unique(labels[0])) & set(np.unique(labels[1])) & set(np.unique(labels[2]))
    assert len(shared - {0}) >= 5
    assert len(np.unique(labels)) - 1 < sum(len(np.unique(p)) - 1 for p in planes)


def test_a_micro_sam_file_loaded_in_the_widget_brings_its_decoder(
    viewer, decoder_sam, tmp_path, qtbot
):
    import torch

    path = tmp_path / "microsam_format.pt"
    torch.save({
        "model_state": {"sam." + k: v for k, v in decoder_sam.model.state_dict().items()},
        "decoder_state": decoder_sam.instance_decoder.state_dict(),
    }, path)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    assert widget.mode.isHidden()
    with qtbot.waitSignal(widget.session.model_changed, timeout=30_000):
        widget.model_panel.load(path, device="cpu")
    assert widget.session.sam.has_instance_decoder
    assert not widget.mode.isHidden()


def test_decoder_params_and_defaults_agree_with_the_core():
    from napari_samscope.core.instances.apg import APGParams
    from napari_samscope.core.instances.postprocess import AISParams

    apg = APGParams().__dict__
    assert DECODER_DEFAULTS[EverythingMode.AIS] == AISParams().as_dict()
    assert DECODER_DEFAULTS[EverythingMode.APG] == {k: v for k, v in apg.items() if k != "batch_size"}
    assert decoder_params(EverythingMode.APG, {"min_size": 3.0, "foo": 1}) == {
        **DECODER_DEFAULTS[EverythingMode.APG], "min_size": 3}
    with pytest.raises(ValueError, match="finite number >= 0"):
        decoder_params(EverythingMode.AIS, {"foreground_threshold": -1})
    with pytest.raises(ValueError, match="does not use"):
        decoder_params(EverythingMode.AMG, {})
    assert model_has_decoder(None, "vit_t_lm") and not model_has_decoder(None, "vit_t")
    assert not model_has_decoder(None, None)


def test_console_segment_everything_layer_in_decoder_modes(viewer, decoder_sam, tiny_random_sam):
    from napari_samscope import segment_everything_layer

    image = blob_image()
    layer = viewer.add_image(image, name="blobs")
    for mode in ("ais", "apg"):
        labels = segment_everything_layer(layer, decoder_sam, mode=mode, viewer=viewer)
        np.testing.assert_array_equal(labels, decoder_sam.segment_instances(image, mode=mode))
    tuned = segment_everything_layer(layer, decoder_sam, mode="ais", viewer=viewer, min_size=30)
    np.testing.assert_array_equal(tuned, decoder_sam.segment_instances(image, mode="ais", min_size=30))
    with pytest.raises(ValueError, match="has no instance decoder"):
        segment_everything_layer(layer, tiny_random_sam, mode="ais", viewer=viewer)
    with pytest.raises(TypeError, match="Unknown instance segmentation parameter"):
        segment_everything_layer(layer, decoder_sam, mode="ais", viewer=viewer, points_per_side=8)
    with pytest.raises(ValueError, match="mode must be"):
        segment_everything_layer(layer, decoder_sam, mode="grid", viewer=viewer)
