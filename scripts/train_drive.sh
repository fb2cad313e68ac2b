#!/usr/bin/env bash
# The Drive recipe end to end: record CarRacing, train the detail VAE, encode, train a drive-only
# world model, train the reward model on the VAE's image domain, bundle.
#
# Usage: bash scripts/train_drive.sh SIZE WORK_DIR [BUNDLE_OUT]
#   SIZE       tiny (a CPU smoke test, ~2 min) | cpu (this project's 2-core machine) | gpu (one GPU, ~8 min)
#   WORK_DIR   data and runs go here; re-running resumes (episodes and checkpoints are kept)
#   BUNDLE_OUT bundle folder (default WORK_DIR/bundle)
# Env: PY (python, default python3), WORKERS (recording processes, default nproc - 1),
#      DEADLINE (epoch seconds: the world model trains until 2 minutes before it)
set -euo pipefail
SIZE="${1:?SIZE: tiny, cpu or gpu}"
WORK="${2:?WORK_DIR}"
BUNDLE="${3:-$WORK/bundle}"
PY="${PY:-python3}"
WORKERS="${WORKERS:-$(($(nproc) > 1 ? $(nproc) - 1 : 1))}"
case "$SIZE" in
  tiny) EPS=4;   HELD=2;  STEPS=40;  VAE_STEPS=20;   VAE_BS=8;   WM_PRESET=debug;     WM_MODEL=debug;
        WM_STEPS=20;    WM_BS=4;   WM_MIN=2;  REW_STEPS=20;   DEV=cpu;  VAE_PRESET=debug ;;
  cpu)  EPS=200; HELD=12; STEPS=250; VAE_STEPS=3000; VAE_BS=32;  WM_PRESET=small-cpu; WM_MODEL=small-p4;
        WM_STEPS=20000; WM_BS=8;   WM_MIN=600; REW_STEPS=3000; DEV=cpu;  VAE_PRESET=detail ;;
  gpu)  EPS=${EPS:-360}; HELD=12; STEPS=250; VAE_STEPS=3000; VAE_BS=128; WM_PRESET=small-gpu; WM_MODEL=small-p4;
        WM_STEPS=${WM_STEPS:-6000}; WM_BS=128; WM_MIN=${WM_MIN:-4}; REW_STEPS=3000; DEV=cuda; VAE_PRESET=detail ;;
  *) echo "SIZE must be tiny, cpu or gpu, got $SIZE" >&2; exit 2 ;;
esac
DATA="$WORK/data"; RUNS="$WORK/runs"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "record $EPS train + $HELD held-out CarRacing episodes of $STEPS steps ($WORKERS workers)"
"$PY" -m astra_gym.data.generate --scenario drive --episodes "$EPS" --steps "$STEPS" --policy mix --epsilon 0.4 \
    --seed 0 --workers "$WORKERS" --out "$DATA/train"
"$PY" -m astra_gym.data.generate --scenario drive --episodes "$HELD" --steps "$STEPS" --policy mix --epsilon 0.4 \
    --seed 1000 --workers "$WORKERS" --out "$DATA/heldout"

stamp "VAE ($VAE_PRESET, $VAE_STEPS steps)"
[[ -f "$RUNS/vae/final/config.json" ]] || "$PY" -m astra_gym.training.train_vae --preset "$VAE_PRESET" \
    --out "$RUNS/vae" --episodes "$DATA/train" --total-steps "$VAE_STEPS" --batch-size "$VAE_BS" \
    --eval-every 1000 --device "$DEV" --no-tensorboard --no-progress

stamp "latent caches"
for split in train heldout; do
  [[ -d "$DATA/cache-$split" ]] || "$PY" -m astra_gym.data.latent_cache --episodes "$DATA/$split" --vae "$VAE_PRESET" \
      --vae-weights "$RUNS/vae/final/vae.safetensors" --out "$DATA/cache-$split" --device "$DEV"
done

if [[ -n "${DEADLINE:-}" ]]; then
  WM_MIN=$("$PY" -c "import time; print(round(max(1.0, ($DEADLINE - time.time() - 120) / 60), 2))")
fi
stamp "world model ($WM_MODEL, $WM_STEPS steps at batch $WM_BS, at most $WM_MIN min)"
[[ -f "$RUNS/wm/final/config.json" ]] || "$PY" -m astra_gym.training.train_world_model --preset "$WM_PRESET" \
    --model-preset "$WM_MODEL" --run-dir "$RUNS/wm" --vae "$RUNS/vae/final" \
    --dataset "scenario=drive,path=$DATA/cache-train,weight=1" --batch-size "$WM_BS" --total-steps "$WM_STEPS" \
    --warmup-steps $((WM_STEPS / 20 + 1)) --time-budget-min "$WM_MIN" --timestep-shift 1 --loss-weighting none \
    --history-noise-p 0.3 --episode-start-p 0.25 \
    --sampler-steps 2 --sampler-guidance 3 --sampler-shift 1 --checkpoint-every 1000 --preview-every 0 \
    --data-workers "$([[ $DEV == cuda ]] && echo "$WORKERS" || echo 0)" --no-tensorboard --no-progress --log-every 50

stamp "reward model (on the VAE's reconstructions)"
[[ -f "$RUNS/reward/final/config.json" ]] || "$PY" -m astra_gym.training.train_reward --preset small \
    --episodes "$DATA/train" --num-frames 2 --action-norm "$RUNS/wm/final" --vae "$RUNS/vae/final" \
    --total-steps "$REW_STEPS" --device "$DEV" --out "$RUNS/reward" --no-tensorboard --no-progress

stamp "bundle -> $BUNDLE"
"$PY" -m astra_gym.training.bundle --name "$(basename "$BUNDLE")" --world-model "$RUNS/wm/final" \
    --vae "$RUNS/vae/final" --reward "$RUNS/reward/final" --weights-dtype float16 --out "$BUNDLE"
stamp "done"
