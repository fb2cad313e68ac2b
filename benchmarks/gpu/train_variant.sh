#!/usr/bin/env bash
# One GPU-machine call: a variant's recipe (scripts/train_variant.sh SCENARIO gpu) with the simulators
# recorded on that machine's CPU cores, the bundle packed into $OUT in parts of at most 15 MB.
#
# On the project's device tool (carry .whl: core/ gymnasium, farama-notifications, and per variant sims/
# Box2D, pygame-ce (drive), mujoco, gymnasium-robotics (manipulation; MuJoCo renders through EGL) or
# vizdoom (explore), for the machine's python; the tree is 51 MiB: where the wheels take it past 64 MiB, move
# out the bundles a recipe does not use, astra_gym/assets/models/small-v0 and manip-v5 (Drive's recipe starts
# from drive-v5's VAE)):
#   SCENARIO=explore bash benchmarks/gpu/train_variant.sh   (SCENARIO: drive (default), manipulation, explore;
#                                                            OUT=folder to fill; default runs/gpu-out)
# Back here: cat OUT/bundle.tar.part-* | tar -x -C astra_gym/assets/models
set -uo pipefail
OUT="${OUT:-runs/gpu-out}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"; cd "$REPO"
PY="${PY:-python3}"
SCENARIO="${SCENARIO:-drive}"
WORK="${WORK:-/tmp/astra-$SCENARIO}"
NAME="${NAME:-$SCENARIO-gpu}"
exec > >(tee "$OUT/log.txt") 2>&1
WHEELS=$(find .whl -type f -name '*.whl' 2>/dev/null)
if [[ -n "$WHEELS" ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/astra . || exit 1
export PYTHONPATH=/tmp/astra:$PYTHONPATH SDL_VIDEODRIVER=dummy PYTHONUNBUFFERED=1
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
SIZE="${SIZE:-gpu}"
cd /tmp  # run the installed package, not the checkout's astra_gym/ (whose envs/ lives elsewhere)
PY="$PY" bash "$REPO/scripts/train_variant.sh" "$SCENARIO" "$SIZE" "$WORK" "$WORK/$NAME"
status=$?
cp "$WORK/runs/wm/metrics.csv" "$OUT/wm_metrics.csv" 2>/dev/null
cp "$WORK/data/train/generation.json" "$OUT/generation.json" 2>/dev/null
if [[ -d "$WORK/$NAME" ]]; then
  tar -C "$WORK" -cf - "$NAME" | split -b 15m - "$OUT/bundle.tar.part-"
elif [[ -d "$WORK/runs/wm/checkpoints" ]]; then  # no bundle: bring back what was trained
  tar -C "$WORK/runs" -cf - vae/final $(ls -d "$WORK"/runs/wm/checkpoints/step_* | tail -1 | sed "s|$WORK/runs/||") \
    | split -b 15m - "$OUT/runs.tar.part-"
fi
ls -la "$OUT"
exit $status
