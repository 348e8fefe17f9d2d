"""det_model="ais" on dask workers: each task loads the model, with its instance decoder,
by reference and once per process (run here in-process, as a worker runs it)."""

from __future__ import annotations

import numpy as np
import tifffile

from _decoder_model import blob_image, save_microsam_format, tiny_sam_with_decoder
from napari_samscope.core.datasets.annotate_options import AnnotateOptions
from napari_samscope.distributed import annotate as dist
from napari_samscope.distributed.worker import ModelRef


def test_a_task_runs_the_decoder_of_its_model(tmp_path):
    model = tiny_sam_with_decoder()
    data = tmp_path / "imgs"
    data.mkdir()
    images = {f"img{seed}": blob_image(seed=seed) for seed in (0, 1)}
    for stem, image in images.items():
        tifffile.imwrite(data / f"{stem}.tif", image)
    checkpoint = tmp_path / "microsam_format.pt"
    save_microsam_format(model, checkpoint)
    options = AnnotateOptions(det_model="ais", output_dir=tmp_path / "out", save_tiff=True)
    ref = ModelRef.of(str(checkpoint), "cpu")
    files = sorted(data.iterdir())
    dist._SAMS.clear()
    for path in files:
        summary = dist.annotate_task([path], ref, options)
        assert summary.annotated == 1 and not summary.failed
    assert len(dist._SAMS) == 1
    for stem, image in images.items():
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif"),
                                      model.segment_instances(image, mode="ais"))
