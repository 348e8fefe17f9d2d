"""Fixtures for the widget tests: a viewer, widgets loaded through the real manifest,
and models injected into the viewer's model session.

``segmenting_sam`` is the test double of ``segmenting_model.py`` (a real ``Sam``
container whose parts segment bright objects by rule), for assertions about mask
content; ``tiny_random_sam`` is a tiny random network of the real architecture, for
tests about structure only.
"""

from __future__ import annotations

import pytest
from segmenting_model import SegmentingPredictor, make_segmenting_sam

PLUGIN = "napari-samscope"


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def segmenting_sam():
    """The segmenting double's ``SAM``; decode it with ``SegmentingPredictor``."""
    from napari_samscope.core.predict.sam_api import SAM

    return SAM.from_sam(make_segmenting_sam(256), "segmenting-double")


@pytest.fixture
def segmenting_predictor(segmenting_sam):
    """A predictor that segments bright objects by rule (for the console functions)."""
    return SegmentingPredictor(segmenting_sam)


@pytest.fixture
def tiny_random_sam(tiny_sam_factory):
    from napari_samscope.core.predict.sam_api import SAM

    return SAM.from_sam(tiny_sam_factory("vit", 64, seed=3), "tiny-random")


def _dock(viewer, name):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


@pytest.fixture
def main_widget(viewer, segmenting_sam):
    """The "Segment Anything" widget (through the manifest) with the segmenting double."""
    widget = _dock(viewer, "Segment Anything")
    widget.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    return widget


@pytest.fixture
def everything_widget(viewer, segmenting_sam):
    widget = _dock(viewer, "Segment everything")
    widget.session.set_model(segmenting_sam, predictor_factory=SegmentingPredictor)
    return widget


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class Messages:
        def __call__(self) -> list[str]:
            return [str(n.message) for n in notification_manager.records[start:]]

        def errors(self) -> list[str]:
            return [str(n.message) for n in notification_manager.records[start:]
                    if str(n.severity).lower().endswith("error")]

    return Messages()
