"""The core never imports napari or Qt, and the package imports torch lazily.

Each check runs in a fresh interpreter so that modules imported by other tests
in this process cannot hide (or fake) an import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_every_core_module_imports_without_napari_or_qt() -> None:
    out = _run(
        """
        import importlib, pkgutil, sys
        import napari_samscope.core as core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, core.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        print(len(names), bad)
        """.replace("FORBIDDEN", repr(FORBIDDEN))
    )
    count, bad = out.split(" ", 1)
    assert int(count) >= 10, f"expected the core modules to be found, got {count}"
    assert bad == "[]", f"the core imported napari/Qt modules: {bad}"


def test_package_import_does_not_import_torch() -> None:
    out = _run(
        """
        import sys
        import napari_samscope
        print("torch" in sys.modules, napari_samscope.__version__)
        """
    )
    assert out.startswith("False"), out


def test_public_names_resolve_lazily() -> None:
    out = _run(
        """
        import sys
        import napari_samscope
        assert "torch" not in sys.modules
        from napari_samscope import SAM, Predictor
        print(SAM.__name__, Predictor.__name__, "torch" in sys.modules)
        """
    )
    assert out == "SAM Predictor True"
