#!/usr/bin/env bash
# Runs the test suite (CPU, excludes tests marked slow/gpu). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
exec "${ASTRA_VENV:-.venv}/bin/python" -m pytest -q "$@"
