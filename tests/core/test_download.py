"""Downloads against a local HTTP server on 127.0.0.1: success, cache, every failure."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pytest
import torch
from _http_server import FileServer, closed_port_url

from napari_samscope.core.progress import Cancelled, Progress, run
from napari_samscope.core.weights import download as download_mod
from napari_samscope.core.weights.download import (
    CACHE_ENV_VAR,
    DownloadError,
    cache_dir,
    cached_file,
    download,
    download_iter,
    file_sha256,
)
from napari_samscope.core.weights.registry import ModelSpec


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache; the user's real cache is never touched."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


@pytest.fixture(scope="module")
def payload() -> bytes:
    """A real (small) torch checkpoint, as the server will serve it."""
    buffer = io.BytesIO()
    torch.manual_seed(0)
    torch.save({"model": {"mask_decoder.w": torch.randn(64, 64)}}, buffer)
    return buffer.getvalue()


def make_spec(url: str, data: bytes, **changes) -> ModelSpec:
    fields = dict(
        name="test_model",
        arch="vit_t",
        filename="test_model.pt",
        url=url,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    fields.update(changes)
    return ModelSpec(**fields)


def leftovers(folder: Path) -> list[str]:
    """The files in ``folder`` besides the remembered-hash sidecars (tested on their own)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".sha256.json"))


# --- cache folder --------------------------------------------------------------------


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_cache_dir_linux_default(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / ".cache" / "napari-samscope"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "napari-samscope"


def test_cache_dir_macos_and_windows(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "Library" / "Caches" / "napari-samscope"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert cache_dir() == tmp_path / "Local" / "napari-samscope" / "Cache"


def test_file_sha256(tmp_path, payload):
    path = tmp_path / "f.bin"
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


# --- success and cache ---------------------------------------------------------------


def test_download_success_then_cached(payload, tmp_cache):
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload)
        reports: list[Progress] = []
        path = run(download_iter(spec), progress=reports.append)
        assert path == tmp_cache / "test_model.pt" == cached_file(spec)
        assert path.read_bytes() == payload
        assert leftovers(tmp_cache) == ["test_model.pt"]
        assert reports[0].done == 0 and reports[-1].done == reports[-1].total == len(payload)
        assert all(r.message == "downloading test_model.pt" for r in reports)
        assert server.requests == ["/w.pt"]

        again = download(spec, progress=None)
        assert again == path
        assert server.requests == ["/w.pt"], "a cached file must not be downloaded again"


def test_download_into_explicit_folder_in_small_chunks(payload, tmp_path, monkeypatch):
    monkeypatch.setattr(download_mod, "_CHUNK_SIZE", 1000)
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload)
        reports: list[Progress] = []
        path = download(spec, dest_dir=tmp_path / "here", progress=reports.append)
    assert path == tmp_path / "here" / "test_model.pt"
    assert path.read_bytes() == payload
    dones = [r.done for r in reports]
    assert dones == sorted(dones) and len(dones) > len(payload) // 1000


def test_unknown_size_and_hash_still_checks_content_length(payload, tmp_cache):
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload, size=None, sha256=None)
        path = download(spec, progress=None)
    assert path.read_bytes() == payload


def test_wrong_sized_cached_file_is_replaced(payload, tmp_cache):
    tmp_cache.mkdir()
    (tmp_cache / "test_model.pt").write_bytes(payload[:10])
    with FileServer({"/w.pt": payload}) as server:
        path = download(make_spec(server.url("/w.pt"), payload), progress=None)
        assert server.requests == ["/w.pt"]
    assert path.read_bytes() == payload


# --- failures leave nothing that looks like a good file -------------------------------


def test_wrong_hash(payload, tmp_cache):
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload, sha256="0" * 64)
        with pytest.raises(DownloadError, match="sha256 is [0-9a-f]{64} but 0{64} was expected"):
            download(spec, progress=None)
    assert leftovers(tmp_cache) == []


def test_size_mismatch_with_registry(payload, tmp_cache):
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload, size=len(payload) + 5)
        with pytest.raises(DownloadError, match="not the registered one"):
            download(spec, progress=None)
    assert leftovers(tmp_cache) == []


@pytest.mark.parametrize("known_size", [True, False])
def test_truncated_transfer(payload, tmp_cache, known_size):
    cut = len(payload) // 3
    with FileServer({"/w.pt": payload}, truncate={"/w.pt": cut}) as server:
        spec = make_spec(server.url("/w.pt"), payload, sha256=None)
        if not known_size:
            spec = make_spec(server.url("/w.pt"), payload, size=None, sha256=None)
        with pytest.raises(DownloadError, match=f"cut short: received {cut:,} of {len(payload):,}"):
            download(spec, progress=None)
    assert leftovers(tmp_cache) == []


@pytest.mark.parametrize("failure", ["hangup", "chunked_cut"])
def test_broken_connections(payload, tmp_cache, failure):
    with FileServer({"/w.pt": payload}, broken={"/w.pt": failure}) as server:
        spec = make_spec(server.url("/w.pt"), payload, size=None, sha256=None)
        with pytest.raises(DownloadError) as info:
            download(spec, progress=None)
    assert str(tmp_cache / "test_model.pt") in str(info.value)
    assert leftovers(tmp_cache) == []


def test_unreachable_server_says_where_to_put_the_file(payload, tmp_cache):
    url = closed_port_url("/w.pt")
    spec = make_spec(url, payload)
    with pytest.raises(DownloadError) as info:
        download(spec, progress=None)
    message = str(info.value)
    assert "refused" in message
    assert str(tmp_cache / "test_model.pt") in message
    assert url in message and "offline" in message
    assert leftovers(tmp_cache) == []


def test_http_404(payload, tmp_cache):
    with FileServer({}) as server:
        spec = make_spec(server.url("/missing.pt"), payload)
        with pytest.raises(DownloadError, match="HTTP 404") as info:
            download(spec, progress=None)
    assert str(tmp_cache / "test_model.pt") in str(info.value)
    assert leftovers(tmp_cache) == []


def test_cancel_by_closing_the_generator(payload, tmp_cache, monkeypatch):
    monkeypatch.setattr(download_mod, "_CHUNK_SIZE", 512)
    with FileServer({"/w.pt": payload}) as server:
        job = download_iter(make_spec(server.url("/w.pt"), payload))
        next(job)
        next(job)
        assert any(name.endswith(".part") for name in leftovers(tmp_cache))
        job.close()
    assert leftovers(tmp_cache) == []


def test_cancel_through_run_should_stop(payload, tmp_cache, monkeypatch):
    monkeypatch.setattr(download_mod, "_CHUNK_SIZE", 512)
    with FileServer({"/w.pt": payload}) as server:
        calls = iter(range(10**6))
        job = download_iter(make_spec(server.url("/w.pt"), payload))
        with pytest.raises(Cancelled):
            run(job, should_stop=lambda: next(calls) >= 3)
    assert leftovers(tmp_cache) == []


def test_no_url():
    spec = ModelSpec(name="mine", arch="vit_b", filename="mine.pt")
    with pytest.raises(ValueError, match="no download URL"):
        download(spec, progress=None)


def test_download_does_not_import_torch():
    import subprocess

    code = (
        "import sys; import napari_samscope.core.weights.download, napari_samscope.core.weights.registry; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- stale partial files, remembered hashes, damaged cached files ---------------------


def test_stale_part_files_of_killed_downloads_are_removed(payload, tmp_cache):
    import os
    import time

    tmp_cache.mkdir(parents=True)
    stale = tmp_cache / "test_model.pt.abc123.part"  # left by a download killed with SIGKILL
    stale.write_bytes(b"x" * 1000)
    old = time.time() - download_mod.STALE_PART_SECONDS - 60
    os.utime(stale, (old, old))
    running = tmp_cache / "test_model.pt.def456.part"  # another process downloading right now
    running.write_bytes(b"y")
    other = tmp_cache / "other.pt.zzz.part"  # another model's file is not ours to judge
    other.write_bytes(b"z")
    os.utime(other, (old, old))
    with FileServer({"/w.pt": payload}) as server:
        download(make_spec(server.url("/w.pt"), payload), progress=None)
    assert not stale.exists() and running.exists() and other.exists()


def test_hash_is_computed_once_and_remembered(payload, tmp_cache, monkeypatch):
    calls = []
    real = download_mod.file_sha256
    monkeypatch.setattr(download_mod, "file_sha256", lambda path, *a: calls.append(path) or real(path, *a))
    with FileServer({"/w.pt": payload}) as server:
        spec = make_spec(server.url("/w.pt"), payload)
        path = download(spec, progress=None)
    sidecar = path.with_name(path.name + ".sha256.json")
    assert sidecar.exists() and spec.sha256 in sidecar.read_text()
    for _ in range(3):  # cached: the remembered hash is used, the file is not read again
        assert download(spec, progress=None) == path
        assert download_mod.cached_state(spec) == "ok"
    assert calls == []


def test_damaged_cached_file_of_the_right_size_is_named(payload, tmp_cache):
    spec = make_spec("http://127.0.0.1:9/never.pt", payload)
    tmp_cache.mkdir(parents=True)
    damaged = tmp_cache / "test_model.pt"
    damaged.write_bytes(bytes(len(payload)))  # right size, wrong content
    assert download_mod.cached_state(spec) == "corrupt"
    with pytest.raises(DownloadError, match=f"Delete {damaged}"):
        download(spec, progress=None)
    damaged.write_bytes(payload)  # replaced by the right file: the new mtime/content is rehashed
    assert download_mod.cached_state(spec) == "ok"
    damaged.write_bytes(payload[:-1])
    assert download_mod.cached_state(spec) == "incomplete"
    damaged.unlink()
    assert download_mod.cached_state(spec) == "missing"
