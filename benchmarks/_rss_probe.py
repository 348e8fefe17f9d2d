"""Peak memory of one segment-everything run, measured in a fresh process.

Usage: ``python _rss_probe.py {ours|official} {vit_b|vit_t|default} SIZE [--cap-gb G]
[--image FILE.npy]``; ``python _rss_probe.py prepare - SIZE --image FILE.npy`` writes the
image once (generating a 4096 x 4096 synthetic image takes minutes and more memory than
segmenting it, so the measured processes load it instead of generating it).
Prints one JSON line: ``maxrss_mb`` (``resource.getrusage`` peak RSS), ``masks``,
``seconds``; or ``error`` when the run failed (for example under the address-space cap
``--cap-gb``, which keeps a run that would exhaust the machine from doing so).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["ours", "official", "prepare"])
    parser.add_argument("model")
    parser.add_argument("size", type=int)
    parser.add_argument("--cap-gb", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image", default=None, help="an (H, W, 3) uint8 .npy to segment")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from _common import peak_rss_mb
    from _data import rgb_image
    from _models import load_model

    if args.side == "prepare":
        import numpy as np

        np.save(args.image, rgb_image(args.size, args.size)[0])
        print(json.dumps({"prepared": args.image}))
        return 0
    model = load_model(args.model)
    if args.image:
        import numpy as np

        image = np.load(args.image)
    else:
        image, _ = rgb_image(args.size, args.size)
    baseline = peak_rss_mb()
    if args.cap_gb:
        limit = int(args.cap_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.perf_counter()
    try:
        if args.side == "ours":
            from napari_samscope.core.everything.generator import MaskGenerator

            masks = len(MaskGenerator(model.sam).generate(image))
        else:
            import _official

            kind = model.config.encoder_type
            sam = _official.build_official(model.config, model.state_dict())
            del model
            generator = _official.mask_generator(sam, kind)
            masks = len(generator.generate(image))
    except (MemoryError, RuntimeError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}",
                          "seconds": time.perf_counter() - start}))
        return 0
    print(json.dumps({
        "maxrss_mb": round(peak_rss_mb(), 1),
        "before_run_mb": round(baseline, 1),
        "masks": masks,
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
