"""load_sam: paths, registry names, downloads, the default model, devices, bad files."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from _http_server import FileServer

from napari_samscope.core.modeling.build import ARCHITECTURES, detect_config
from napari_samscope.core.progress import Progress, run
from napari_samscope.core.weights import registry
from napari_samscope.core.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    save_checkpoint,
)
from napari_samscope.core.weights.download import CACHE_ENV_VAR, DownloadError
from napari_samscope.core.weights.loader import LoadedModel, load_sam, load_sam_iter
from napari_samscope.core.weights.registry import ModelSpec, register_local_model


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """Private cache, no run-time models, and a package folder without the default model."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    monkeypatch.setattr(registry, "_user_models", {})
    monkeypatch.setattr(registry, "_PACKAGE_ROOT", tmp_path / "pkg")
    return cache


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    actual = model.state_dict()
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key].cpu(), value.cpu()), key


def test_misleading_file_name_loads_as_what_it_is(tmp_path, tiny_sam, monkeypatch):
    path = tmp_path / "sam_vit_h_4b8939.pth"  # a registry alias, but the file is a tiny ViT
    torch.save(tiny_sam.state_dict(), path)
    loaded = load_sam(path, device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec is None and loaded.path == path and loaded.name == path.name
    # (decoder heads are invisible in shapes; only the stored config of the project format
    # carries them, see test_project_format_uses_the_stored_config)
    assert loaded.sam.config.encoder == tiny_sam.config.encoder
    assert loaded.sam.config.encoder != ARCHITECTURES["vit_h"].encoder
    assert_same_weights(loaded.sam, tiny_sam)
    assert not loaded.sam.training
    assert loaded.device == torch.device("cpu") and loaded.dtype is None

    # as a bare string in the working folder, the existing file wins over the registry
    monkeypatch.chdir(tmp_path)
    by_name = load_sam("sam_vit_h_4b8939.pth", device="cpu")
    assert by_name.spec is None and by_name.sam.config.encoder == tiny_sam.config.encoder


@pytest.mark.parametrize("key", ["model", "state_dict", "model_state"])
def test_wrapped_checkpoints(tmp_path, tiny_sam, key):
    path = tmp_path / "wrapped.ckpt"
    torch.save({key: tiny_sam.state_dict(), "epoch": 2}, path)
    assert_same_weights(load_sam(str(path), device="cpu").sam, tiny_sam)


def test_project_format_uses_the_stored_config(tmp_path, tiny_mobile_sam):
    # TinyViT's img_size is invisible in the shapes: only the stored config knows it is 64
    assert detect_config(tiny_mobile_sam.state_dict()).img_size == 1024
    path = save_checkpoint(tmp_path / "mobile.pt", tiny_mobile_sam, meta={"note": "tiny"})
    loaded = load_sam(path, device="cpu")
    assert loaded.sam.config == tiny_mobile_sam.config
    assert loaded.sam.img_size == 64
    assert loaded.meta == {"note": "tiny"}
    assert_same_weights(loaded.sam, tiny_mobile_sam)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.sam.image_encoder(image), tiny_mobile_sam.image_encoder(image)
        )


def test_progress_and_dtype(tmp_path, tiny_sam):
    path = tmp_path / "m.pt"
    torch.save(tiny_sam.state_dict(), path)
    reports: list[Progress] = []
    loaded = load_sam(path, device="auto", dtype="bf16", progress=reports.append)
    assert loaded.dtype == torch.bfloat16
    assert [(r.message, r.done, r.total) for r in reports] == [
        ("loading m.pt", i, 3) for i in range(4)
    ]
    assert all(p.dtype == torch.float32 for p in loaded.sam.parameters())


def test_default_dtype_of_a_file_is_float32_and_explicit_requests_hold(tmp_path, tiny_sam):
    path = tmp_path / "sam_b.pt"  # a registry alias as file name: still a file, not vit_b
    torch.save(tiny_sam.state_dict(), path)
    assert load_sam(path, device="cpu").dtype is None
    assert load_sam(str(path), device="cpu", dtype="default").dtype is None
    assert load_sam(path, device="cpu", dtype="float32").dtype is None
    assert load_sam(path, device="cpu", dtype=None).dtype is None
    assert load_sam(path, device="cpu", dtype="bfloat16").dtype == torch.bfloat16


# --- the registry --------------------------------------------------------------------


@pytest.fixture
def served_model(tiny_sam, monkeypatch):
    """A downloadable registry entry 'test_sam' (alias 'test_sam.pt') on a local server."""
    import io

    buffer = io.BytesIO()
    torch.save(tiny_sam.state_dict(), buffer)
    data = buffer.getvalue()
    with FileServer({"/test_sam.pt": data}) as server:
        spec = ModelSpec(
            name="test_sam", arch="tiny_test", filename="test_sam.pt", url=server.url("/test_sam.pt"),
            size=len(data), sha256=hashlib.sha256(data).hexdigest(), aliases=("test_sam.pt",),
        )
        monkeypatch.setattr(registry, "_BUILTIN", (*registry._BUILTIN, spec))
        yield server, spec


def test_registry_name_downloads_once(served_model, tiny_sam, isolated):
    server, spec = served_model
    reports: list[Progress] = []
    loaded = load_sam("TEST_SAM.PT", device="cpu", progress=reports.append)
    assert loaded.spec is spec and loaded.name == "test_sam"
    assert loaded.path == isolated / "test_sam.pt"
    assert_same_weights(loaded.sam, tiny_sam)
    assert reports[0].message == "downloading test_sam.pt"
    assert reports[-1].message == "loading test_sam"
    assert server.requests == ["/test_sam.pt"]

    again = load_sam("test_sam", device="cpu")
    assert again.path == loaded.path
    assert server.requests == ["/test_sam.pt"], "a cached model must not be downloaded again"


@pytest.mark.parametrize("native", [True, False])
def test_registry_default_dtype_follows_the_models_bf16_flag(
    served_model, isolated, monkeypatch, native
):
    from napari_samscope.core import device as device_module

    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    _, spec = served_model
    assert load_sam("test_sam", device="cpu").dtype is None  # not flagged: float32
    flagged = dataclasses.replace(spec, auto_bf16=True)
    monkeypatch.setattr(registry, "_BUILTIN", (*registry._BUILTIN[:-1], flagged))
    assert load_sam("test_sam", device="cpu").dtype == (torch.bfloat16 if native else None)
    assert load_sam("test_sam", device="cpu", dtype="float32").dtype is None
    assert load_sam("test_sam", device="cpu", dtype=None).dtype is None
    assert load_sam("test_sam", device="cpu", dtype="bfloat16").dtype == torch.bfloat16
    assert load_sam("test_sam", device="cpu", dtype="auto").dtype == (
        torch.bfloat16 if native else None
    )


def test_registry_download_with_wrong_hash(served_model, monkeypatch, isolated):
    server, spec = served_model
    bad = ModelSpec(**{**spec.__dict__, "sha256": "1" * 64})
    monkeypatch.setattr(registry, "_BUILTIN", (*registry._BUILTIN[:-1], bad))
    with pytest.raises(DownloadError, match="sha256"):
        load_sam("test_sam", device="cpu")
    assert list(isolated.iterdir()) == []


def test_bad_device_fails_before_downloading(served_model):
    server, _spec = served_model
    with pytest.raises(ValueError, match="is not a device"):
        load_sam("test_sam", device="gpu0")
    with pytest.raises(ValueError, match="float16 autocast is not supported on the CPU"):
        load_sam("test_sam", device="cpu", dtype="fp16")
    assert server.requests == []


def test_cancel_during_load_leaves_no_model(tmp_path, tiny_sam):
    path = tmp_path / "m.pt"
    torch.save(tiny_sam.state_dict(), path)
    job = load_sam_iter(path, device="cpu")
    assert next(job).done == 0
    job.close()
    assert path.read_bytes()  # the user's file is untouched


def test_default_model_not_installed():
    with pytest.raises(FileNotFoundError, match="default model 'samscope_nuclei' is not installed"):
        load_sam(device="cpu")


def test_default_model_installed(tmp_path, tiny_sam, monkeypatch):
    path = save_checkpoint(tmp_path / "pkg" / "models" / "samscope_nuclei.pt", tiny_sam)
    data = path.read_bytes()  # the packaged file is checked against its size and sha256
    builtin = tuple(
        dataclasses.replace(s, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        if s.name == registry.DEFAULT_MODEL
        else s
        for s in registry._BUILTIN
    )
    monkeypatch.setattr(registry, "_BUILTIN", builtin)
    loaded = load_sam(None, device="cpu")
    assert loaded.name == "samscope_nuclei" and loaded.spec.source == "package"
    assert_same_weights(loaded.sam, tiny_sam)


def test_registered_local_model(tmp_path, tiny_sam):
    path = save_checkpoint(tmp_path / "trained" / "nuclei_v2.pt", tiny_sam)
    register_local_model("Nuclei v2", path)
    loaded = run(load_sam_iter("nuclei V2", device="cpu"))
    assert loaded.name == "Nuclei v2" and loaded.path == path.resolve()
    assert_same_weights(loaded.sam, tiny_sam)


# --- bad input -----------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file at .*absent.pt"):
        load_sam(tmp_path / "absent.pt", device="cpu")


def test_missing_path_as_string_lists_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a registered model name.*vit_b"):
        load_sam(str(tmp_path / "absent.pth"), device="cpu")
    with pytest.raises(FileNotFoundError, match="not a registered model"):
        load_sam("sam_z.pt", device="cpu")


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown model 'sam_xl'.*vit_b"):
        load_sam("sam_xl", device="cpu")


@pytest.mark.parametrize("bad", [3, 2.5, ["vit_b"]])
def test_wrong_model_type(bad):
    with pytest.raises(TypeError, match="model must be"):
        load_sam(bad, device="cpu")


def test_corrupt_file(tmp_path, tiny_sam):
    path = tmp_path / "broken.pt"
    torch.save(tiny_sam.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a valid PyTorch checkpoint"):
        load_sam(path, device="cpu")


def test_malicious_file(tmp_path, tiny_sam):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    path = tmp_path / "mobile_sam.pt"
    torch.save({"model": tiny_sam.state_dict(), "x": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused for safety"):
        load_sam(path, device="cpu")
    assert not marker.exists()


def test_state_dict_that_does_not_fit(tmp_path, tiny_sam):
    state = tiny_sam.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="incomplete.pt does not hold a loadable SAM model"):
        load_sam(path, device="cpu")


def test_wrong_config_in_project_file(tmp_path, tiny_sam, tiny_mobile_sam):
    path = tmp_path / "mixed.pt"
    torch.save(
        {"model": tiny_sam.state_dict(), "config": tiny_mobile_sam.config.to_dict(), "meta": {}},
        path,
    )
    with pytest.raises(CheckpointError, match="does not hold a loadable SAM model"):
        load_sam(path, device="cpu")


# --- files that must not load as if nothing were wrong ----------------------------------


def test_non_finite_weights_are_refused(tmp_path, tiny_sam):
    state = {k: v.clone() for k, v in tiny_sam.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="non-finite weights") as info:
        load_sam(path, device="cpu")
    assert key in str(info.value)


def test_registry_model_must_have_its_registry_architecture(tmp_path, tiny_sam, monkeypatch):
    from napari_samscope.core.modeling import build

    state = dict(tiny_sam.state_dict())
    monkeypatch.setitem(build.ARCHITECTURES, "tiny_reg", detect_config(state))
    depth = tiny_sam.config.encoder.depth
    last = f"image_encoder.blocks.{depth - 1}."
    fewer = {k: v for k, v in state.items() if not k.startswith(last)}  # one block removed
    for name, weights in (("good.pt", state), ("fewer.pt", fewer)):
        torch.save(weights, tmp_path / name)
        register_local_model(name[:-3], tmp_path / name)
    specs = {s.name: dataclasses.replace(s, arch="tiny_reg") for s in registry._user_models.values()}
    monkeypatch.setattr(registry, "_user_models", {k.lower(): v for k, v in specs.items()})
    assert load_sam("good", device="cpu").sam.config == detect_config(state)
    with pytest.raises(CheckpointError, match=rf"encoder.depth {depth - 1} instead of {depth}"):
        load_sam("fewer", device="cpu")
    assert load_sam(tmp_path / "fewer.pt", device="cpu").sam.config.encoder.depth == depth - 1  # by path: as it is


def test_directory_as_checkpoint_says_it_is_a_directory(tmp_path):
    folder = tmp_path / "weights.pt"
    folder.mkdir()
    for model in (folder, str(folder), str(tmp_path)):
        with pytest.raises(ValueError, match="is a directory"):
            load_sam(model, device="cpu")


def test_raw_pickle_is_called_an_unsafe_legacy_format(tmp_path, tiny_sam):
    import pickle

    path = tmp_path / "raw.pt"
    with open(path, "wb") as f:
        pickle.dump({k: v.numpy() for k, v in tiny_sam.state_dict().items()}, f)
    with pytest.raises(UnsafeCheckpointError, match="raw Python pickle \\(an unsafe legacy format\\)"):
        load_sam(path, device="cpu")
    legacy = tmp_path / "legacy.pt"  # torch's own pre-zip format is still read safely
    torch.save(tiny_sam.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert load_sam(legacy, device="cpu").sam.config == detect_config(dict(tiny_sam.state_dict()))


def test_corrupt_message_is_whole(tmp_path):
    path = tmp_path / "zeros.pt"
    path.write_bytes(bytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_sam(path, device="cpu")
    message = str(info.value)
    assert message.count("(") == message.count(")") and "legacy )" not in message
    assert message.endswith("Delete it and download or save it again.")


def test_corrupt_cached_download_names_the_file_to_delete(served_model, isolated):
    _server, spec = served_model
    isolated.mkdir(parents=True, exist_ok=True)
    damaged = isolated / "test_sam.pt"
    damaged.write_bytes(bytes(spec.size))
    with pytest.raises(DownloadError, match=f"Delete {damaged}"):
        load_sam("test_sam", device="cpu")
