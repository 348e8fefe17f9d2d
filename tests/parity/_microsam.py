"""Run code in an interpreter that has micro-sam (a separate virtual environment).

Set ``SAMSCOPE_MICROSAM_PYTHON=/path/to/python`` (for example ``/opt/microsam/bin/python``
after ``python -m venv /opt/microsam && /opt/microsam/bin/pip install torch micro-sam``);
without it the micro-sam parity tests are skipped. Arrays go both ways through ``.npz``
files (``allow_pickle=False``); the project never imports micro-sam.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ENV_VAR = "SAMSCOPE_MICROSAM_PYTHON"

_RUNNER = '''
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
_data = np.load(sys.argv[1], allow_pickle=False)
inputs = {key: _data[key] for key in _data.files}
outputs = {}
namespace = {"inputs": inputs, "outputs": outputs, "np": np, "__name__": "__microsam__"}
exec(compile(open(sys.argv[3]).read(), "microsam_snippet", "exec"), namespace)
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in outputs.items()})
'''


def microsam_python() -> str | None:
    """The interpreter named by ``$SAMSCOPE_MICROSAM_PYTHON`` if it exists, else None."""
    configured = os.environ.get(ENV_VAR)
    return shutil.which(configured) if configured else None


def skip_reason() -> str:
    return f"micro-sam not available: set {ENV_VAR}=/path/to/python of an environment with micro-sam"


def run_microsam(script: str, arrays: dict[str, np.ndarray], timeout: float = 900) -> dict[str, np.ndarray]:
    """Run ``script`` with micro-sam; it reads ``inputs`` and fills ``outputs`` (arrays)."""
    python = microsam_python()
    if python is None:
        raise RuntimeError(skip_reason())
    with tempfile.TemporaryDirectory(prefix="samscope-microsam-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "inputs.npz", **arrays)
        (folder / "runner.py").write_text(_RUNNER)
        (folder / "snippet.py").write_text(textwrap.dedent(script))
        result = subprocess.run(
            [python, str(folder / "runner.py"), str(folder / "inputs.npz"),
             str(folder / "outputs.npz"), str(folder / "snippet.py")],
            capture_output=True, text=True, timeout=timeout, cwd=tmp,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"The micro-sam snippet failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
        with np.load(folder / "outputs.npz", allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def matched_fraction(a: np.ndarray, b: np.ndarray, iou: float = 0.9) -> tuple[float, float, int, int]:
    """Fraction of objects of ``a`` whose best IoU with an object of ``b`` is >= ``iou``,
    the same from ``b`` to ``a``, and the object counts."""
    a = a.astype(np.int64).ravel()
    b = b.astype(np.int64).ravel()
    na, nb = int(a.max()), int(b.max())
    pairs, counts = np.unique(a * (nb + 1) + b, return_counts=True)
    ia, ib = pairs // (nb + 1), pairs % (nb + 1)
    size_a = np.bincount(a, minlength=na + 1)
    size_b = np.bincount(b, minlength=nb + 1)
    both = (ia > 0) & (ib > 0)
    ious = counts[both] / (size_a[ia[both]] + size_b[ib[both]] - counts[both])
    best_a = np.zeros(na + 1)
    best_b = np.zeros(nb + 1)
    np.maximum.at(best_a, ia[both], ious)
    np.maximum.at(best_b, ib[both], ious)
    present_a = np.nonzero(size_a[1:])[0] + 1
    present_b = np.nonzero(size_b[1:])[0] + 1
    return (
        float((best_a[present_a] >= iou).mean()) if len(present_a) else 1.0,
        float((best_b[present_b] >= iou).mean()) if len(present_b) else 1.0,
        len(present_a), len(present_b),
    )
