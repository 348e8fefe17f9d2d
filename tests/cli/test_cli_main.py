"""samscope: help, exit codes, one-line errors, --debug, key=value rewriting, python -m."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from napari_samscope.cli._common import UsageError, expand_key_values, parse_box, parse_point
from napari_samscope.cli.main import SUBCOMMAND_MODULES, build_parser

COMMANDS = ["predict", "everything", "annotate", "models", "info", "download", "export", "sample",
            "train", "evaluate"]


def test_every_subcommand_is_registered():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) <= set(subparsers.choices)
    assert "train" in SUBCOMMAND_MODULES and "evaluate" in SUBCOMMAND_MODULES


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_subcommand(run_cli, command):
    code, out, err = run_cli(command, "--help")
    assert code == 0, err
    assert f"samscope {command}" in out and "--debug" in out


def test_top_level_help_version_and_no_command(run_cli):
    code, out, err = run_cli("--help")
    assert code == 0, err
    assert "predict" in out and "annotate" in out
    code, out, err = run_cli("--version")
    assert code == 0, err
    assert out.startswith("samscope ")
    code, _, err = run_cli()
    assert code == 2 and "usage" in err


def test_bad_usage_exits_2(run_cli):
    code, _, err = run_cli("nonsense")
    assert code == 2 and "invalid choice" in err
    code, _, err = run_cli("predict")  # --source is required
    assert code == 2 and "--source" in err
    code, _, err = run_cli("predict", "--source", "x.png", "--points", "1,2,3")
    assert code == 2 and "is not a point" in err
    code, _, err = run_cli("predict", "source=x.png", "colour=red")
    assert code == 2 and "unknown argument 'colour'" in err and err.count("\n") == 1


def test_failure_is_one_line_and_debug_shows_the_traceback(run_cli, tmp_path, tiny_checkpoint):
    missing = tmp_path / "missing.tif"
    code, out, err = run_cli("predict", "--model", tiny_checkpoint, "--source", missing)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "samscope predict: error:" in err and "does not exist" in err and "--debug" in err
    for position in ("first", "last"):
        args = ["predict", "--model", tiny_checkpoint, "--source", missing]
        args = ["--debug", *args] if position == "first" else [*args, "--debug"]
        code, _, err = run_cli(*args)
        assert code == 1 and "Traceback (most recent call last)" in err and "FileNotFoundError" in err


def test_unknown_model_is_a_failure_with_the_valid_names(run_cli, nuclei_png):
    code, _, err = run_cli("predict", "--model", "no_such_model", "--source", nuclei_png)
    assert code == 1 and "vit_b" in err and "Traceback" not in err


def _predict_parser():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices


def test_expand_key_values_like_ultralytics():
    choices = _predict_parser()
    predict = choices["predict"]
    assert expand_key_values(["model=sam_b.pt", "source=path/to/image.jpg"], predict) == [
        "--model", "sam_b.pt", "--source", "path/to/image.jpg"]
    assert expand_key_values(["points=[900,370]", "labels=[1]"], predict) == [
        "--points", "900,370", "--labels", "1"]
    assert expand_key_values(["points=[[1,2],[3,4]]", "labels=[1,0]"], predict) == [
        "--points", "1,2", "3,4", "--labels", "1", "0"]
    assert expand_key_values(["bboxes=[439,437,524,709]"], predict) == [
        "--bboxes", "439,437,524,709"]
    assert expand_key_values(["multimask=True", "--out", "a=b"], predict) == [
        "--multimask", "--out", "a=b"]
    assert expand_key_values(["multimask=False"], predict) == []
    annotate = choices["annotate"]
    assert expand_key_values(["data=imgs", "det_model=blobs", "sam_model=sam_b.pt", "classes=[0,2]"],
                             annotate) == ["imgs", "--det-model", "blobs", "--sam-model", "sam_b.pt",
                                           "--classes", "0", "2"]
    everything = choices["everything"]
    assert expand_key_values(["points_per_side=16", "crop_n_layers=1"], everything) == [
        "--points-per-side", "16", "--crop-n-layers", "1"]
    assert expand_key_values(["--", "x=y"], predict) == ["--", "x=y"]
    with pytest.raises(UsageError, match="unknown argument"):
        expand_key_values(["imgsz=1024"], predict)
    with pytest.raises(UsageError, match="True or False"):
        expand_key_values(["multimask=maybe"], predict)
    with pytest.raises(UsageError, match="cannot read the list"):
        expand_key_values(["points=[1,2"], predict)


def test_point_and_box_parsers():
    assert parse_point("3,4.5") == (3.0, 4.5)
    assert parse_point("[3, 4]") == (3.0, 4.0)
    assert parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    for bad in ("1", "a,b", "1,2,3", "nan,1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_point(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_box("1,2,3")


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "napari_samscope.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "samscope" in done.stdout


def test_our_subcommands_register_without_importing_torch():
    code = (
        "import argparse, importlib, sys\n"
        "parser = argparse.ArgumentParser(); sub = parser.add_subparsers()\n"
        "for name in ('predict', 'everything', 'annotate', 'models', 'export', 'sample'):\n"
        "    importlib.import_module('napari_samscope.cli.' + name).register(sub)\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
