"""Every ``samscope`` command shown in docs/cli.md parses with the current options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from napari_samscope.cli.main import _expand, _subcommand_index, build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#")[0].strip()
            if command.startswith("samscope "):
                commands.append(command)
    return commands


def test_the_doc_has_examples_of_every_main_command():
    used = {shlex.split(c)[1] for c in _commands()}
    assert {"sample", "predict", "everything", "annotate", "models", "info", "download", "export"} <= used


@pytest.mark.parametrize("command", _commands())
def test_documented_command_parses(command):
    parser = build_parser()
    tokens = shlex.split(command)[1:]
    args = parser.parse_args(_expand(tokens, parser, _subcommand_index(tokens, parser)))
    assert callable(args.func)
