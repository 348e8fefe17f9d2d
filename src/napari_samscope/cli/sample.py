"""``samscope sample``: write the generated sample images (nothing is downloaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_samscope.cli._common import add_debug

DESCRIPTION = """\
Write the synthetic fluorescence samples that napari's File > Open Sample shows:
  nuclei_2d.tif       512x512 uint16 nuclei
  nuclei_3d.tif       32x256x256 uint16 stack (z step = 2 x pixel size)
  png/nuclei_2d.png   the 2D image as 8-bit PNG
and their ground-truth labels in ground_truth/. The PNG copy and the labels live in
sub-folders, so that 'samscope annotate DIR' on the sample folder sees each image once
and does not mistake labels for images.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample", help="write the generated sample images (2D nuclei, 3D stack)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="samples", help="output folder (default: ./samples)")
    add_debug(parser)
    parser.set_defaults(func=run)


def sample_images() -> dict[str, tuple[object, object]]:
    """``{stem: (image, labels)}`` exactly as napari's sample data (same seeds and sizes)."""
    from napari_samscope._sample_data import make_sample_nuclei_2d, make_sample_nuclei_3d

    (image2d, _, _), (labels2d, _, _) = make_sample_nuclei_2d()
    (image3d, _, _), (labels3d, _, _) = make_sample_nuclei_3d()
    return {"nuclei_2d": (image2d, labels2d), "nuclei_3d": (image3d, labels3d)}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile
    from PIL import Image

    from napari_samscope.core.datasets.annotate_io import write_label_tiff
    from napari_samscope.core.predict.image import to_rgb_uint8

    out = Path(args.out)
    truth = out / "ground_truth"
    truth.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (image, labels) in sample_images().items():
        image = np.asarray(image)
        path = out / f"{stem}.tif"
        tifffile.imwrite(path, image, photometric="minisblack", compression="zlib")
        written.append(path)
        if image.ndim == 2:  # a copy in its own folder: one folder, each image once
            (out / "png").mkdir(exist_ok=True)
            png = out / "png" / f"{stem}.png"
            Image.fromarray(to_rgb_uint8(image)[..., 0]).save(png)
            written.append(png)
        label_path = truth / f"{stem}_labels.tif"
        write_label_tiff(label_path, np.asarray(labels))
        written.append(label_path)
    for path in written:
        print(path)
    return 0
