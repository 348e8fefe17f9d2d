"""The "Fine-tune SAM" widget: train on layer pairs, register the model, cancel, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_samscope.core.synthetic import make_nuclei_2d, make_nuclei_3d
from napari_samscope.core.weights import registry

PLUGIN = "napari-samscope"



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(autouse=True)
def no_leftover_models(monkeypatch):
    monkeypatch.setattr(registry, "_user_models", {})


@pytest.fixture
def finetune_widget(viewer, tmp_path):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune SAM")
    widget.out.setText(str(tmp_path / "tuned.pt"))
    return widget


@pytest.fixture
def tiny_model():
    from napari_samscope.core.modeling.build import tiny_config

    return tiny_config("tiny_vit", img_size=64)


def _wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)
    qtbot.wait(10)


def _add_nuclei(viewer, shape=(64, 64), seed=0):
    image, labels = make_nuclei_2d(shape, n=3, radius_range=(10, 14), touching=False, seed=seed)
    return viewer.add_image(image, name=f"nuclei{seed}"), viewer.add_labels(labels, name=f"truth{seed}")


def test_training_registers_the_model_and_plots(viewer, finetune_widget, tiny_model, qtbot, tmp_path):
    image, labels = _add_nuclei(viewer)
    volume, vlabels = make_nuclei_3d((3, 64, 64), radius_range=(8, 10), seed=1)
    stack, stack_labels = viewer.add_image(volume), viewer.add_labels(vlabels)
    widget = finetune_widget
    widget.reset_choices()
    widget.add_pair(image, labels)
    widget.add_pair(stack, stack_labels)
    widget.add_pair(image, labels)  # a duplicate is ignored
    assert widget.pair_list.count() == 2
    widget.name.setText("my_nuclei")
    widget.out.setText(str(tmp_path / "tuned.pt"))
    with qtbot.waitSignal(widget.finished, timeout=120_000) as signal:
        widget.train(tiny_model, steps=4, batch_images=2, objects_per_image=2)
    assert signal.args[0] == tmp_path / "tuned.pt" and (tmp_path / "tuned.pt").is_file()
    assert len(widget.plot.steps) == 4 and widget.plot.losses[-1] > 0
    assert "my_nuclei" in registry.model_names()
    assert [c.name for c in widget.session.models()].count("my_nuclei") == 1
    assert widget.model_box.findData("my_nuclei") >= 0  # the dropdown was refreshed
    assert widget.session.model_name == "my_nuclei"  # "use right away" is on
    assert widget.result.history and widget.name.text() != "my_nuclei"
    assert widget.result.sam is not None
    widget.grab()  # the plot paints with data


def test_training_does_not_touch_the_model_in_use(viewer, finetune_widget, tiny_model, qtbot):
    import torch

    from napari_samscope.core.modeling.build import build_sam

    image, labels = _add_nuclei(viewer)
    in_use = build_sam(tiny_model)
    finetune_widget.session.set_model(in_use, name="in-use")
    assert finetune_widget.model_box.currentText() == "model in use (in-use)"
    before = {k: v.clone() for k, v in in_use.state_dict().items()}
    finetune_widget.use_now.setChecked(False)
    finetune_widget.reset_choices()
    finetune_widget.image.value = image
    finetune_widget.labels.value = labels
    with qtbot.waitSignal(finetune_widget.finished, timeout=120_000):
        finetune_widget.train(steps=2, batch_images=1, objects_per_image=2, trainable="all")
    for key, value in in_use.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert finetune_widget.session.model_name == "in-use"


def test_cancel_stops_and_writes_nothing(viewer, finetune_widget, tiny_model, qtbot, tmp_path):
    image, labels = _add_nuclei(viewer)
    finetune_widget.reset_choices()
    finetune_widget.add_pair(image, labels)
    finetune_widget.train(tiny_model, steps=100_000, batch_images=1, objects_per_image=2)
    qtbot.waitUntil(lambda: len(finetune_widget.plot.steps) >= 1, timeout=60_000)
    assert finetune_widget.progress.cancel_button.isEnabled()
    finetune_widget.progress.cancel_button.click()
    _wait_idle(qtbot, finetune_widget)
    assert not (tmp_path / "tuned.pt").exists()
    assert len(finetune_widget.plot.steps) < 100_000
    assert finetune_widget.train_button.isEnabled()
    with qtbot.waitSignal(finetune_widget.finished, timeout=120_000):  # runs again after a cancel
        finetune_widget.train(tiny_model, steps=1, batch_images=1, objects_per_image=1)


def test_bad_pairs_are_explained(viewer, finetune_widget, tiny_model, notifications):
    finetune_widget.train(tiny_model, steps=1)
    assert any("Choose an image layer" in m for m in notifications.errors())
    image, _labels = _add_nuclei(viewer)
    empty = viewer.add_labels(np.zeros((64, 64), dtype=np.uint32), name="empty")
    finetune_widget.reset_choices()
    finetune_widget.add_pair(image, empty)
    finetune_widget.train(tiny_model, steps=1)
    assert any("hold no objects" in m for m in notifications.errors())
    other = viewer.add_labels(np.ones((32, 32), dtype=np.uint32), name="other size")
    finetune_widget.pairs.clear()
    finetune_widget.pair_list.clear()
    finetune_widget.add_pair(image, other)
    finetune_widget.train(tiny_model, steps=1)
    assert any("choose a Labels layer drawn on this image" in m for m in notifications.errors())
    assert not finetune_widget.runner.busy


def test_removed_layers_leave_the_pair_list(viewer, finetune_widget):
    image, labels = _add_nuclei(viewer)
    finetune_widget.reset_choices()
    finetune_widget.add_pair(image, labels)
    assert finetune_widget.pair_list.count() == 1
    viewer.layers.remove(labels)
    assert finetune_widget.pairs == [] and finetune_widget.pair_list.count() == 0


def test_typed_path_and_start_model_are_kept_after_a_run(viewer, finetune_widget, tiny_model, qtbot,
                                                          tmp_path, notifications):
    import torch

    from napari_samscope.core.modeling.build import build_sam

    base = tmp_path / "base.pt"
    torch.save(build_sam(tiny_model).state_dict(), base)
    finetune_widget.session.add_model("base-local", base)
    image, labels = _add_nuclei(viewer)
    widget = finetune_widget
    widget.reset_choices()
    widget.add_pair(image, labels)
    widget.model_box.setCurrentIndex(widget.model_box.findData("base-local"))
    typed = tmp_path / "mine" / "first.pt"
    widget.out.setText(str(typed))
    widget.name.setText("tuned_a")  # renaming the model keeps the typed path
    assert widget.out.text() == str(typed)
    with qtbot.waitSignal(widget.finished, timeout=120_000):
        widget.train(steps=2, batch_images=1, objects_per_image=2)
    assert typed.is_file()
    assert widget.session.model_name == "tuned_a"  # in use everywhere...
    assert widget.model_box.currentData() == "base-local"  # ...but the next run starts as before
    assert any("The next run starts from base-local" in m for m in notifications())
    following = Path(widget.out.text())
    assert following.parent == typed.parent and following != typed  # no overwrite, same folder


def test_defaults_finish_in_minutes_and_the_plot_has_a_legend(finetune_widget):
    from napari_samscope._widgets.finetune_widget import DEFAULT_STEPS
    from napari_samscope._widgets.loss_plot import IOU_COLOUR, LOSS_COLOUR

    assert finetune_widget.steps.value() == DEFAULT_STEPS <= 30
    plot = finetune_widget.plot
    plot.resize(300, 120)
    image = plot.grab().toImage()
    top = {image.pixelColor(x, y).rgb() for x in range(image.width()) for y in range(18)}
    assert LOSS_COLOUR.rgb() in top and IOU_COLOUR.rgb() in top  # the legend's two lines
