#!/usr/bin/env bash
# One GPU-machine call (at most ~9 minutes on one H200): the CUDA tests and every GPU benchmark of
# the project, all results merged into $OUT/gpu_suite.json (+ gpu_tests.xml, log.txt).
#
#   bash benchmarks/gpu/run.sh                       # on the GPU machine (OUT defaults to runs/gpu-out)
#   SUITE=tiny DEVICE=cpu bash benchmarks/gpu/run.sh # the same steps at tiny sizes on the CPU (CI runs this)
#
# Parts (each under its own time limit, so one slow part cannot starve the rest; a part that fails
# or times out is recorded as such and the suite goes on; LIMIT_SCALE=k multiplies every limit, for
# slow or shared CPUs where the limits would measure the machine rather than the code):
#   tests          pytest -m gpu tests/gpu: each variant on CUDA vs the CPU, bf16, SDPA backends, training
#   peak+dit       the measured bf16 matmul peak and the wan2.1-1.3b DiT forward (352x640, 480x832)
#   rollout_*      wan2.1-1.3b (random weights, bf16): the faithful 50-step AFG path and the few-step +
#                  history-cache path, frames/s and fraction of the peak, at 352x640 and 480x832
#   env_*          env frames/s of the bundled models at 64, 256 and 1024 envs
#   train          world-model training samples/s of small-p4 (drive-v1's) and wan2.1-1.3b
#
# Wheels: the machine's python has torch, accelerate and safetensors; every *.whl under .whl/ is
# installed first. This suite needs no simulator: carry .whl/core (gymnasium, farama-notifications,
# pytest, pluggy, iniconfig, packaging, pygments; 2.3 MB for python 3.12), which fits next to the
# 51 MiB tree. INSTALL=0 uses the current environment as it is.
set -uo pipefail
SUITE="${SUITE:-full}"; DEVICE="${DEVICE:-cuda}"; INSTALL="${INSTALL:-1}"
OUT="${OUT:-runs/gpu-out}"; mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"; cd "$REPO"
PY="${PY:-python3}"
PARTS="$(mktemp -d)"
exec > >(tee "$OUT/log.txt") 2>&1
if [[ "$INSTALL" == 1 ]]; then
  WHEELS=$(find .whl -type f -name '*.whl' 2>/dev/null)
  if [[ -n "$WHEELS" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/astra . || exit 1
  # Run the installed package (the checkout's astra_gym/ lacks envs/, which installs into it), with
  # copies of tests/ and benchmarks/ next to nothing else.
  SUITE_DIR="$(mktemp -d)"; cp -r tests benchmarks "$SUITE_DIR"; cd "$SUITE_DIR"
  export PYTHONPATH=/tmp/astra:$SUITE_DIR${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export SDL_VIDEODRIVER=dummy PYTHONUNBUFFERED=1 ASTRA_GPU_TEST_DEVICE="$DEVICE"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

part() {  # part NAME SECONDS COMMAND...: runs one part, records its exit status and seconds
  local name=$1 limit=$(($2 * ${LIMIT_SCALE:-1})); shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@"
  local status=$?
  echo "{\"part\": \"$name\", \"status\": $status, \"seconds\": $((SECONDS - start)), \"command\": \"$*\"}" >> "$PARTS/status.jsonl"
  echo "=== $name: exit $status after $((SECONDS - start))s"
}

if [[ "$SUITE" == tiny ]]; then
  WAN=debug; HW_SMALL=(8 8); HW_LARGE=(8 16); STEPS=2; FEW=1; CHUNK=1; PEAK=256; ENVS=(2 4); TRAIN=(debug small-p4)
  TRAIN_BATCH=(2 2); TRAIN_ARGS=(--steps 4 --episodes 2 --episode-steps 24 --max-history 8)
else
  WAN=wan2.1-1.3b; HW_SMALL=(44 80); HW_LARGE=(60 104); STEPS=50; FEW=4; CHUNK=8; PEAK=8192; ENVS=(64 256 1024)
  TRAIN=(small-p4 wan2.1-1.3b); TRAIN_BATCH=(128 16)
  TRAIN_ARGS=(--steps 40 --episodes 16 --episode-steps 200 --mixed-precision bf16 --data-workers 8)
fi
DTYPE=bf16; [[ "$DEVICE" == cpu ]] && DTYPE=float32

part tests 90 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
part dit 40 "$PY" -m benchmarks.model_speed --device "$DEVICE" --presets "$WAN" --batch-sizes 1 --dtype "$DTYPE" \
  --repeats 3 --peak-size "$PEAK" --out "$PARTS/dit.json"
for size in small large; do
  if [[ $size == small ]]; then hw=("${HW_SMALL[@]}"); else hw=("${HW_LARGE[@]}"); fi
  part "rollout_$size" 90 "$PY" -m benchmarks.rollout_speed --device "$DEVICE" --preset "$WAN" --latent-hw "${hw[@]}" \
    --chunk "$CHUNK" --dtype "$DTYPE" --steps "$STEPS" --few-steps "$FEW" --only faithful +few_steps \
    --warmup 1 --repeats 1 --peak-size "$PEAK" --out "$PARTS/rollout_$size.json"
done
for env in Astra-Drive-v0 Astra-Manipulation-v0; do
  part "env_$env" 45 "$PY" -m benchmarks.env_throughput --env "$env" --device "$DEVICE" --num-envs "${ENVS[@]}" \
    --denoise-steps 0 --steps 5 --warmup 2 --out "$PARTS/env_$env.json"
done
part train 90 "$PY" -m benchmarks.train_speed --device "$DEVICE" --presets "${TRAIN[@]}" --batch-size "${TRAIN_BATCH[@]}" \
  "${TRAIN_ARGS[@]}" --out "$PARTS/train.json"

"$PY" - "$PARTS" "$OUT/gpu_suite.json" "$SUITE" "$DEVICE" <<'EOF'
import json, sys, pathlib
parts, out, suite, device = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
status = [json.loads(line) for line in (parts / "status.jsonl").read_text().splitlines()]
results = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))}
payload = {"suite": suite, "device": device, "command": f"SUITE={suite} DEVICE={device} bash benchmarks/gpu/run.sh",
           "parts": status, "results": results}
out.write_text(json.dumps(payload, indent=2))
print(f"wrote {out}: {sum(s['status'] == 0 for s in status)} of {len(status)} parts passed")
EOF
ls -la "$OUT"
