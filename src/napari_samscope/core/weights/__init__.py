"""Model weights: the registry of named models, downloads into the cache, safe
checkpoint reading, and building a ready :class:`~napari_samscope.core.modeling.sam.Sam`
from a name or a file (:func:`~napari_samscope.core.weights.loader.load_sam`).

Nothing here runs a model; ``registry``, ``spec`` and ``download`` do not import torch.
"""
