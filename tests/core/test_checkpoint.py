"""Safe checkpoint reading (weights_only), wrappers, clear errors, atomic saving."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samscope.core.weights.checkpoint import (
    FORMAT,
    CheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
    save_checkpoint,
    sidecar_path,
    unwrap_checkpoint,
)
from napari_samscope.core.weights.download import file_sha256


def assert_same_state(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.fixture
def state(tiny_sam) -> dict[str, torch.Tensor]:
    return tiny_sam.state_dict()


# --- layouts -------------------------------------------------------------------------


def test_plain_state_dict(tmp_path, state):
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    contents = read_checkpoint(path)
    assert_same_state(contents.state_dict, state)
    assert contents.config is None and contents.meta is None


def test_legacy_serialization(tmp_path, state):
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_same_state(read_checkpoint(str(path)).state_dict, state)


@pytest.mark.parametrize("key", ["model", "state_dict", "model_state"])
def test_wrappers(tmp_path, state, key):
    path = tmp_path / "wrapped.pt"
    torch.save({key: state, "epoch": 7, "lr": 1e-4, "notes": ["a"]}, path)
    contents = read_checkpoint(path)
    assert_same_state(contents.state_dict, state)
    assert contents.config is None


def test_nested_wrapper_and_dataparallel_prefix(tmp_path, state):
    path = tmp_path / "ddp.pt"
    torch.save({"model": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}, path)
    assert_same_state(read_checkpoint(path).state_dict, state)


def test_unwrap_in_memory(state):
    contents = unwrap_checkpoint({"model": state, "config": {"x": 1}, "meta": {"y": 2}})
    assert contents.config == {"x": 1} and contents.meta == {"y": 2}
    assert_same_state(contents.state_dict, state)


# --- project format ------------------------------------------------------------------


def test_save_checkpoint_project_format(tmp_path, tiny_mobile_sam):
    path = tmp_path / "deep" / "er" / "mine.pt"
    meta = {"epochs": 3, "dataset": "synthetic nuclei", "loss": [0.5, 0.25]}
    assert save_checkpoint(path, tiny_mobile_sam, meta=meta) == path
    assert sorted(os.listdir(path.parent)) == ["mine.pt", "mine.pt.json"]

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and set(raw) == {"format", "model", "config", "meta"}
    contents = read_checkpoint(path)
    assert_same_state(contents.state_dict, tiny_mobile_sam.state_dict())
    assert contents.config == tiny_mobile_sam.config.to_dict()
    assert contents.meta == meta

    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar_path(path) == tmp_path / "deep" / "er" / "mine.pt.json"
    assert sidecar["arch"] == "custom_tiny_vit" and sidecar["file"] == "mine.pt"
    assert sidecar["size"] == path.stat().st_size
    assert sidecar["sha256"] == file_sha256(path)
    assert sidecar["config"] == tiny_mobile_sam.config.to_dict()
    assert sidecar["meta"] == meta


def test_sidecar_names_official_architectures(tmp_path):
    from napari_samscope.core.modeling.build import ARCHITECTURES

    class FakeSam(torch.nn.Module):  # saving only needs state_dict() and .config
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))
            self.config = ARCHITECTURES["vit_b"]

    path = save_checkpoint(tmp_path / "b.pt", FakeSam())
    assert json.loads(sidecar_path(path).read_text())["arch"] == "vit_b"


def test_save_checkpoint_bad_meta_and_model(tmp_path, tiny_sam):
    with pytest.raises(TypeError, match="JSON-able"):
        save_checkpoint(tmp_path / "x.pt", tiny_sam, meta={"array": np.zeros(2)})
    with pytest.raises(TypeError, match="no .config"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, tiny_sam, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_sam, meta={"version": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_sam, meta={"version": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]
    assert json.loads(sidecar_path(path).read_text())["meta"] == {"version": 1}


# --- bad files -----------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file at .*nothing.pt"):
        read_checkpoint(tmp_path / "nothing.pt")


def test_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


def _corrupt_files(tmp_path: Path, state: dict) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    torch.save(state, good)
    legacy = tmp_path / "legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": b"",
        "truncated_zip": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "html_error_page": b"<html><body>404 Not Found</body></html>",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    "kind", ["empty", "truncated_zip", "truncated_legacy", "random", "html_error_page"]
)
def test_corrupt_files(tmp_path, state, kind):
    path = _corrupt_files(tmp_path, state)[kind]
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "is not a valid PyTorch checkpoint (truncated or corrupt?)" in message
    assert str(path) in message and "Delete it" in message
    assert not isinstance(info.value, UnsafeCheckpointError)


class _RunsShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _WritesFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload_cls", [_RunsShellCommand, _WritesFile])
@pytest.mark.parametrize("writer", ["torch.save", "pickle2", "pickle5"])
def test_malicious_pickle_is_refused_without_running(tmp_path, state, payload_cls, writer):
    marker = tmp_path / "marker"
    evil = {"model": state, "extra": payload_cls(marker)}
    path = tmp_path / "sam_vit_b_01ec64.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2 if writer == "pickle2" else 5)

    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert not marker.exists(), "the pickle's code must never run"
    if writer != "pickle5":  # protocol 5 is refused earlier, as unreadable
        assert isinstance(info.value, UnsafeCheckpointError)
        message = str(info.value)
        assert "refused for safety" in message and "not plain tensors" in message
        assert str(path) in message
    if writer == "torch.save":  # the refused global is named (a plain pickle of tensors
        # is refused earlier, at torch.storage._load_from_bytes)
        assert "system" in str(info.value) or "exec" in str(info.value)


def test_numpy_objects_are_refused(tmp_path):
    path = tmp_path / "numpy.pt"
    torch.save({"image_encoder.x": np.zeros(3)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused for safety"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, "not a SAM checkpoint: no entries start with image_encoder."),
        ({"model": {"backbone.w": torch.zeros(1)}}, "not a SAM checkpoint"),
        ([torch.zeros(2)], "holds a list, not a state dict"),
        (torch.zeros(3), "holds a Tensor"),
        ({}, "not a SAM checkpoint"),
        ({"image_encoder.w": torch.zeros(1), "mask_decoder.n": 3}, "'mask_decoder.n' is a int, not a tensor"),
    ],
)
def test_not_a_sam_state_dict(tmp_path, obj, match):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_errors_are_value_errors():
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(UnsafeCheckpointError, CheckpointError)
