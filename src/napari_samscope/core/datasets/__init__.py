"""Building datasets: automatic annotation of image folders (detector boxes -> SAM
masks), box detectors, and the YOLO / COCO / label-TIFF formats it reads and writes.
"""
