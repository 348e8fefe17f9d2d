"""Large images: overlapping tiles, a tiled predictor and tiled segment-everything."""

from napari_samscope.core.tiling.geometry import Tile, TileGrid, check_tiling
from napari_samscope.core.tiling.predictor import TiledPredictor, WindowPrediction

__all__ = ["Tile", "TileGrid", "TiledPredictor", "WindowPrediction", "check_tiling"]
