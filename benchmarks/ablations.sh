#!/usr/bin/env bash
# The paper's ablations at our scale (Table 3 / Figure C): every variant is the bundled model's
# world-model recipe at the same seed, data and budget (3,000 steps, batch 8, bf16, one CPU thread),
# changing one thing. Usage:
#   bash benchmarks/ablations.sh train <variant>    # full | nonam | crossattn | nomoae | causal
#   bash benchmarks/ablations.sh eval <variant> [scenario...]   # default: drive manipulation
#   CONTEXT=12 GUIDANCE=1 bash benchmarks/ablations.sh eval full drive   # history length / no AFG (s=1)
#   SEED=1 bash benchmarks/ablations.sh train full   # another seed: runs/abl-full-s1, results *_s1.json
# Needs the latent caches, VAE and IDMs of the model card (astra_gym/assets/models/small-v0/MODEL_CARD.md).
# Results: results/ablation_abl-<variant>_<scenario>.json (copied to benchmarks/results/).
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-python}
STEPS=${STEPS:-3000}
SEED=${SEED:-0}
SUFFIX=""
[ "$SEED" != 0 ] && SUFFIX="-s$SEED"

variant_flags() {
  case "$1" in
    full) echo "" ;;                                         # noise-as-mask p=0.8, ACT-Adapter, MoAE
    nonam) echo "--history-noise-p 0" ;;                     # without noise-as-mask
    crossattn) echo "--action-injection cross_attn" ;;       # cross-attention adapter instead of ACT-Adapter
    nomoae) echo "--num-experts 0" ;;                        # one shared action encoder, no experts/router
    causal) echo "--history-attention causal" ;;             # history attends only to history (K/V cache), not Astra
    *) echo "unknown variant $1 (full|nonam|crossattn|nomoae|causal)" >&2; return 2 ;;
  esac
}

train() {
  local flags
  flags=$(variant_flags "$1")
  # shellcheck disable=SC2086
  $PY -m astra_gym.training.train_world_model --preset small-cpu --run-dir "runs/abl-$1$SUFFIX" --vae runs/vae/final \
    --dataset scenario=drive,path=data/cache-train-drive,weight=1 \
    --dataset scenario=manipulation,path=data/cache-train-manipulation,weight=1 \
    --dataset scenario=explore,path=data/cache-train-explore,weight=1 \
    --mixed-precision bf16 --timestep-shift 1 --loss-weighting none --sampler-shift 1 \
    --sampler-steps 2 --sampler-guidance 3 --total-steps "$STEPS" --warmup-steps 300 \
    --checkpoint-every 1000 --preview-every 0 --no-progress --seed "$SEED" $flags
}

evaluate() {
  local variant=$1 context=${CONTEXT:-4} guidance=${GUIDANCE:-3} tag=""
  shift
  [ "$context" != 4 ] && tag="${tag}_ctx$context"
  [ "$guidance" != 3 ] && tag="${tag}_g$guidance"
  [ "$SEED" != 0 ] && tag="${tag}_s$SEED"
  for scenario in "${@:-drive manipulation}"; do
    for s in $scenario; do
      $PY -m benchmarks.eval_world_model --checkpoint "runs/abl-$variant$SUFFIX/final" --vae runs/vae/final \
        --scenario "$s" --episodes "data/heldout/$s" --chunks 8 --context "$context" \
        --idm "runs/idm/idm_$s.safetensors" --idm-train-episodes "data/train/$s" --threads 1 \
        --denoise-steps 2 --guidance "$guidance" \
        --out "results/ablation_abl-${variant}_$s$tag.json" --markdown "results/ablation_abl-${variant}_$s$tag.md"
    done
  done
}

case "${1:-}" in
  train) train "$2" ;;
  eval) evaluate "${@:2}" ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
