#!/usr/bin/env bash
# One prepared GPU run (about 6 minutes at most): build the extension with CUDA, run the CUDA tests,
# run the GPU benchmarks, and print a summary table last. Meant for a machine with an NVIDIA GPU and
# no network, where torch, timm, pytest, ninja, numpy, pillow, pyyaml and tqdm are preinstalled.
#   bash scripts/gpu_check.sh [OUT_DIR]
# Exits 3 at once, naming what it saw, when no GPU is visible (every CUDA test would skip and the
# summary would still read rc=0); otherwise its exit code is non-zero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  -*) echo "error: unknown option $1 (usage: bash scripts/gpu_check.sh [OUT_DIR])" >&2; exit 2 ;;
esac
OUT="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT"
export FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if [ -z "${CUDA_HOME:-}" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  fi
  [ -n "${CUDA_HOME:-}" ] && export CUDA_HOME
fi
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then PY=python
else PY=python3
fi
declare -A STATUS

gpus="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
smi_rc=$?
versions="$("$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu visible', torch.cuda.is_available())" 2>&1)"
echo "python: $PY; CUDA_HOME: ${CUDA_HOME:-not set}; $versions" | tee "$OUT/versions.txt"
if [ $smi_rc -ne 0 ] || [ -z "$gpus" ] || ! grep -q "gpu visible True" <<<"$versions"; then
  echo "error: no NVIDIA GPU is visible (nvidia-smi rc=$smi_rc: ${gpus:-no output}; $versions): the CUDA tests would all skip" >&2
  exit 3
fi

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo "=== $name" | tee -a "$OUT/gpu_check.log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
  local rc=${PIPESTATUS[0]}
  STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
}

echo "$gpus" | tee "$OUT/gpu.txt"
cat "$OUT/versions.txt" >> "$OUT/gpu.txt"
step build 240 "$PY" -m pip install --no-build-isolation --no-deps -e .
step cuda_tests 120 "$PY" -m pytest -q -rs tests/test_rescale_gather.py tests/test_sharpen.py -k cuda
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
failed=0
for k in "${!STATUS[@]}"; do
  case "${STATUS[$k]}" in rc=0,*) ;; *) failed=1 ;; esac
done
if grep -qE "^[0-9]+ skipped|, [0-9]+ skipped" "$OUT/cuda_tests.log" 2>/dev/null && ! grep -q " passed" "$OUT/cuda_tests.log"; then
  echo "error: every CUDA test skipped" >&2; failed=1
fi
exit $failed
