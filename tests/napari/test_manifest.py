"""The npe2 manifest: valid, and every command points at a real object."""

import importlib
from pathlib import Path

from npe2 import PluginManifest

MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


def test_manifest_is_valid_and_every_python_name_resolves():
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-samscope"
    for command in manifest.contributions.commands:
        assert command.id.startswith("napari-samscope.")
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment Anything", "Segment everything"} <= widgets
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei_2d", "nuclei_3d"}
    segment_menu = manifest.contributions.menus["napari/layers/segment"]
    assert any(item.command == "napari-samscope.make_main_widget" for item in segment_menu)
