"""``samscope models``, ``samscope info MODEL`` and ``samscope download MODEL``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_samscope.cli._common import DEFAULT_MODEL_HELP, ProgressBar, add_debug, add_device


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models", help="list the registered models and whether they are downloaded",
        description="List every model of the registry: name, aliases, size, and whether its "
                    "weights are on this computer (cached) or will be downloaded on first use.",
    )
    add_debug(models)
    models.set_defaults(func=run_models)

    info = subparsers.add_parser(
        "info", help="summary of a model (layers, parameters, size, input size)",
        description="Load a model and print its summary. A registry model that is not "
                    "downloaded yet is described from the registry without downloading it.",
    )
    info.add_argument("model", nargs="?", default=None,
                      help=f"name, alias or checkpoint path; default: {DEFAULT_MODEL_HELP}")
    add_device(info)
    add_debug(info)
    info.set_defaults(func=run_info)

    download = subparsers.add_parser(
        "download", help="download a model's weights into the cache",
        description="Download a registry model once into the cache folder (environment "
                    "variable SAMSCOPE_CACHE_DIR overrides it); the sha256 is checked.",
    )
    download.add_argument("model", help="registry name or alias, e.g. vit_b, sam_b.pt, mobile_sam.pt")
    add_debug(download)
    download.set_defaults(func=run_download)


def _size(nbytes: int | None) -> str:
    """A file size in decimal units (MB = 10^6 bytes), as the registry's descriptions."""
    from napari_samscope.core.units import format_size

    return format_size(nbytes)


def _cached_column(status: object) -> tuple[str, str | None]:
    """``("yes" | "no" | "corrupt", problem sentence or None)`` for one model's file.

    A downloaded file of the right size is checked against the registry's sha256 once;
    the result is remembered next to it, so listing stays fast.
    """
    from napari_samscope.core.weights.download import cached_state, corrupt_message
    from napari_samscope.core.weights.registry import check_model_file, lookup

    spec = lookup(status.name)
    if not status.cached or spec is None or spec.source == "local":
        return ("yes" if status.cached else "no"), None
    if spec.source == "package":  # small, and its folder is not ours to write a sidecar in
        try:
            check_model_file(spec)
        except ValueError as exc:
            return "corrupt", str(exc)
        return "yes", None
    if cached_state(spec, status.path) == "corrupt":
        return "corrupt", corrupt_message(spec, status.path)
    return "yes", None


def run_models(args: argparse.Namespace) -> int:
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models

    rows = [("name", "aliases", "file size", "cached", "description")]
    problems = []
    for status in list_models():
        name = status.name + (" (default)" if status.name == DEFAULT_MODEL else "")
        cached, problem = _cached_column(status)
        if problem:
            problems.append(problem)
        rows.append((name, ", ".join(status.aliases), _size(status.size), cached, status.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    for problem in problems:
        print(f"\n{problem}")
    from napari_samscope.core.weights.download import cache_dir

    print(f"\ncache folder: {cache_dir()} (set SAMSCOPE_CACHE_DIR to change it)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from napari_samscope.core.weights.registry import DEFAULT_MODEL, list_models, lookup

    name = args.model if args.model is not None else DEFAULT_MODEL
    spec = None if Path(name).expanduser().is_file() else lookup(name)
    if spec is not None:
        status = next(s for s in list_models() if s.name == spec.name)
        if not status.cached and spec.url is not None:
            from napari_samscope.core.modeling.build import ARCHITECTURES, parameter_count

            params = parameter_count(spec.arch) if spec.arch in ARCHITECTURES else None
            print(f"{spec.name} ({spec.description})")
            print(f"  aliases: {', '.join(spec.aliases)}")
            print(f"  architecture: {spec.arch}, parameters: {params:,}" if params else f"  architecture: {spec.arch}")
            print(f"  file: {_size(spec.size)}, not downloaded yet (samscope download {spec.name})")
            print(f"  url: {spec.url}")
            print(f"  sha256: {spec.sha256 or 'not published (size and strict load are checked)'}")
            return 0
    from napari_samscope.cli._common import load_model

    model = load_model(name, args.device, args.dtype)
    model.info(verbose=True)
    path = getattr(model, "path", None)
    if path is not None and Path(path).is_file():
        print(f"  file: {path} ({_size(Path(path).stat().st_size)} on disk)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from napari_samscope.core.weights.download import download
    from napari_samscope.core.weights.registry import model_path, resolve

    spec = resolve(args.model)
    if spec.url is None:
        print(f"{spec.name} needs no download: its weights are at {model_path(spec)}")
        return 0
    with ProgressBar() as bar:
        path = download(spec, progress=bar)
    print(f"{spec.name}: {path}")
    return 0
