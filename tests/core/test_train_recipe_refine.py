"""The ``refine`` and ``zoomed`` phases of training/train_default_model.py: their image mix
and their place in the recipe (the script is loaded from its file; it is not part of the
package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "train_default_model.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refine_mixes_annotate_plain_and_low_snr_looks_with_some_figures(recipe):
    rng = np.random.default_rng(0)
    styles = [recipe.refine_style(rng) for _ in range(600)]
    half = [s for s in styles if s.boundary == "half_contrast"]  # the annotate share
    assert len(half) / len(styles) == pytest.approx(0.4, abs=0.06)
    with_figures = [s for s in styles if s.mitotic_fraction + s.apoptotic_fraction > 0]
    assert with_figures and all(s.boundary == "half_contrast" for s in with_figures)
    assert len(with_figures) / len(styles) == pytest.approx(0.4 * 0.6, abs=0.06)
    assert max(s.mitotic_fraction for s in styles) <= 0.08
    assert max(s.apoptotic_fraction for s in styles) <= 0.08
    drawn = [s for s in styles if s.boundary == "geometric"]  # plain and low-SNR looks
    assert len(drawn) / len(styles) == pytest.approx(0.6, abs=0.06)
    assert sum(s.snr <= 6.0 for s in drawn) / len(styles) > 0.25  # low_snr_style's 25% at least
    assert recipe.refine_style(np.random.default_rng(0)) == styles[0]  # reproducible


def test_refine_is_a_phase_at_input_1024_resumable_and_stopped_early(recipe):
    size, n_pool, options = recipe.PHASES["refine"]
    assert size == 1024 and recipe.RENDER_SIZE["refine"] == 512
    assert options["lr"] < recipe.PHASES["annotate"][2]["lr"]
    assert 0 < recipe.STOP_AFTER["refine"] < options["steps"]
    samples = recipe.pool("refine", 1, 1024, np.random.default_rng(1), render=128)
    assert len(samples) == 1 and len(samples[0].ids) > 0


def test_zoomed_trains_every_part_on_a_quarter_of_4x_magnified_planes(recipe, monkeypatch):
    size, n_pool, options = recipe.PHASES["zoomed"]
    assert size == 1024 and recipe.RENDER_SIZE["zoomed"] == 512
    assert recipe.TRAINABLE.get("zoomed", "all") == "all"  # unlike decode, the encoder learns
    assert "zoomed" not in recipe.STOP_AFTER
    # Appended last, so the seeds of the phases before it (their index in PHASES) are unchanged.
    assert list(recipe.PHASES)[-1] == "zoomed" and list(recipe.PHASES).index("annotate") == 9
    sides = []

    def render(style, shape, rng):
        sides.append(shape)
        labels = np.zeros(shape, np.uint16)
        labels[2:12, 2:12] = 1
        return (labels * 200).astype(np.uint8), labels

    monkeypatch.setattr(recipe, "render_nuclei_2d", render)
    samples = recipe.pool("zoomed", 200, 128, np.random.default_rng(3), render=64)
    assert len(samples) == 200
    assert set(sides) == {(32, 32), (64, 64)}
    assert sides.count((32, 32)) / len(sides) == pytest.approx(0.25, abs=0.07)
