"""The built wheel carries the npe2 manifest and the default model, and npe2 finds the plugin."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("needs the source tree (pyproject.toml) to build the wheel")
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src") / "napari-samscope"
    # Build from a clean copy of the tracked files so the check does not depend on local clutter.
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        path = ROOT / rel.decode()
        target = src / rel.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(path.readlink())
        elif path.is_file():
            shutil.copy2(path, target)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("napari_samscope-*.whl")
    return whl


def test_wheel_contains_manifest_and_default_model(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_samscope/napari.yaml" in names
    assert "napari_samscope/models/samscope_nuclei.pt" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "napari_samscope:napari.yaml" in text
    assert "samscope = napari_samscope.cli.main:main" in text


def test_manifest_in_wheel_is_valid(wheel: Path, tmp_path: Path) -> None:
    from npe2 import PluginManifest

    data = zipfile.ZipFile(wheel).read("napari_samscope/napari.yaml")
    path = tmp_path / "napari.yaml"
    path.write_bytes(data)
    manifest = PluginManifest.from_file(path)
    assert manifest.name == "napari-samscope"
    assert manifest.display_name.startswith("Segment Anything (samscope)")


def test_installed_plugin_is_discovered_and_imports() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-samscope", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
