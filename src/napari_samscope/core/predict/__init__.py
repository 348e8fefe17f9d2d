"""Prompted segmentation: image preprocessing, prompt validation, the :class:`Predictor`
(encode once, prompt many times) with its decoding fast paths, results, and the
Ultralytics-style :class:`SAM` entry point.

Coordinates are SAM's: points ``(x, y)`` = (column, row) pixels of the original image,
boxes XYXY.
"""
