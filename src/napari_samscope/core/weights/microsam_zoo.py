"""micro-sam's published models: microscopy fine-tuned SAM weights and their
instance-segmentation decoders (https://github.com/computational-cell-analytics/micro-sam).

The URLs and xxh128 hashes are micro-sam's own (``micro_sam.util.models()``, micro-sam
1.8.14); micro-sam publishes no byte sizes, so ``size`` is None and the download is
checked against the server's ``Content-Length`` and the xxh128. Each fine-tuned model
``<name>`` has a companion ``<name>_decoder`` (the UNETR decoder used for automatic
instance segmentation, ``core.instances``); :func:`decoder_name` finds it.
This module does not import torch.
"""

from __future__ import annotations

from napari_samscope.core.weights.spec import ModelSpec

__all__ = ["DECODER_SUFFIX", "DOMAINS", "MICROSAM_MODELS", "decoder_name", "models_with_decoder"]

#: Name suffix of the decoder companion of a model.
DECODER_SUFFIX = "_decoder"
#: Domain labels, in the order model lists group them.
DOMAINS = ("LM", "EM", "histopathology")

_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s/"

# name -> (arch, domain, what it was trained on, (model url, xxh128), (decoder url, xxh128))
_TABLE: dict[str, tuple[str, str, str, tuple[str, str], tuple[str, str]]] = {
    "vit_t_lm": (
        "vit_t", "LM", "light microscopy (cells and nuclei)",
        (_BIOIMAGEIO + "faithful-chicken/1.1/files/vit_t.pt", "72ec5074774761a6e5c05a08942f981e"),
        (_BIOIMAGEIO + "faithful-chicken/1.1/files/vit_t_decoder.pt",
         "3e914a5f397b0312cdd36813031f8823"),
    ),
    "vit_b_lm": (
        "vit_b", "LM", "light microscopy (cells and nuclei)",
        (_BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b.pt", "fe9252a29f3f4ea53c15a06de471e186"),
        (_BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b_decoder.pt",
         "708b15ac620e235f90bb38612c4929ba"),
    ),
    "vit_l_lm": (
        "vit_l", "LM", "light microscopy (cells and nuclei)",
        (_BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l.pt", "017f20677997d628426dec80a8018f9d"),
        (_BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l_decoder.pt",
         "2faeafa03819dfe03e7c46a44aaac64a"),
    ),
    "vit_t_em_organelles": (
        "vit_t", "EM", "electron microscopy (mitochondria, nuclei and other organelles)",
        (_BIOIMAGEIO + "greedy-whale/1/files/vit_t.pt", "253474720c497cce605e57c9b1d18fd9"),
        (_BIOIMAGEIO + "greedy-whale/1/files/vit_t_decoder.pt",
         "8f897c7bb93174a4d1638827c4dd6f44"),
    ),
    "vit_b_em_organelles": (
        "vit_b", "EM", "electron microscopy (mitochondria, nuclei and other organelles)",
        (_BIOIMAGEIO + "noisy-ox/1.2/files/vit_b.pt", "f3bf2ed83d691456bae2c3f9a05fb438"),
        (_BIOIMAGEIO + "noisy-ox/1.2/files/vit_b_decoder.pt",
         "bb6398956a6b0132c26b631c14f95ce2"),
    ),
    "vit_l_em_organelles": (
        "vit_l", "EM", "electron microscopy (mitochondria, nuclei and other organelles)",
        (_BIOIMAGEIO + "humorous-crab/1.2/files/vit_l.pt", "810b084b6e51acdbf760a993d8619f2d"),
        (_BIOIMAGEIO + "humorous-crab/1.2/files/vit_l_decoder.pt",
         "334877640bfdaaabce533e3252a17294"),
    ),
    "vit_b_histopathology": (
        "vit_b", "histopathology", "histopathology (H&E nuclei)",
        (_OWNCLOUD + "sBB4H8CTmIoBZsQ/download", "ffd1a2cd84570458b257bd95fdd8f974"),
        (_OWNCLOUD + "KO9AWqynI7SFOBj/download", "6a66194dcb6e36199cbee2214ecf7213"),
    ),
    "vit_l_histopathology": (
        "vit_l", "histopathology", "histopathology (H&E nuclei)",
        (_OWNCLOUD + "IZgnn1cpBq2PHod/download", "b591833c89754271023e901281dee3f2"),
        (_OWNCLOUD + "oIs6VSmkOp7XrKF/download", "46aab7765d4400e039772d5a50b55c04"),
    ),
    "vit_h_histopathology": (
        "vit_h", "histopathology", "histopathology (H&E nuclei)",
        (_OWNCLOUD + "L7AcvVz7DoWJ2RZ/download", "bd1856dafc156a43fb3aa705f1a6e92e"),
        (_OWNCLOUD + "1qAKxy5H0jgwZvM/download", "3ed9f87e46ad5e16935bd8d722c8dc47"),
    ),
}

_ARCH_LABEL = {"vit_t": "ViT-T", "vit_b": "ViT-B", "vit_l": "ViT-L", "vit_h": "ViT-H"}


def _specs() -> tuple[ModelSpec, ...]:
    specs: list[ModelSpec] = []
    for name, (arch, domain, data, (url, xxh), (dec_url, dec_xxh)) in _TABLE.items():
        specs.append(ModelSpec(
            name=name, arch=arch, filename=f"microsam_{name}.pt", url=url, xxh128=xxh,
            domain=domain, decoder=name + DECODER_SUFFIX,
            description=f"micro-sam {_ARCH_LABEL[arch]} fine-tuned for {data}; "
            "with an instance decoder (AIS)",
        ))
        specs.append(ModelSpec(
            name=name + DECODER_SUFFIX, arch="unetr_decoder",
            filename=f"microsam_{name}{DECODER_SUFFIX}.pt", url=dec_url, xxh128=dec_xxh,
            domain=domain,
            description=f"instance decoder of {name} (loaded with it; not a SAM model)",
        ))
    return tuple(specs)


#: Registry entries: each model followed by its decoder companion.
MICROSAM_MODELS: tuple[ModelSpec, ...] = _specs()


def decoder_name(model_name: str) -> str | None:
    """The registry name of ``model_name``'s instance decoder, or None if it has none."""
    key = model_name.strip().lower()
    return key + DECODER_SUFFIX if key in _TABLE else None


def models_with_decoder() -> tuple[str, ...]:
    """Names of the registry models that come with an instance decoder."""
    return tuple(_TABLE)
