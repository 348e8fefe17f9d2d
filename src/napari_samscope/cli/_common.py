"""Shared pieces of the ``samscope`` subcommands.

- :class:`UsageError` (exit code 2) for bad combinations argparse cannot see;
- argparse types for ``x,y`` points and ``x0,y0,x1,y1`` boxes;
- :func:`expand_key_values`: Ultralytics-style ``key=value`` arguments
  (``samscope predict model=sam_b.pt source=img.jpg points=[900,370] labels=[1]``)
  rewritten into the subcommand's ``--key value`` options;
- model loading, image listing and result writing (label TIFF + PNG overlay).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_samscope.core.everything.batch import image_planes, overlay, plane_to_rgb, write_results
from napari_samscope.core.progress import TqdmBar

__all__ = [
    "UsageError",
    "add_debug",
    "accept_negative_values",
    "add_channel_axis",
    "add_model",
    "add_scale",
    "parse_point",
    "parse_box",
    "expand_key_values",
    "load_model",
    "with_scale",
    "process_files",
    "write_results",
    "image_planes",
    "overlay",
    "plane_to_rgb",
]

DEFAULT_MODEL_HELP = "the project default model (samscope_nuclei)"


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot check (exit code 2)."""


def add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the full traceback on errors (parsed early by ``main``)."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show the full traceback when something fails",
    )


def add_model(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    """The ``--model`` option: registry name, alias or checkpoint path."""
    parser.add_argument(
        flag, dest="model", default=None, metavar="MODEL",
        help=f"registry name or alias (vit_b, sam_b.pt, mobile_sam.pt, ...) or a checkpoint "
             f"path; default: {DEFAULT_MODEL_HELP}",
    )


DTYPES = ("default", "float32", "bfloat16", "auto")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` (the compute precision) of the commands that load a model."""
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1, mps; default: automatic")
    parser.add_argument(
        "--dtype", default="default", choices=DTYPES,
        help="compute precision: 'default' (bfloat16 autocast for registry models on hardware "
             "with native bf16, else float32), 'float32', 'bfloat16' or 'auto' [default]",
    )


def parse_scale(text: str) -> str | float:
    """``--scale``: ``auto``, ``fill`` or a magnification above 0."""
    from napari_samscope.core.predict.input_scale import check_scale

    try:
        return check_scale(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_scale(parser: argparse.ArgumentParser) -> None:
    """``--scale``: how images are placed into the model input (``Predictor.set_image``'s
    ``scale``)."""
    parser.add_argument(
        "--scale", type=parse_scale, default=None, metavar="auto|fill|X",
        help="how each image goes into the model input: 'fill' resizes its longest side to "
             "the input (SAM's way), 'auto' keeps it at the magnification the model was "
             "trained for (small images are not blown up), a number is the magnification; "
             "default: 'auto' for models that declare their scale (the default model), else 'fill'",
    )


def add_flips(parser: argparse.ArgumentParser) -> None:
    """``--flips``: orientations averaged for every prompt (``Predictor``'s ``flips``)."""
    parser.add_argument(
        "--flips", type=int, choices=(1, 2, 4), default=None,
        help="decode every prompt on the image and on its flipped copies (2: upside down; "
             "4: also left-right) and average: closer outlines for 2 or 4 times the encoding "
             "time; default: the model's choice (2 for the default model, else 1)",
    )


def add_refine_points(parser: argparse.ArgumentParser) -> None:
    """``--refine-points/--no-refine-points`` (``Predictor``'s ``refine_points``)."""
    parser.add_argument(
        "--refine-points", dest="refine_points", action=argparse.BooleanOptionalAction,
        default=None,
        help="decode a point prompt again with the box of its mask (one more decoder "
             "pass, two with zoom; tighter outlines); default: the model's choice (on for the "
             "default model, off for official SAM and micro-sam models)",
    )


def _zoom(text: str) -> float:
    from napari_samscope.core.predict.zoom import check_zoom

    try:
        return check_zoom(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (1: off), not {text!r}") from None


def add_zoom(parser: argparse.ArgumentParser) -> None:
    """``--zoom``: crops magnified for box prompts and refined points (``Predictor``'s ``zoom``)."""
    parser.add_argument(
        "--zoom", type=_zoom, default=None, metavar="Z",
        help="decode each box prompt (and the box passes of a refined point) on a crop "
             "magnified Z times more than the image: finer outlines, for one encoder pass "
             "per crop; 1 is off; default: the model's choice (2 for the default model, "
             "else 1)",
    )


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    parts = [p for p in re.split(r"[,\s]+", text.strip().strip("[]()")) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what}")
    return values


def parse_point(text: str) -> tuple[float, float]:
    """``"x,y"`` -> ``(x, y)`` in pixels (x = column, y = row)."""
    return _numbers(text, 2, "point 'x,y' (two numbers)")  # type: ignore[return-value]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> XYXY box in pixels; a box without area is refused."""
    x0, y0, x1, y1 = _numbers(text, 4, "box 'x0,y0,x1,y1' (four numbers)")
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no area: a box 'x0,y0,x1,y1' needs x1 > x0 and y1 > y0"
        )
    return x0, y0, x1, y1


#: argparse takes a token that starts with "-" as an option unless it looks like one
#: negative number; coordinate lists such as "-100,-100" or "-5,3,20,40" are values too
_NEGATIVE_VALUE = re.compile(r"^-\d*\.?\d+([,\s]+-?\d*\.?\d+)*$")


def accept_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let ``--points -100,-100`` and ``--bboxes -5,-5,20,20`` parse as values."""
    parser._negative_number_matcher = _NEGATIVE_VALUE  # argparse has no public hook for this


# ----------------------------------------------------------------------------- key=value

_KEY_VALUE = re.compile(r"^([A-Za-z_][\w-]*)=(.*)$", re.DOTALL)


def _find_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    wanted = key.replace("_", "-").lower()
    for action in parser._actions:  # argparse has no public accessor for this
        if action.option_strings:
            if any(opt.lstrip("-").lower() == wanted for opt in action.option_strings):
                return action
        elif action.dest.replace("_", "-").lower() == wanted:
            return action
    return None


def _split_list(value: str) -> list[str]:
    """``"[900,370]"`` -> ``["900,370"]``; ``"[[1,2],[3,4]]"`` -> ``["1,2", "3,4"]``;
    ``"[1,0]"`` (flat, for scalar lists) -> ``["1", "0"]`` (decided by the caller)."""
    text = value.strip()
    if not text.startswith("["):
        return [text]
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UsageError(f"cannot read the list {value!r}; write it like [900,370] or [[1,2],[3,4]]") from None
    if isinstance(parsed, list | tuple) and parsed and all(isinstance(v, list | tuple) for v in parsed):
        return [",".join(str(x) for x in item) for item in parsed]
    if isinstance(parsed, list | tuple):
        return [",".join(str(x) for x in parsed)] if parsed else []
    return [str(parsed)]


def expand_key_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrite ``key=value`` tokens into the options of ``parser`` (one subcommand).

    - ``model=sam_b.pt`` -> ``--model sam_b.pt`` (``-``/``_`` and case do not matter);
    - a positional argument: ``data=path`` -> ``path``;
    - flags: ``overwrite=True`` -> ``--overwrite``; ``overwrite=False`` -> nothing;
    - lists: ``points=[900,370]`` -> one point, ``points=[[1,2],[3,4]]`` -> two points,
      ``labels=[1,0]`` / ``classes=[0,2]`` -> several numbers.

    Tokens after ``--``, tokens that start with ``-`` and the value right after a
    single-valued option (``--source a=b.png``) are kept as they are.

    Raises:
        UsageError: an unknown key or an unreadable value.
    """
    out: list[str] = []
    literal = False
    value_expected = False  # the previous token is an option that takes exactly one value
    for token in argv:
        match = None if literal or value_expected or token.startswith("-") else _KEY_VALUE.match(token)
        if token == "--":
            literal = True
        if match is None:
            option = _find_action(parser, token.lstrip("-")) if token.startswith("--") and "=" not in token else None
            value_expected = (
                not value_expected and option is not None and option.nargs is None
                and not isinstance(option, argparse._StoreTrueAction | argparse._StoreFalseAction
                                   | argparse._HelpAction | argparse._VersionAction)
            )
            out.append(token)
            continue
        key, value = match.group(1), match.group(2)
        action = _find_action(parser, key)
        if action is None:
            raise UsageError(f"unknown argument {key!r} in {token!r}; see --help for the options")
        if not action.option_strings:  # positional
            out.append(value)
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            truth = value.strip().lower()
            if truth not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"{key} takes True or False, not {value!r}")
            if (truth in ("true", "1", "yes")) == isinstance(action, argparse._StoreTrueAction):
                out.append(flag)
            continue
        if action.nargs in ("+", "*"):
            items = _split_list(value)
            scalar_list = action.type not in (parse_point, parse_box)
            if scalar_list and len(items) == 1 and "," in items[0]:
                items = [v for v in items[0].split(",") if v]
            out += [flag, *items]
        else:
            out += [flag, value]
    return out


# ----------------------------------------------------------------------------- model and files


#: a ``Progress`` callback with a tqdm bar on stderr that opens at the first report only
ProgressBar = TqdmBar


def load_model(name: str | None, device: str = "", dtype: str = "default") -> Any:
    """``SAM(name)`` on ``device`` (automatic when empty) with the ``dtype`` request, with a
    progress bar if it takes time."""
    from napari_samscope.core.predict.sam_api import SAM

    with ProgressBar() as bar:
        return SAM(name, device=device or "auto", dtype=dtype, progress=bar)


def with_scale(
    model: Any, scale: Any, flips: Any = None, refine_points: Any = None, zoom: Any = None
) -> Any:
    """``model`` with ``--scale``, ``--flips``, ``--refine-points`` and ``--zoom`` as its
    ``SAM.scale``, ``SAM.flips``, ``SAM.refine_points`` and ``SAM.zoom``, the defaults of
    every predictor made from it (None: the model's own)."""
    if scale is not None:
        model.scale = scale
    if flips is not None:
        model.flips = flips
    if refine_points is not None:
        model.refine_points = refine_points
    if zoom is not None:
        model.zoom = zoom
    return model


def add_channel_axis(parser: argparse.ArgumentParser) -> None:
    """``--channel-axis``: which axis of the files holds the channels (as the API's ``channel_axis``)."""
    parser.add_argument(
        "--channel-axis", dest="channel_axis", type=int, default=None, metavar="AXIS",
        help="the axis of the image array that holds channels (e.g. 2 for a (H, W, 2) TIFF); "
             "default: only RGB(A) images have channels",
    )


def process_files(
    source: str, out: Path, process: Any, what: str = "objects"
) -> int:
    """Run ``process(path, stem) -> (count, written paths)`` on every image of ``source``.

    A file that fails is reported on stderr (``skipped <path>: <reason>``) and the next one is
    tried; the files this command wrote earlier into ``out`` (listed in its manifest) are
    never taken as inputs; a summary line ends the run. Returns the exit code: 1 when any
    file failed, else 0.
    """
    from napari_samscope.core.datasets.annotate_io import list_images, output_stems
    from napari_samscope.core.datasets.manifest import Manifest, resolved_path

    files, _ = list_images(source)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(out)
    produced = manifest.output_paths()
    files = [p for p in files if resolved_path(p) not in produced]
    stems = output_stems(files, fixed=[manifest.stem_of(p) for p in files],
                         reserved={s.lower() for s in manifest.records})
    total, failed = 0, []
    for path, stem in zip(files, stems):
        try:
            count, written = process(path, stem)
        except Exception as exc:  # one bad file never stops the folder
            text = " ".join(str(exc).split())
            reason = text if isinstance(exc, ValueError | OSError) and text else f"{type(exc).__name__}: {text}"
            failed.append(path)
            print(f"skipped {path}: {reason}", file=sys.stderr)
            continue
        total += count
        manifest.record(stem, path, written, keep=False)
        manifest.save()
    done = len(files) - len(failed)
    noun = what if total != 1 else what.rstrip("s")
    print(f"done: {done} image(s), {total} {noun}, {len(failed)} failed; results in {out}")
    return 1 if failed else 0


