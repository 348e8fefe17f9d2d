"""The core library: models, weights, predictor, segment-everything, volumes, training.

Pure torch and numpy. Nothing under ``napari_samscope.core`` may import napari,
Qt, qtpy or magicgui (``tests/core/test_core_isolation.py`` checks this).
"""
