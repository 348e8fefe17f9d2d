"""A registry model whose instance decoder must be downloaded: the napari session shows
the decoder's download progress like the model's, and an offline failure says where
to put the file. Everything is served from 127.0.0.1 (``tests/core/_http_server.py``)."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from _http_server import FileServer, closed_port_url  # noqa: E402

from napari_samscope.core.progress import run  # noqa: E402
from napari_samscope.core.weights import registry  # noqa: E402
from napari_samscope.core.weights.download import CACHE_ENV_VAR, DownloadError  # noqa: E402
from napari_samscope.core.weights.registry import ModelSpec  # noqa: E402

PLUGIN = "napari-samscope"
NAME = "tiny_dl"
DECODER = NAME + "_decoder"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, bytes]:
    """A tiny SAM checkpoint (project format) and a decoder file made for its embeddings."""
    import torch

    from napari_samscope.core.weights.checkpoint import save_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _decoder_model import tiny_sam_with_decoder

    model = tiny_sam_with_decoder()
    sam_path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(sam_path, model.model)
    buffer = io.BytesIO()
    # more than one 1 MiB download chunk, so that the progress has steps in between
    torch.save({"decoder_state": model.instance_decoder.state_dict(),
                "padding": torch.zeros(600_000)}, buffer)
    return {"/sam.pt": sam_path.read_bytes(), "/decoder.pt": buffer.getvalue()}


def register(monkeypatch, sam_url: str, decoder_url: str, payloads: dict[str, bytes]) -> None:
    def spec(name: str, arch: str, url: str, data: bytes, **extra) -> ModelSpec:
        return ModelSpec(name=name, arch=arch, filename=f"{name}.pt", url=url, size=len(data),
                         sha256=hashlib.sha256(data).hexdigest(), **extra)

    entries = (
        spec(NAME, "custom", sam_url, payloads["/sam.pt"], decoder=DECODER),
        spec(DECODER, "unetr_decoder", decoder_url, payloads["/decoder.pt"]),
    )
    monkeypatch.setattr(registry, "_BUILTIN", (*registry._BUILTIN, *entries))


def test_the_session_yields_the_decoder_download_progress(cache, monkeypatch, payloads):
    from napari_samscope._napari.session import ModelSession

    with FileServer(payloads) as server:
        register(monkeypatch, server.url("/sam.pt"), server.url("/decoder.pt"), payloads)
        reports = []
        sam = run(ModelSession().load_iter(NAME, "cpu"), progress=reports.append)
        assert server.requests == ["/sam.pt", "/decoder.pt"]
    assert sam.has_instance_decoder and sam.instance_decoder.embed_dim == 32
    decoder_bytes = [r for r in reports if r.message == f"downloading {DECODER}.pt"]
    total = len(payloads["/decoder.pt"])
    assert [r.done for r in decoder_bytes][0] == 0 and decoder_bytes[-1].done == total
    assert len(decoder_bytes) >= 3 and all(r.total == total for r in decoder_bytes)
    assert (cache / f"{DECODER}.pt").is_file()
    # once cached, loading again downloads nothing and yields no download progress
    with FileServer(payloads) as server:
        again = []
        run(ModelSession().load_iter(NAME, "cpu"), progress=again.append)
        assert server.requests == []
    assert not any(r.message.startswith("downloading") for r in again)


def test_an_offline_decoder_download_names_the_exact_path(cache, monkeypatch, payloads):
    from napari_samscope._napari.session import ModelSession

    with FileServer(payloads) as server:
        register(monkeypatch, server.url("/sam.pt"), closed_port_url("/decoder.pt"), payloads)
        with pytest.raises(DownloadError) as error:
            run(ModelSession().load_iter(NAME, "cpu"))
    message = str(error.value)
    assert f"Model {NAME!r} loaded, but its instance decoder {DECODER!r}" in message
    assert str(cache / f"{DECODER}.pt") in message and "offline" in message
    assert not (cache / f"{DECODER}.pt").exists()


def test_the_model_panel_shows_the_decoder_download(viewer, qtbot, cache, monkeypatch, payloads):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    row = widget.model_panel.progress
    shown: list[tuple[str, int, int]] = []
    row.bar.valueChanged.connect(
        lambda value: shown.append((row.label.text(), value, row.bar.maximum()))
    )
    with FileServer(payloads) as server:
        register(monkeypatch, server.url("/sam.pt"), server.url("/decoder.pt"), payloads)
        with qtbot.waitSignal(widget.session.model_changed, timeout=30_000):
            widget.model_panel.load(NAME, device="cpu")
    total = len(payloads["/decoder.pt"])
    bar = [(v, m) for text, v, m in shown if text.startswith(f"downloading {DECODER}.pt")]
    assert (total, total) in bar  # the bar filled up with the decoder's bytes ...
    assert any(m == total and 0 < v < total for v, m in bar)  # ... through steps in between
    assert widget.session.sam.has_instance_decoder
    assert not widget.mode.isHidden()  # the decoder modes are offered


def test_the_model_panel_reports_an_offline_decoder(viewer, qtbot, cache, monkeypatch, payloads):
    from napari_samscope._widgets import workers

    notified: list[BaseException | str] = []
    monkeypatch.setattr(workers, "notify_error", notified.append)
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment everything")
    with FileServer(payloads) as server:
        register(monkeypatch, server.url("/sam.pt"), closed_port_url("/decoder.pt"), payloads)
        worker = widget.model_panel.load(NAME, device="cpu")
        failures: list[BaseException] = []
        worker.errored.connect(failures.append)
        qtbot.waitUntil(lambda: widget.model_panel.runner.worker is None, timeout=30_000)
    assert failures and isinstance(failures[0], DownloadError)
    assert str(cache / f"{DECODER}.pt") in str(failures[0])
    assert notified == failures  # the user sees it as a notification
    assert widget.session.sam is None  # a failed load leaves the previous state
