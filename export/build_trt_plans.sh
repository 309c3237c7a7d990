#!/usr/bin/env bash
# Build TensorRT FP16 plans for the four stages inside the official Triton container, then
# serve them with --model-config-name=trt:
#   docker compose run --rm triton bash export/build_trt_plans.sh
#   (then set --model-config-name=trt in compose.yaml)
# Not run in CI (no GPU there). Shapes: batch 1..512 tiles, tile 208 (latent 52), as in
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

build encoder IMAGE:3x208x208
build prior LATENT:48x52x52 SCALE:1
build unet LATENT:48x52x52 TIMESTEP:1 PRIOR:48x52x52 CONTEXT:16x52x52
build decoder LATENT:48x52x52
echo "plans written under $REPO/*/1/model.plan"
