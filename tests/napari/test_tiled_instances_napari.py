"""The "Segment everything" dock's AIS and APG on a layer larger than the model input
(multiscale, so lazy): tile by tile, through the real manifest, with a tiny random SAM
and a tiny random instance decoder."""

import dask.array as da
import numpy as np
import pytest

from _decoder_model import blob_image, tiny_sam_with_decoder

PLUGIN = "napari-samscope"


@pytest.mark.parametrize("mode", ["ais", "apg"])
def test_decoder_modes_on_a_large_lazy_layer_run_by_tiles(viewer, qtbot, monkeypatch, mode):
    from napari_samscope.core import tiling

    runs = []
    original = tiling.segment_instances_tiled_iter

    def spy(tiled, decoder, mode, **params):
        runs.append((len(tiled.grid), mode))
        return original(tiled, decoder, mode, **params)

    monkeypatch.setattr(tiling, "segment_instances_tiled_iter", spy)
    sam = tiny_sam_with_decoder()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    widget.session.set_model(sam)
    image = blob_image((150, 170), seed=2)
    pyramid = [da.from_array(image, chunks=64), da.from_array(image[::2, ::2].copy(), chunks=64)]
    viewer.add_image(pyramid, multiscale=True, name="pyramid")
    widget.reset_choices()
    with qtbot.waitSignal(widget.finished, timeout=60_000):
        widget.run(mode=mode)
    labels = viewer.layers["SAM everything"].data
    assert runs == [(12, mode)]  # 64 px tiles (the tiny model's input), halo 8, full resolution
    assert labels.shape == image.shape and labels.max() > 0
    # the same as the core's tiled mode on the array (same tiles, same intensity mapping)
    expected = sam.segment_instances(image, mode=mode, tile_shape=64, halo=8)
    np.testing.assert_array_equal(np.asarray(labels), expected)


@pytest.mark.parametrize("tile_large", [True, False])
def test_an_in_memory_plane_larger_than_the_input_is_tiled_when_asked(viewer, qtbot, monkeypatch,
                                                                      tile_large):
    from napari_samscope.core import tiling

    runs = []
    original = tiling.segment_instances_tiled_iter

    def spy(tiled, decoder, mode, **params):
        runs.append(len(tiled.grid))
        return original(tiled, decoder, mode, **params)

    monkeypatch.setattr(tiling, "segment_instances_tiled_iter", spy)
    sam = tiny_sam_with_decoder()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    widget.session.set_model(sam)
    assert widget.tile_large.isChecked()  # on by default: small objects are not shrunk away
    image = blob_image((150, 170), seed=2)
    viewer.add_image(image, name="in memory")  # a numpy layer, not lazy
    widget.reset_choices()
    widget.tile_large.setChecked(tile_large)
    with qtbot.waitSignal(widget.finished, timeout=60_000):
        widget.run(mode="ais")
    labels = np.asarray(viewer.layers["SAM everything"].data)
    if tile_large:
        assert runs == [12]
        np.testing.assert_array_equal(labels, sam.segment_instances(image, mode="ais", tile_shape=64,
                                                                    halo=8))
    else:
        assert runs == []  # one pass, the plane shrunk into the model input
        from napari_samscope.core.volume import EmbeddingCache

        predictor = sam.predictor()
        predictor.set_image(image)
        cached = EmbeddingCache().put("plane", predictor.get_embedding())  # as the dock keeps it
        np.testing.assert_array_equal(labels, sam.segment_instances(cached, mode="ais"))


def test_the_everything_dock_keeps_tiles_in_an_embeddings_file(viewer, qtbot, tmp_path):
    from _decoder_model import count_encodings
    from napari_samscope._napari import tiled
    from napari_samscope._napari.tiled import forget_tiled

    sam = tiny_sam_with_decoder()
    calls = count_encodings(sam)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    widget.session.set_model(sam)
    image = viewer.add_image(blob_image((96, 128), seed=3), name="blobs")
    widget.reset_choices()
    store = tmp_path / "blobs.emb.zarr"
    widget.embeddings.setText(str(store))
    with qtbot.waitSignal(widget.finished, timeout=60_000):
        widget.run(mode="ais")
    first = np.asarray(viewer.layers["SAM everything"].data).copy()
    assert store.is_dir() and sum(calls) > 0 and first.max() > 0
    encoded = sum(calls)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=30_000)
    uid = str(image.unique_id)
    assert any(key[0][0] == uid for key in tiled._TILED)
    forget_tiled(uid)  # as a new session would: only the file is left
    assert not any(key[0][0] == uid for key in tiled._TILED)
    with qtbot.waitSignal(widget.finished, timeout=60_000):
        widget.run(mode="ais")
    assert sum(calls) == encoded  # every tile came from the file
    again = np.asarray(viewer.layers["SAM everything"].data)
    # the file keeps float16 features: at most a few boundary pixels move
    assert again.max() == first.max() and (again == first).mean() >= 0.999
