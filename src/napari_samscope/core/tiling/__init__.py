"""Large images: overlapping tiles, a tiled predictor and tiled segment-everything."""

from napari_samscope.core.tiling.everything import (
    segment_everything_tiled,
    segment_everything_tiled_iter,
)
from napari_samscope.core.tiling.geometry import Tile, TileGrid, check_tiling
from napari_samscope.core.tiling.predictor import TiledPredictor, WindowPrediction

__all__ = [
    "segment_everything_tiled",
    "segment_everything_tiled_iter",
    "Tile", "TileGrid", "TiledPredictor", "WindowPrediction", "check_tiling"]
