"""samscope models / info / download."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path


def test_models_lists_the_registry_with_cached_column(run_cli):
    code, out, err = run_cli("models")
    assert code == 0, err
    header = out.splitlines()[0]
    assert "name" in header and "cached" in header
    for name in ("samscope_nuclei (default)", "vit_b", "vit_l", "vit_h", "vit_t", "sam_b.pt", "mobile_sam.pt"):
        assert name in out
    vit_b = next(line for line in out.splitlines() if line.startswith("vit_b"))
    assert " no " in vit_b  # the tests' cache folder never holds real weights
    assert "cache folder:" in out


def test_info_of_a_checkpoint_and_of_a_model_not_downloaded(run_cli, tiny_checkpoint):
    code, out, err = run_cli("info", tiny_checkpoint)
    assert code == 0, err
    assert "parameters" in out and "input 64x64" in out
    code, out, err = run_cli("info", "sam_b.pt")
    assert code == 0, err
    assert "vit_b" in out and "not downloaded" in out and "93,735,472" in out
    code, _, err = run_cli("info", "no_such_model")
    assert code == 1 and "Unknown model" in err


def _server():
    path = Path(__file__).resolve().parents[1] / "core" / "_http_server.py"
    spec = importlib.util.spec_from_file_location("_samscope_http_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_download_from_a_local_server(run_cli, monkeypatch, tmp_path):
    from napari_samscope.core.weights import registry

    payload = b"weights" * 1000
    http = _server()
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    with http.FileServer({"/w.pt": payload}) as server:
        spec = dataclasses.replace(
            registry.lookup("vit_t"), url=server.url("/w.pt"), size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(), filename="w.pt",
        )
        monkeypatch.setattr(registry, "resolve", lambda name: spec)
        code, out, err = run_cli("download", "vit_t")
    assert code == 0, err
    assert "w.pt" in out
    assert (tmp_path / "cache" / "w.pt").read_bytes() == payload
    with http.FileServer({}) as server:  # now the server does not have the file: 404
        spec = dataclasses.replace(spec, url=server.url("/w.pt"), filename="other.pt")
        monkeypatch.setattr(registry, "resolve", lambda name: spec)
        code, _, err = run_cli("download", "vit_t")
    assert code == 1 and "other.pt" in err and "Traceback" not in err


def test_download_usage(run_cli):
    code, _, err = run_cli("download")
    assert code == 2 and "model" in err
    code, _, err = run_cli("download", "not_a_model")
    assert code == 1 and "Unknown model" in err


def test_models_shows_a_damaged_cached_file_as_corrupt_and_names_it(run_cli, monkeypatch, tmp_path):
    from napari_samscope.core.weights import registry

    payload = b"weights" * 1000
    spec = dataclasses.replace(
        registry.lookup("vit_t"), name="test_w", aliases=(), url="http://127.0.0.1:9/w.pt",
        size=len(payload), sha256=hashlib.sha256(payload).hexdigest(), filename="w.pt",
    )
    monkeypatch.setattr(registry, "_BUILTIN", (*registry._BUILTIN, spec))
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    (tmp_path / "w.pt").write_bytes(bytes(len(payload)))  # right size, wrong content
    code, out, err = run_cli("models")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("test_w"))
    assert " corrupt " in row
    assert f"Delete {tmp_path / 'w.pt'}" in out
    (tmp_path / "w.pt").write_bytes(payload)
    code, out, _ = run_cli("models")
    assert " yes " in next(line for line in out.splitlines() if line.startswith("test_w"))


def test_info_says_which_size_is_the_file(run_cli, tiny_checkpoint):
    code, out, err = run_cli("info", tiny_checkpoint)
    assert code == 0, err
    size = tiny_checkpoint.stat().st_size / 1e6
    assert f"file: {tiny_checkpoint} ({size:.1f} MB on disk" in out


def test_models_and_info_print_the_same_decimal_size_for_the_default_model(run_cli):
    import re

    from napari_samscope import SAM
    from napari_samscope.core.weights.registry import DEFAULT_MODEL

    code, listing, err = run_cli("models")
    assert code == 0, err
    row = next(line for line in listing.splitlines() if line.startswith(f"{DEFAULT_MODEL} (default)"))
    figure = re.search(r"(\d+\.\d) MB", row).group(1)
    code, info, err = run_cli("info", "--device", "cpu")
    assert code == 0, err
    assert f"{figure} MB file" in info and f"({figure} MB on disk)" in info
    assert "MiB" not in listing + info
    model = SAM(DEFAULT_MODEL, device="cpu")
    assert model.info(verbose=False)["file_mb"] == float(figure)
    assert float(figure) == round(model.path.stat().st_size / 1e6, 1)  # decimal MB, 10^6 bytes
