#!/usr/bin/env bash
# One prepared GPU run (about 6 minutes at most): build the extension with CUDA, run the CUDA tests,
# run the GPU benchmarks, and print a summary table last. Meant for a machine with an NVIDIA GPU and
# no network, where torch, timm, pytest, ninja, numpy, pillow, pyyaml and tqdm are preinstalled.
#   bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT"
export FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PYTHON:-python}"
declare -A STATUS

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo "=== $name" | tee -a "$OUT/gpu_check.log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
  local rc=${PIPESTATUS[0]}
  STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
step build 240 "$PY" -m pip install --no-build-isolation --no-deps -e .
step cuda_tests 120 "$PY" -m pytest -q -rs tests/test_rescale_gather.py -k cuda
step bench_rescale 90 "$PY" benchmarks/bench_rescale.py --device cuda
if [ -f benchmarks/bench_pretrain.py ]; then
  step bench_pretrain 150 "$PY" benchmarks/bench_pretrain.py --device cuda
fi

echo
echo "## Summary ($(head -n1 "$OUT/gpu.txt"))"
echo
echo "| step | result |"
echo "|---|---|"
for k in build cuda_tests bench_rescale bench_pretrain; do
  [ -n "${STATUS[$k]:-}" ] && echo "| $k | ${STATUS[$k]} |"
done
echo
grep -h -A12 "^### Targets" "$OUT"/bench_*.log 2>/dev/null || true
tail -n 3 "$OUT/cuda_tests.log" 2>/dev/null || true
