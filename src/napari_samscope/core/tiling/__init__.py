"""Large images: overlapping tiles, a tiled predictor, tiled segment-everything and the
instance decoder's modes (AIS, APG) on tiles."""

from napari_samscope.core.tiling.everything import (
    segment_everything_tiled,
    segment_everything_tiled_iter,
)
from napari_samscope.core.tiling.geometry import Tile, TileGrid, check_tiling
from napari_samscope.core.tiling.instances import (
    segment_instances_tiled,
    segment_instances_tiled_iter,
    tiled_instance_maps,
)
from napari_samscope.core.tiling.predictor import TiledPredictor, WindowPrediction

__all__ = [
    "segment_everything_tiled",
    "segment_everything_tiled_iter",
    "segment_instances_tiled", "segment_instances_tiled_iter", "tiled_instance_maps",
    "Tile", "TileGrid", "TiledPredictor", "WindowPrediction", "check_tiling"]
