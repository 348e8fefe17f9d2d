"""Every ``samscope`` command shown in docs/distributed.md parses with the current options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from napari_samscope.cli.main import _expand, _subcommand_index, build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def _commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("#")[0].strip().rstrip("&").strip()
            if command.startswith("samscope "):
                commands.append(command)
    return commands


def test_the_doc_shows_a_local_and_an_existing_scheduler_run():
    commands = _commands()
    assert any("--workers" in c for c in commands)
    assert any("--scheduler tcp://" in c for c in commands)


@pytest.mark.parametrize("command", _commands())
def test_documented_command_parses(command):
    parser = build_parser()
    tokens = shlex.split(command)[1:]
    args = parser.parse_args(_expand(tokens, parser, _subcommand_index(tokens, parser)))
    assert callable(args.func)
