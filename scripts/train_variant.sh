#!/usr/bin/env bash
# One variant's recipe end to end: record its simulator, train the detail VAE (Manipulation and Explore
# fine-tune Drive's), encode, train a world model on that variant alone, train the reward models on
# the VAE's image domain (the simulator's own reward and the variant's dense task, the latter also on
# pieces the world model re-imagines under the recorded actions), bundle.
#
# Usage: bash scripts/train_variant.sh SCENARIO SIZE WORK_DIR [BUNDLE_OUT]
#   SCENARIO   drive | manipulation | explore
#   SIZE       tiny (a CPU smoke test, ~2 min) | cpu (this project's 2-core machine) | gpu (one GPU, ~8 min)
#   WORK_DIR   data and runs go here; re-running resumes (episodes and checkpoints are kept)
#   BUNDLE_OUT bundle folder (default WORK_DIR/bundle)
# Env: PY (python, default python3), WORKERS (recording processes, default nproc - 1),
#      DEADLINE (epoch seconds: the world model trains until 2 minutes before it),
#      EPS (gpu: episodes), WM_STEPS / WM_MIN (cpu and gpu: world-model steps and minutes), VAE_STEPS (cpu),
#      WM_INIT (a world-model folder the world model starts from, e.g. another variant's; default: scratch),
#      CAMERA (manipulation: a camera preset of astra_gym.data.sims.manipulation.CAMERAS; default front,
#              CAMERA=stock for the stock camera)
set -euo pipefail
SCENARIO="${1:?SCENARIO: drive, manipulation or explore}"
SIZE="${2:?SIZE: tiny, cpu or gpu}"
WORK="${3:?WORK_DIR}"
BUNDLE="${4:-$WORK/bundle}"
PY="${PY:-python3}"
WORKERS="${WORKERS:-$(($(nproc) > 1 ? $(nproc) - 1 : 1))}"
# Per variant: how its data are recorded (train episodes on cpu / gpu, steps each; Explore adds held-button
# probe episodes, a quarter of the world model's rows), the dense task whose reward model the bundle adds
# (Manipulation: reach-push, the potential the env reads --task progress as the change of; one frame, as the
# potential is a function of the state), the world model's motion weight (train_world_model --motion-weight).
# The sampler's action-free guidance (the bundle's, and the imagined pieces' the task reader learns): 3 for Drive;
# Manipulation and Explore run without it (benchmarks/RESULTS.md, sessions 12, 18 and 22: at 3 the imagined arm
# overshoots lateral moves and leaves the frame, identification 0.50 against 0.79 without).
# Manipulation's reader predicts the gripper, block and goal positions and computes reach-push from them
# (benchmarks/RESULTS.md, session 23: it ranks 12 planner candidates' real frames with rho +0.55 to +0.74,
# the distance-regressing reader +0.17 to +0.28).
# Manipulation records from the front camera (benchmarks/RESULTS.md, sessions 18-19: the block is visible in
# 0.97 of the frames against 0.72, and it is the first camera whose imagined rewards rank the expert first).
case "$SCENARIO" in
  drive)        GEN=(--policy mix --epsilon 0.4);  STEPS=250; CPU_EPS=200; GPU_EPS=360; PROBE=0;   TASK= ;  GUIDANCE=3 ;;
  manipulation) GEN=(--policy mix --epsilon 0.25); STEPS=200; CPU_EPS=200; GPU_EPS=600; PROBE=0;   TASK=reach-push
                TASK_FRAMES=1; MOTION=4; CAMERA="${CAMERA:-front}"; GUIDANCE=1
                TASK_READER=(--model-preset keypoints --pose-weight 1 --pose-reward) ;;
  explore)      GEN=(--policy mix);                STEPS=200; CPU_EPS=400; GPU_EPS=800; PROBE=100; TASK= ;  GUIDANCE=1 ;;
  *) echo "SCENARIO must be drive, manipulation or explore, got $SCENARIO" >&2; exit 2 ;;
esac
case "$SIZE" in
  tiny) EPS=4;   HELD=2;  STEPS=40;  VAE_STEPS=20;   VAE_BS=8;   WM_PRESET=debug;     WM_MODEL=debug;
        WM_STEPS=20;    WM_BS=4;   WM_MIN=2;  REW_STEPS=20;   DEV=cpu;  VAE_PRESET=debug; PROBE=$((PROBE > 0 ? 2 : 0))
        IM_STARTS=1; IM_H=8 ;;
  cpu)  EPS=$CPU_EPS; HELD=12; VAE_STEPS=${VAE_STEPS:-3000}; VAE_BS=32; WM_PRESET=small-cpu; WM_MODEL=small-p4;
        WM_STEPS=${WM_STEPS:-20000}; WM_BS=8; WM_MIN=${WM_MIN:-600}; REW_STEPS=3000; DEV=cpu; VAE_PRESET=detail
        IM_STARTS=4; IM_H=32 ;;
  gpu)  EPS=${EPS:-$GPU_EPS}; HELD=12; VAE_STEPS=3000; VAE_BS=128; WM_PRESET=small-gpu; WM_MODEL=small-p4;
        WM_STEPS=${WM_STEPS:-6000}; WM_BS=128; WM_MIN=${WM_MIN:-4}; REW_STEPS=3000; DEV=cuda; VAE_PRESET=detail
        PROBE=$((PROBE * 2)); IM_STARTS=4; IM_H=32 ;;
  *) echo "SIZE must be tiny, cpu or gpu, got $SIZE" >&2; exit 2 ;;
esac
if [[ -n "${CAMERA:-}" ]]; then GEN+=(--camera "$CAMERA"); fi
WM_FLAGS=(--motion-weight "${MOTION:-0}")
if [[ -n "${WM_INIT:-}" ]]; then WM_FLAGS+=(--init-from "$WM_INIT"); fi
DATA="$WORK/data"; RUNS="$WORK/runs"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "record $EPS train + $HELD held-out $SCENARIO episodes of $STEPS steps, $PROBE probe episodes ($WORKERS workers)"
"$PY" -m astra_gym.data.generate --scenario "$SCENARIO" --episodes "$EPS" --steps "$STEPS" "${GEN[@]}" \
    --seed 0 --workers "$WORKERS" --out "$DATA/train"
"$PY" -m astra_gym.data.generate --scenario "$SCENARIO" --episodes "$HELD" --steps "$STEPS" "${GEN[@]}" \
    --seed 1000 --workers "$WORKERS" --out "$DATA/heldout"
SPLITS=(train heldout)
DATASETS=(--dataset "scenario=$SCENARIO,path=$DATA/cache-train,weight=$((PROBE > 0 ? 3 : 1))")
if ((PROBE > 0)); then
  "$PY" -m astra_gym.data.generate --scenario "$SCENARIO" --episodes "$PROBE" --steps "$STEPS" --policy probe \
      --epsilon 0.4 --seed 5000 --workers "$WORKERS" --out "$DATA/probe"
  SPLITS+=(probe)
  DATASETS+=(--dataset "scenario=$SCENARIO,path=$DATA/cache-probe,weight=1,name=probe")
fi

# Drive's detail VAE (bundled with drive-v5) is where the other variants' VAEs start: it keeps small objects.
VAE_INIT=()
if [[ $SCENARIO != drive && $VAE_PRESET == detail ]]; then
  VAE_INIT=(--init-from "$("$PY" -c 'import astra_gym, pathlib; print(pathlib.Path(astra_gym.__file__).parent / "assets/models/drive-v5/vae")')")
fi
stamp "VAE ($VAE_PRESET, $VAE_STEPS steps${VAE_INIT:+, fine-tuned from Drive VAE})"
[[ -f "$RUNS/vae/final/config.json" ]] || "$PY" -m astra_gym.training.train_vae --preset "$VAE_PRESET" \
    --out "$RUNS/vae" --episodes "$DATA/train" --total-steps "$VAE_STEPS" --batch-size "$VAE_BS" \
    "${VAE_INIT[@]}" --eval-every 1000 --device "$DEV" --no-tensorboard --no-progress

stamp "latent caches"
for split in "${SPLITS[@]}"; do
  [[ -d "$DATA/cache-$split" ]] || "$PY" -m astra_gym.data.latent_cache --episodes "$DATA/$split" --vae "$VAE_PRESET" \
      --vae-weights "$RUNS/vae/final/vae.safetensors" --out "$DATA/cache-$split" --device "$DEV"
done

if [[ -n "${DEADLINE:-}" ]]; then
  WM_MIN=$("$PY" -c "import time; print(round(max(1.0, ($DEADLINE - time.time() - 120) / 60), 2))")
fi
stamp "world model ($WM_MODEL, $WM_STEPS steps at batch $WM_BS, at most $WM_MIN min)"
[[ -f "$RUNS/wm/final/config.json" ]] || "$PY" -m astra_gym.training.train_world_model --preset "$WM_PRESET" \
    --model-preset "$WM_MODEL" --run-dir "$RUNS/wm" --vae "$RUNS/vae/final" "${DATASETS[@]}" \
    --batch-size "$WM_BS" --total-steps "$WM_STEPS" \
    --warmup-steps $((WM_STEPS / 20 + 1)) --time-budget-min "$WM_MIN" --timestep-shift 1 --loss-weighting none \
    --history-noise-p 0.3 --episode-start-p 0.25 \
    --sampler-steps 2 --sampler-guidance "$GUIDANCE" --sampler-shift 1 --checkpoint-every 1000 --preview-every 0 \
    --data-workers "$([[ $DEV == cuda ]] && echo "$WORKERS" || echo 0)" --no-tensorboard --no-progress --log-every 50 \
    "${WM_FLAGS[@]}"

RECORDING=()  # data recorded with another camera: the bundle records it and carries start contexts seen by it
if [[ -n "${CAMERA:-}" ]]; then
  [[ -f "$DATA/frame_bank.npz" ]] || "$PY" -m astra_gym.envs.frame_bank --scenario "$SCENARIO" \
      --episodes "$DATA/heldout" --count 32 --min-start 3 --max-start "$((STEPS < 60 ? STEPS : 60))" \
      --out "$DATA/frame_bank.npz"
  RECORDING=(--sim-config "camera=$CAMERA" --frame-bank "$DATA/frame_bank.npz")
fi

stamp "reward model (the simulator reward) on the VAE reconstructions"
[[ -f "$RUNS/reward/final/config.json" ]] || "$PY" -m astra_gym.training.train_reward --preset small \
    --episodes "$DATA/train" --num-frames 2 --action-norm "$RUNS/wm/final" --vae "$RUNS/vae/final" \
    --total-steps "$REW_STEPS" --device "$DEV" --out "$RUNS/reward" --no-tensorboard --no-progress
REWARDS=(--reward "$RUNS/reward/final")
if [[ -n "$TASK" ]]; then
  # the task's reader also learns the world model's own frames: the episodes re-imagined by a bundle of it
  [[ -f "$RUNS/imagine/bundle.json" ]] || "$PY" -m astra_gym.training.bundle --name "$(basename "$BUNDLE")-imagine" \
      --world-model "$RUNS/wm/final" --vae "$RUNS/vae/final" "${REWARDS[@]}" "${RECORDING[@]}" \
      --weights-dtype float16 --out "$RUNS/imagine"
  out="$RUNS/reward-$TASK"
  stamp "reward model (task: $TASK) on the VAE reconstructions and $IM_STARTS imagined pieces of $IM_H steps per episode"
  [[ -f "$out/final/config.json" ]] || "$PY" -m astra_gym.training.train_reward --preset small \
      --episodes "$DATA/train" --task "$TASK" --num-frames "${TASK_FRAMES:-2}" --action-norm "$RUNS/wm/final" \
      --vae "$RUNS/vae/final" --imagined "$RUNS/imagine" --imagined-starts "$IM_STARTS" --imagined-horizon "$IM_H" \
      --imagined-cache "$RUNS/imagined" --total-steps "$REW_STEPS" --device "$DEV" --out "$out" \
      "${TASK_READER[@]}" --no-tensorboard --no-progress
  REWARDS+=(--reward "$out/final")
fi

stamp "bundle -> $BUNDLE"
"$PY" -m astra_gym.training.bundle --name "$(basename "$BUNDLE")" --world-model "$RUNS/wm/final" \
    --vae "$RUNS/vae/final" "${REWARDS[@]}" "${RECORDING[@]}" --weights-dtype float16 --out "$BUNDLE"
stamp "done"
