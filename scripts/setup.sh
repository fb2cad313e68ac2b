#!/usr/bin/env bash
# Creates ./.venv with astra-gym and everything its tests, simulators and training need.
# Usage: bash scripts/setup.sh            (idempotent; re-running only installs what is missing)
# Env:   ASTRA_VENV=path   venv location (default .venv)
#        ASTRA_EXTRAS=...  extras to install (default sims,train,sb3,video,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ASTRA_VENV:-.venv}"
EXTRAS="${ASTRA_EXTRAS:-sims,train,sb3,video,dev}"

# Headless OpenGL (EGL + Mesa) for MuJoCo rendering of FetchPush. Only installed when missing.
if [[ ",$EXTRAS," == *",sims,"* ]] && ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
    else
        echo "setup: please install the Debian packages libegl1 libegl-mesa0 libgl1-mesa-dri (needed by MuJoCo/EGL)" >&2
        exit 1
    fi
fi

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch first and pinned: no other (CUDA) build may be resolved on these machines; never torchvision.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -c scripts/constraints.txt -e ".[$EXTRAS]"
"$PY" -m pip check >/dev/null || { "$PY" -m pip check; exit 1; }
echo "setup: ready ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
