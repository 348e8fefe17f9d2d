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


def test_the_python_example_does_not_rerun_into_the_cli_output():
    """Run after ``samscope annotate samples``, the Python example must annotate, not skip."""
    text = DOC.read_text(encoding="utf-8")
    calls = re.findall(r'auto_annotate\(data="samples".*?output_dir=([^,)]+)', text)
    assert calls and all(c.strip() not in ("None", '"samples_auto_annotate_labels"') for c in calls)


def test_gitignore_covers_what_the_docs_create():
    import shutil
    import subprocess

    root = DOC.parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    created = ["samples/png/nuclei_2d.png", "results/nuclei_2d_labels.tif", "onnx/x.onnx",
               "samples_auto_annotate_labels/nuclei_2d.txt", "gt_annotations/nuclei_2d.txt",
               "python_labels/nuclei_2d.txt", "model.pt", "results_cluster/nuclei_2d_labels.tif",
               "results_folder/nuclei_2d_labels.tif", "stack_emb.zarr/zarr.json",
               "everything_out/nuclei_2d_labels.tif", "stack_embeddings.zarr/zarr.json"]
    for path in created:
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
        assert done.returncode == 0, f"{path} is not ignored"
