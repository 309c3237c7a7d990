#!/usr/bin/env bash
# Build TensorRT FP16 plans for the four stages inside the official Triton container, then
# serve them with --model-config-name=trt:
#   docker compose run --rm triton bash export/build_trt_plans.sh
#   (then set --model-config-name=trt in compose.yaml)
# Not run in CI (no GPU there). Shapes: batch 1..512 tiles, tile 256 (latent 64), as in
# hndsr/config.py and hndsr/serving/stages.py.
set -euo pipefail
REPO=${1:-/opt/hndsr/model_repository}
TRTEXEC=${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}
OPT=${OPT_BATCH:-64}
MAX=${MAX_BATCH:-512}

build() {  # stage, shapes spec (name:dims without batch)
  local stage=$1; shift
  local min="" opt="" max=""
  for spec in "$@"; do
    local name=${spec%%:*} dims=${spec#*:}
    min+="${min:+,}${name}:1x${dims}"; opt+="${opt:+,}${name}:${OPT}x${dims}"; max+="${max:+,}${name}:${MAX}x${dims}"
  done
  "$TRTEXEC" --onnx="$REPO/$stage/1/model.onnx" --saveEngine="$REPO/$stage/1/model.plan" --fp16 \
    --minShapes="$min" --optShapes="$opt" --maxShapes="$max" --memPoolSize=workspace:8192
}

build encoder IMAGE:3x256x256
build prior IMAGE:3x256x256 SCALE:1
build unet LATENT:32x64x64 TIMESTEP:1 CONTEXT:32x64x64
build decoder LATENT:32x64x64
echo "plans written under $REPO/*/1/model.plan"
