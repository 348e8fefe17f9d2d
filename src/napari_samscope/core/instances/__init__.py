"""Automatic instance segmentation with micro-sam's UNETR decoder on SAM's image embedding.

- ``decoder.py``: the decoder as a pure ``nn.Module`` (micro-sam's parameter names);
- ``load.py``: reading decoder states and files safely;
- ``maps.py``: embedding -> ``(3, H, W)`` maps at the original image size;
- ``postprocess.py``: AIS, maps -> labels by seeded watershed (:func:`instances_from_maps`);
- ``apg.py``: APG, decoder seeds as point prompts refined by SAM's mask decoder;
- ``api.py``: the mixin that gives ``SAM`` ``segment_instances`` and ``instance_maps``.
"""
