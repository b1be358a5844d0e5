#!/usr/bin/env bash
# The first on-device check, for a machine with an NVIDIA GPU (not run yet: no GPU has been lent).
#
#   benchmarks/gpu_check.sh            # from anywhere; uses .venv/bin/python or $PYTHON
#
# 1. the `gpu`- and `tensorrt`-marked tests (they skip, with the reason, where torch sees no GPU or
#    tensorrt is missing; the log keeps the skip reasons);
# 2. the demo export for gpu-torch-fp16 (trains the demo run in a scratch folder, prunes to keep
#    0.5, writes dense/model .pt2 programs and the export's own bench);
# 3. `edgeprune bench` of that export on gpu-torch-fp16 at batch 1 and 64, dense vs pruned;
# 4. benchmarks/device_training.py: gate learning plus one fine-tune epoch on CUDA against CPU
#    for the same model and data (issue 10);
# 5. if tensorrt imports and time is left, the same bench on gpu-trt-fp16 (plans built on the spot).
#
# Every step has a timeout; together they stay under 8 minutes (75 + 120 + 150 + 45 + 60 s, and
# step 5 only in what is left of 460 s). Demo training runs on the CPU: on this project's 2-core machine
# it did not finish within 270 s (a dry run), so on a small host set DEMO_EPOCHS=3. Output goes to
# benchmarks/results/gpu_check-<GPU>/ (log.txt, bench JSON, the export's manifest), named after
# the GPU that ran it; commit that folder.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
EDGEPRUNE=("$PYTHON" -c 'from edgeprune.cli import main; main()')

GPU="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu")' 2>/dev/null || echo no-torch)"
SLUG="$(printf '%s' "$GPU" | tr -cs 'A-Za-z0-9.' '-' | sed 's/^-*//; s/-*$//')"
OUT="${OUT_DIR:-$ROOT/benchmarks/results/gpu_check-$SLUG}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edgeprune-gpu-check.XXXXXX")"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
trap 'rm -rf "$WORK"' EXIT

status=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log the exit code, keep going
  local name=$1 limit=$2; shift 2
  echo; echo "== $name (timeout ${limit}s, at ${SECONDS}s)"
  timeout "$limit" "$@"; local rc=$?
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || status=1
}

echo "edgeprune gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "GPU: $GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: not available"
"$PYTHON" - <<'EOF'
import importlib.util, platform
import onnxruntime, torch
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| available", torch.cuda.is_available(), "| onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers())
if importlib.util.find_spec("tensorrt"):
    import tensorrt
    print("tensorrt", tensorrt.__version__)
else:
    print("tensorrt: not installed (the tensorrt tests and step 4 skip)")
EOF

step "gpu and tensorrt tests" 75 \
  "$PYTHON" -m pytest -q -p no:cacheprovider -rs -m "gpu or tensorrt" "$ROOT/tests"

# In the scratch folder: the demo run (resnet20 on the built-in synthetic data, the demo recipe;
# DEMO_EPOCHS=N shortens it), then the export, which builds the .pt2 programs and benches them.
step "train the demo run (CPU)" 120 \
  env -C "$WORK" "${EDGEPRUNE[@]}" train --model resnet20 --data synthetic --run runs/demo \
  ${DEMO_EPOCHS:+--epochs "$DEMO_EPOCHS"}
if [ -f "$WORK/runs/demo/run.json" ]; then  # else export would train the demo again, untimed
  step "demo export for gpu-torch-fp16" 150 \
    env -C "$WORK" "${EDGEPRUNE[@]}" export --keep 0.5 --target gpu-torch-fp16 --bench-seconds 1
else
  echo; echo "== demo export: not run (no demo run)"; status=1
fi
EXPORT="$WORK/dist/demo-keep0.50"
[ -f "$EXPORT/manifest.json" ] && cp "$EXPORT/manifest.json" "$OUT/export_manifest.json"
[ -f "$EXPORT/bench.json" ] && cp "$EXPORT/bench.json" "$OUT/export_bench.json"

step "bench gpu-torch-fp16, batch 1 and 64, dense vs pruned" 45 \
  "${EDGEPRUNE[@]}" bench "$EXPORT" --target gpu-torch-fp16 --batch 1,64 --json "$OUT/bench_gpu-torch-fp16.json"

step "gate learning and a fine-tune epoch, CUDA vs CPU" 60 \
  "$PYTHON" "$ROOT/benchmarks/device_training.py" --devices cpu,cuda --out "$OUT/device_training.md"

if "$PYTHON" -c "import tensorrt" 2>/dev/null && [ "$SECONDS" -lt 300 ]; then
  step "bench gpu-trt-fp16, batch 1 and 32, dense vs pruned" $((460 - SECONDS)) \
    "${EDGEPRUNE[@]}" bench "$EXPORT" --target gpu-trt-fp16 --batch 1,32 --json "$OUT/bench_gpu-trt-fp16.json"
else
  echo; echo "== bench gpu-trt-fp16: not run (tensorrt missing or less than 3 minutes left)"
fi

echo; echo "gpu_check finished in ${SECONDS}s, status $status; output in $OUT"
exit "$status"
