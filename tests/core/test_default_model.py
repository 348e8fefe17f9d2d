"""The shipped default model: present, hash-checked through the registry, and it segments.

The nuclei come from generator seeds that the training recipe never used
(``training/train_default_model.py`` draws from ``numpy.random.default_rng`` streams
seeded with 20240601 + 1000 * phase; the reported figures use seed 9000).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_samscope.core.synthetic import make_nuclei_2d
from napari_samscope.core.training.evaluate import evaluate
from napari_samscope.core.weights import registry
from napari_samscope.core.weights.loader import load_sam

HELD_OUT_SEED = 424242


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_default_model_is_shipped_and_registered():
    spec = registry.resolve(registry.DEFAULT_MODEL)
    assert spec.name == "samscope_nuclei" and spec.source == "package"
    path = registry.model_path(spec)
    assert path.is_file()
    assert spec.size == path.stat().st_size <= 20 * 2**20
    assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert registry.check_model_file(spec) == path
    sidecar = path.with_name(path.name + ".json")
    assert sidecar.is_file()


def test_a_damaged_default_model_is_refused(tmp_path, monkeypatch):
    spec = registry.resolve(registry.DEFAULT_MODEL)
    damaged = tmp_path / "models" / "samscope_nuclei.pt"
    damaged.parent.mkdir()
    data = bytearray(registry.model_path(spec).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(registry, "_PACKAGE_ROOT", tmp_path)
    with pytest.raises(ValueError, match="damaged"):
        load_sam(None, device="cpu")


def test_default_model_loads_and_segments_unseen_nuclei():
    loaded = load_sam(None, device="cpu")
    assert loaded.name == "samscope_nuclei"
    assert loaded.sam.img_size == 1024
    image, labels = make_nuclei_2d((512, 512), n=24, seed=HELD_OUT_SEED)
    result = evaluate(loaded.sam, [image], [labels], seed=HELD_OUT_SEED)
    assert result.objects >= 15
    # The shipped model measures 0.93 (point) and 0.95 (box) here, its input-512
    # predecessor 0.84 and 0.86; an untrained model of the same architecture is below 0.1.
    # See training/README.md for the held-out figures.
    assert result.point_iou > 0.88, result.as_dict()
    assert result.box_iou > 0.90, result.as_dict()
    # a point on the background does not return a nucleus-sized blob everywhere
    from napari_samscope.core.predict.predictor import Predictor

    predictor = Predictor(loaded.sam)
    predictor.set_image(image)
    target = labels == labels[labels > 0][0]
    rows, cols = np.nonzero(target)
    mask = predictor.predict(points=[[cols.mean(), rows.mean()]], labels=[1]).masks[0]
    assert (mask & target).sum() / (mask | target).sum() > 0.6
    assert mask.sum() < 4 * target.sum()
