"""docs/ARCHITECTURE.md names only modules and folders that exist, and every
subpackage of the core appears in it."""

from __future__ import annotations

import re
from pathlib import Path

import napari_samscope

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = Path(napari_samscope.__file__).resolve().parent

# `core/predict/predictor.py`, `core/weights/`, `_napari/coords.py`, `cli/`
PATH_RE = re.compile(r"`((?:core|_napari|_widgets|cli|distributed)(?:/[\w.]+)*/?)`")


def _named_paths() -> list[str]:
    return sorted(set(PATH_RE.findall(DOC.read_text(encoding="utf-8"))))


def test_the_doc_names_paths() -> None:
    assert len(_named_paths()) > 20


def test_every_path_the_doc_names_exists() -> None:
    missing = [p for p in _named_paths() if not (PACKAGE / p.rstrip("/")).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_core_subpackage_is_described() -> None:
    named = {p.rstrip("/") for p in _named_paths()}
    packages = sorted(
        f"core/{d.name}" for d in (PACKAGE / "core").iterdir() if (d / "__init__.py").is_file()
    )
    undocumented = [p for p in packages if p not in named]
    assert not undocumented, f"core subpackages missing from docs/ARCHITECTURE.md: {undocumented}"
