#!/usr/bin/env bash
# The project's test command: lint, then the whole suite (core, CLI, napari widgets under Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m ruff check src tests benchmarks training
python3 -m pytest -q "$@"
