"""The ``samscope`` command line.

Exit codes: 0 success, 2 bad usage (argparse errors, :class:`~._common.UsageError`,
unknown ``key=value`` arguments), 1 failure (a missing file, an unreadable image, a
model that cannot be loaded, ...). Errors are one line on stderr; ``--debug`` (anywhere
on the line) prints the full traceback instead. The project's own warnings (small
objects, a shrunk image, ...) are one line too, ``samscope CMD: warning: ...``, written
above any progress bar; ``--debug`` shows them in Python's format with their source.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence

from napari_samscope.cli._common import UsageError, expand_key_values

#: subcommand modules, each with ``register(subparsers)``; the order is the --help order
SUBCOMMAND_MODULES = (
    "predict", "everything", "annotate", "models", "export", "sample", "train", "evaluate",
    "embed",
)

EPILOG = """\
examples:
  samscope sample --out samples
  samscope predict --source samples/nuclei_2d.tif --out results
  samscope predict model=sam_b.pt source=path/to/image.jpg
  samscope annotate samples --save-coco
  samscope models
Run 'samscope COMMAND --help' for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    import importlib

    from napari_samscope import __version__

    parser = argparse.ArgumentParser(
        prog="samscope",
        description="Segment Anything for microscopy: SAM / MobileSAM from the command line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"samscope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"napari_samscope.cli.{name}").register(subparsers)
    return parser


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` from anywhere before a ``--`` separator."""
    out, debug, literal = [], False, False
    for token in argv:
        if token == "--":
            literal = True
        if token == "--debug" and not literal:
            debug = True
            continue
        out.append(token)
    return out, debug


def _subcommand_index(argv: list[str], parser: argparse.ArgumentParser) -> int | None:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for index, token in enumerate(argv):
        if token in subparsers.choices:
            return index
        if not token.startswith("-"):
            break
    return None


def _expand(argv: list[str], parser: argparse.ArgumentParser, index: int | None) -> list[str]:
    """Apply :func:`expand_key_values` to the tokens after the subcommand name."""
    if index is None:
        return argv
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return argv[: index + 1] + expand_key_values(argv[index + 1 :], subparsers.choices[argv[index]])


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):  # str(KeyError) is the quoted key only
        message = f"missing key {message}"
    return message


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Show warnings raised by napari_samscope's own modules as one line on stderr,
    ``"<command>: warning: <message>"`` (through ``tqdm.write`` when tqdm is installed, so
    that a progress bar on the same stream is not broken); other warnings as Python shows
    them."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not getattr(category, "__module__", "").startswith("napari_samscope"):
            return shown(message, category, filename, lineno, file, line)
        text = f"{command}: warning: {_one_line(message)}"
        try:
            from tqdm import tqdm
        except ImportError:
            print(text, file=sys.stderr)
        else:
            tqdm.write(text, file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _keep_freed_memory() -> None:
    """The command is a process of its own that encodes image after image: let large
    activations reuse freed pages (``core.host_memory``; ``SAMSCOPE_HOST_MALLOC=default``
    keeps glibc's behaviour)."""
    from napari_samscope.core.host_memory import keep_freed_memory

    try:
        keep_freed_memory()
    except ValueError as exc:  # a bad SAMSCOPE_HOST_MALLOC
        raise UsageError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samscope`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    tokens, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    index = _subcommand_index(tokens, parser)
    command = "samscope" if index is None else f"samscope {tokens[index]}"
    try:
        tokens = _expand(tokens, parser, index)
        try:
            args = parser.parse_args(tokens)
        except SystemExit as stop:  # argparse: --help/--version (0) or a usage error (2)
            return int(stop.code or 0) if isinstance(stop.code, int | None) else 2
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        _keep_freed_memory()
        if debug:
            return int(args.func(args))
        with one_line_warnings(command):
            return int(args.func(args))
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f"{command}: error: {_one_line(exc)} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
