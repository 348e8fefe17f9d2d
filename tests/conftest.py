"""Shared pytest configuration.

Core tests use tiny, randomly initialised configurations of the real
architectures (see ``tests/core/tiny_models.py``); nothing here downloads weights.
"""

import os

# Keep the Qt binding deterministic for the widget tests (pytest-xvfb provides the display).
os.environ.setdefault("QT_API", "pyqt6")
# Never touch the user's real weight cache from the tests.
os.environ.setdefault("SAMSCOPE_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache-never-used"))
