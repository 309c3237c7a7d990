#!/usr/bin/env bash
# Build TensorRT FP16 engines ("plans") of the four stage models on the GPU that will serve them,
# and assemble the complete `trt` layout model repository around them:
#   docker compose run --rm trt-build                      # fills the trt-repository volume
#   HNDSR_LAYOUT=trt docker compose --profile gpu up -d    # serves it (--model-config-name=trt)
#
# Usage: build_trt_plans.sh [SRC_REPO] [OUT_REPO]
#   SRC_REPO  the exported ONNX repository (default /opt/hndsr/model_repository; read-only is fine)
#   OUT_REPO  where the trt layout is written (default /opt/hndsr/trt_repository, a named volume)
# Environment:
#   TRTEXEC                 trtexec binary (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec)
#   OPT_BATCH, MAX_BATCH    optimisation profile: batch 1..MAX_BATCH tiles, tuned for OPT_BATCH
#                           (defaults 64 and 512 = TRT_OPT_BATCH and MAX_BATCH in hndsr/serving)
#   FNO_SPECTRAL_PRECISION  fp32 (default) keeps the FNO's matmul-based spectral layers in FP32
#                           (the rest is FP16); fp16 lets TensorRT choose. Accuracy of either is
#                           unmeasured on TensorRT; training already runs these products in FP32
#                           because fp16/bf16 lost too much there (hndsr/models/spectral.py).
#   FORCE=1                 rebuild plans even when their stamp says they are current
#   PYTHON                  interpreter with the onnx package (default python3)
#   SKIP_GPU_CHECK=1        only for the offline test with a fake trtexec
# Plans depend on the GPU model and the TensorRT version: build them where they run, never commit
# them. Not run in CI (no GPU there); tests/test_deploy_manifests.py runs it with a fake trtexec.
set -euo pipefail
SRC=${1:-/opt/hndsr/model_repository}
OUT=${2:-/opt/hndsr/trt_repository}
OPT=${OPT_BATCH:-64}
MAX=${MAX_BATCH:-512}
SPECTRAL=${FNO_SPECTRAL_PRECISION:-fp32}
PYTHON=${PYTHON:-python3}
STAGES="encoder prior unet decoder"
ORCHESTRATORS="hndsr hndsr_stream hndsr_core"

die() { echo "build_trt_plans: $*" >&2; exit 1; }

TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}
[ -x "$TRTEXEC" ] || die "no trtexec at $TRTEXEC; set TRTEXEC, or run this script in nvcr.io/nvidia/tensorrt:24.10-py3 (TensorRT 10.5, the version of Triton 24.10) with the same GPU"
case "$SPECTRAL" in fp32 | fp16) ;; *) die "FNO_SPECTRAL_PRECISION must be fp32 or fp16, got '$SPECTRAL'" ;; esac
[ "$OPT" -ge 1 ] && [ "$OPT" -le "$MAX" ] || die "need 1 <= OPT_BATCH ($OPT) <= MAX_BATCH ($MAX)"
if [ "${SKIP_GPU_CHECK:-0}" = 1 ]; then
  gpu="none (SKIP_GPU_CHECK)"
else
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i 0) \
    || die "no GPU visible: run in the GPU container (compose service trt-build)"
fi
trt_version=$({ "$TRTEXEC" --help 2>&1 || true; } | grep -m1 -o 'TensorRT v[0-9]*' || true)
trt_version=${trt_version:-unknown}
for stage in $STAGES; do
  [ -f "$SRC/$stage/1/model.onnx" ] || die "$SRC/$stage/1/model.onnx missing: run 'hndsr export' first"
done

# The layout around the plans: every model's trt config (also as config.pbtxt, so the repository
# serves the trt layout with or without --model-config-name=trt) and the orchestrators' model.py.
mkdir -p "$OUT"
for model in $STAGES $ORCHESTRATORS; do
  [ -f "$SRC/$model/configs/trt.pbtxt" ] || die "$SRC/$model/configs/trt.pbtxt missing"
  mkdir -p "$OUT/$model/1" "$OUT/$model/configs"
  cp "$SRC/$model/configs/trt.pbtxt" "$OUT/$model/configs/trt.pbtxt"
  cp "$SRC/$model/configs/trt.pbtxt" "$OUT/$model/config.pbtxt"
done
for model in $ORCHESTRATORS; do
  cp "$SRC/$model/1/model.py" "$OUT/$model/1/model.py"
done

spectral_layers() {  # "name:fp32,..." for the FNO spectral convolutions' float products
  # MatMul/Einsum nodes of the spectral layers, and the Add/Sub that combine two of them (the
  # complex arithmetic); not the integer shape arithmetic that builds the DFT bases.
  "$PYTHON" - "$1" <<'PY'
import sys

import onnx

nodes = [n for n in onnx.load(sys.argv[1], load_external_data=False).graph.node if "/spectral/" in n.name]
products = {out for n in nodes if n.op_type in ("MatMul", "Einsum") for out in n.output}
keep = [
    n.name
    for n in nodes
    if n.op_type in ("MatMul", "Einsum") or (n.op_type in ("Add", "Sub") and set(n.input) <= products)
]
print(",".join(f"{name}:fp32" for name in keep))
PY
}

build() {  # stage, input specs (NAME:dims without the batch dimension)
  local stage=$1
  shift
  local min="" opt="" max=""
  for spec in "$@"; do
    local name=${spec%%:*} dims=${spec#*:}
    min+="${min:+,}${name}:1x${dims}"
    opt+="${opt:+,}${name}:${OPT}x${dims}"
    max+="${max:+,}${name}:${MAX}x${dims}"
  done
  local onnx="$SRC/$stage/1/model.onnx" plan="$OUT/$stage/1/model.plan"
  local stamp
  stamp="onnx=$(sha256sum "$onnx" | cut -d' ' -f1) trt=$trt_version gpu=$gpu profile=1/$OPT/$MAX"
  [ "$stage" != prior ] || stamp+=" spectral=$SPECTRAL"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$plan" ] && [ "$(cat "$plan.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$stage: plan is current ($plan), skipped"
    return
  fi
  local extra=()
  if [ "$stage" = prior ] && [ "$SPECTRAL" = fp32 ]; then
    local layers
    layers=$(spectral_layers "$onnx")
    [ -n "$layers" ] || die "no FNO spectral nodes found in $onnx"
    extra=(--precisionConstraints=obey "--layerPrecisions=$layers" "--layerOutputTypes=$layers")
  fi
  echo "$stage: building $plan (FP16, batch 1/$OPT/$MAX)"
  rm -f "$plan.tmp"
  "$TRTEXEC" --onnx="$onnx" --saveEngine="$plan.tmp" --fp16 --skipInference \
    --minShapes="$min" --optShapes="$opt" --maxShapes="$max" \
    --memPoolSize=workspace:8192 --timingCacheFile="$OUT/timing.cache" ${extra[@]+"${extra[@]}"}
  [ -s "$plan.tmp" ] || die "$stage: trtexec wrote no engine"
  mv -f "$plan.tmp" "$plan" # atomic: a half-written plan is never served
  echo "$stamp" >"$plan.stamp"
}

build encoder IMAGE:3x208x208
build prior LATENT:48x52x52 SCALE:1
build unet LATENT:48x52x52 TIMESTEP:1 PRIOR:48x52x52 CONTEXT:16x52x52
build decoder LATENT:48x52x52
printf 'tensorrt=%s\ngpu=%s\nprofile=1/%s/%s\nspectral=%s\n' "$trt_version" "$gpu" "$OPT" "$MAX" "$SPECTRAL" >"$OUT/BUILD_INFO"
echo "trt layout ready in $OUT (serve it with --model-repository=$OUT --model-config-name=trt)"
