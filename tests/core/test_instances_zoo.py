"""micro-sam's models in the registry, and xxh128-checked downloads on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash
from _http_server import FileServer, closed_port_url

from napari_samscope.core.weights.download import CACHE_ENV_VAR, DownloadError, download
from napari_samscope.core.weights.microsam_zoo import (
    MICROSAM_MODELS,
    decoder_name,
    models_with_decoder,
)
from napari_samscope.core.weights.registry import ModelSpec, list_models, lookup, resolve

ZOO = [
    "vit_t_lm", "vit_b_lm", "vit_l_lm", "vit_t_em_organelles", "vit_b_em_organelles",
    "vit_l_em_organelles", "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology",
]


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(folder))
    return folder


def test_every_model_and_decoder_is_registered_with_an_xxh128():
    for name in ZOO:
        for entry in (name, name + "_decoder"):
            spec = resolve(entry)
            assert spec.name == entry
            assert spec.url.startswith("https://")
            assert len(spec.xxh128) == 32 and int(spec.xxh128, 16) >= 0
            assert spec.sha256 is None and spec.source == "download"
        assert decoder_name(name) == name + "_decoder"
    assert set(models_with_decoder()) == set(ZOO)
    assert decoder_name("vit_b") is None and decoder_name("samscope_nuclei") is None
    # one hash per file: no copy-paste slip in the table
    hashes = [spec.xxh128 for spec in MICROSAM_MODELS]
    assert len(set(hashes)) == len(hashes) == 2 * len(ZOO)
    files = [spec.filename for spec in MICROSAM_MODELS]
    assert len(set(files)) == len(files)


def test_facts_from_micro_sam_registry():
    # spot checks against micro_sam.util.models() (micro-sam 1.8.14)
    assert lookup("vit_b_lm").xxh128 == "fe9252a29f3f4ea53c15a06de471e186"
    assert lookup("vit_b_lm").url.endswith("diplomatic-bug/1.2/files/vit_b.pt")
    assert lookup("vit_h_histopathology_decoder").xxh128 == "3ed9f87e46ad5e16935bd8d722c8dc47"
    assert lookup("vit_t_em_organelles").arch == "vit_t"


def test_domains_in_list_models():
    status = {s.name: s for s in list_models()}
    assert status["vit_b_lm"].domain == "LM"
    assert status["vit_l_em_organelles"].domain == "EM"
    assert status["vit_h_histopathology"].domain == "histopathology"
    assert status["vit_b"].domain == "" and status["samscope_nuclei"].domain == ""
    assert not status["vit_b_lm"].cached


def zoo_spec(url: str, data: bytes, **changes) -> ModelSpec:
    fields = dict(
        name="zoo_test", arch="vit_b", filename="zoo_test.pt", url=url,
        xxh128=xxhash.xxh128(data).hexdigest(), domain="LM",
    )
    fields.update(changes)
    return ModelSpec(**fields)


def leftovers(folder: Path) -> list[str]:
    """Files in the cache, less the sha256 sidecars that remember verified hashes."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".sha256.json"))


PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # several chunks of the download loop


def test_xxh128_download_success_then_cached(tmp_cache):
    with FileServer({"/m.pt": PAYLOAD}) as server:
        spec = zoo_spec(server.url("/m.pt"), PAYLOAD)
        path = download(spec, progress=None)
        assert path == tmp_cache / "zoo_test.pt" and path.read_bytes() == PAYLOAD
        assert leftovers(tmp_cache) == ["zoo_test.pt"]
        assert download(spec, progress=None) == path  # cached: no second request
        assert server.requests == ["/m.pt"]


def test_xxh128_mismatch_deletes_the_part_file(tmp_cache):
    with FileServer({"/m.pt": PAYLOAD}) as server:
        spec = zoo_spec(server.url("/m.pt"), PAYLOAD, xxh128="0" * 32)
        with pytest.raises(DownloadError, match="xxh128 is .* but 0{32} was expected") as err:
            download(spec, progress=None)
        assert str(tmp_cache / "zoo_test.pt") in str(err.value)
        assert leftovers(tmp_cache) == []


def test_xxh128_and_sha256_both_checked(tmp_cache):
    import hashlib

    with FileServer({"/m.pt": PAYLOAD}) as server:
        good = zoo_spec(server.url("/m.pt"), PAYLOAD, sha256=hashlib.sha256(PAYLOAD).hexdigest())
        assert download(good, progress=None).read_bytes() == PAYLOAD
        (tmp_cache / "zoo_test.pt").unlink()
        bad_sha = zoo_spec(server.url("/m.pt"), PAYLOAD, sha256="1" * 64)
        with pytest.raises(DownloadError, match="sha256"):
            download(bad_sha, progress=None)
        assert leftovers(tmp_cache) == []


def test_truncated_xxh128_download_keeps_nothing(tmp_cache):
    with FileServer({"/m.pt": PAYLOAD}, truncate={"/m.pt": 1000}) as server:
        spec = zoo_spec(server.url("/m.pt"), PAYLOAD)
        with pytest.raises(DownloadError, match="cut short|broke off"):
            download(spec, progress=None)
        assert leftovers(tmp_cache) == []


def test_offline_message_names_the_exact_path(tmp_cache):
    spec = zoo_spec(closed_port_url("/m.pt"), PAYLOAD)
    with pytest.raises(DownloadError) as err:
        download(spec, progress=None)
    assert str(tmp_cache / "zoo_test.pt") in str(err.value)
    assert "offline" in str(err.value)
    assert leftovers(tmp_cache) == []


def test_missing_xxhash_package_is_a_clear_error(tmp_cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xxhash", None)
    with FileServer({"/m.pt": PAYLOAD}) as server:
        spec = zoo_spec(server.url("/m.pt"), PAYLOAD)
        with pytest.raises(DownloadError, match="pip install xxhash"):
            download(spec, progress=None)
    assert leftovers(tmp_cache) == []


def test_a_decoder_name_is_not_loaded_as_a_sam_model():
    from napari_samscope.core.weights.loader import load_sam

    with pytest.raises(ValueError, match="instance decoder of 'vit_b_lm'"):
        load_sam("vit_b_lm_decoder")
