"""Make docs/screenshot.png: napari with every samscope dock of the manifest open.

The sample nuclei image (Fluorescent nuclei (2D, generated)), labels committed by
"Segment everything" with the default model, and the live preview of one point prompt
in the preview colour. Run it on a 1920x1080 screen, e.g.

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/make_screenshot.py

The PNG is quantised to 256 colours to keep it small.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-samscope"


def _wait(predicate, timeout: float, what: str) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let queued signals and redraws land
        QApplication.processEvents()
        time.sleep(0.01)


def _busy(widget) -> bool:
    runners = [getattr(widget, name, None) for name in ("preview_runner", "runner")]
    runners.append(widget.model_panel.runner)
    return any(r is not None and r.busy for r in runners)


def _fit_docks(viewer) -> None:
    """Lay the samscope docks out in two columns so that every one shows all of its
    controls, each as tall as its contents ask for."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    docks = [d for name, d in viewer.window._dock_widgets.items() if PLUGIN in name]
    half = (len(docks) + 1) // 2
    left, right = docks[:half], docks[half:]
    if right:
        window.splitDockWidget(left[0], right[0], Qt.Orientation.Horizontal)
        for upper, lower in zip(right, right[1:]):
            window.splitDockWidget(upper, lower, Qt.Orientation.Vertical)
    heights = [d.sizeHint().height() for d in docks]
    window.resizeDocks(docks, heights, Qt.Orientation.Vertical)
    window.resizeDocks(docks, [max(d.sizeHint().width(), 330) for d in docks], Qt.Orientation.Horizontal)


def _dock_names() -> list[str]:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    return [w.display_name for w in manifest.contributions.widgets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"))
    parser.add_argument("--size", default="1920x1080", help="window size, WxH")
    args = parser.parse_args()
    from PIL import Image

    import napari

    width, height = (int(v) for v in args.size.split("x"))
    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.resize(width, height)
    window.showMaximized()
    viewer.open_sample(PLUGIN, "nuclei_2d")
    truth = viewer.layers["nuclei ground truth"]
    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in _dock_names()}
    main_widget, everything = docks["Segment Anything"], docks["Segment everything"]
    _wait(lambda: main_widget.points_layer is not None, 30, "the prompt layers")

    done = []
    everything.finished.connect(lambda: done.append(True))
    everything.run()  # loads the default model, then segments the plane
    _wait(lambda: bool(done) and not _busy(everything), 600, "segment everything")

    # a point on a large nucleus near the centre: the live preview shows it
    labels = np.asarray(truth.data)
    h, w = labels.shape
    ids, areas = np.unique(labels[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3], return_counts=True)
    chosen = int(ids[1:][np.argmax(areas[1:])])
    rows, cols = np.nonzero(labels == chosen)
    updated = []
    main_widget.preview_updated.connect(lambda: updated.append(True))
    main_widget.points_layer.add(np.array([[rows.mean(), cols.mean()]]))
    _wait(lambda: bool(updated) and not _busy(main_widget) and main_widget.preview is not None,
          120, "the preview")
    points = main_widget.points_layer
    viewer.layers.selection.active = points
    viewer.reset_view()
    viewer.camera.center = (rows.mean(), cols.mean())
    viewer.camera.zoom *= 1.6
    _fit_docks(viewer)
    _wait(lambda: True, 1, "redraw")

    shot = viewer.screenshot(canvas_only=False, flash=False)
    rgb = Image.fromarray(np.asarray(shot)[..., :3])
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True)
    canvas = viewer.window._qt_viewer.canvas.native
    print(f"{args.out}: {rgb.size[0]}x{rgb.size[1]}, {Path(args.out).stat().st_size / 1024:.0f} KB; "
          f"the image canvas is {canvas.width()}x{canvas.height()} px with every dock open")
    for dock in docks.values():
        dock.cancel()
    viewer.window.remove_dock_widget("all")
    viewer.close()


if __name__ == "__main__":
    main()
