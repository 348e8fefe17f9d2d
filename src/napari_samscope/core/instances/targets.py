"""The decoder's three maps computed from a label image (training targets, test inputs).

For each object: foreground 1; centre distance = distance to the object's centroid
divided by its largest value in the object (0 at the centre, 1 at the farthest pixel);
boundary distance = 1 - distance to the outline divided by its largest value (0 at the
deepest pixel, 1 on the outline). Background: foreground 0, both distances 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["maps_from_labels"]


def maps_from_labels(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` integer labels (0 background) -> ``(3, H, W)`` float32 maps."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 2D integer array, not {labels.dtype} {labels.shape}.")
    maps = np.ones((3, *labels.shape), dtype=np.float32)
    maps[0] = labels > 0
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # one pixel of margin so that the outline of objects on the image edge counts too
        top, left = box[0].start, box[1].start
        own = np.pad(labels[box] == value, 1)
        inside = ndimage.distance_transform_edt(own)
        rows, cols = np.nonzero(own)
        cy, cx = rows.mean(), cols.mean()
        yy, xx = np.indices(own.shape)
        to_center = np.hypot(yy - cy, xx - cx)
        center = to_center / max(to_center[own].max(), 1e-6)
        boundary = 1.0 - inside / max(inside[own].max(), 1e-6)
        view = (slice(top, box[0].stop), slice(left, box[1].stop))
        own_view = own[1:-1, 1:-1]
        maps[1][view][own_view] = center[1:-1, 1:-1][own_view]
        maps[2][view][own_view] = boundary[1:-1, 1:-1][own_view]
    return maps
