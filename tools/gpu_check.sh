#!/usr/bin/env bash
# The GPU checks of eadaprune_kernels in one command, for a session that is lent a GPU.
#
#   tools/gpu_check.sh OUT_DIR [--dry-run]
#
# From the repository root of a source checkout, on a machine with a CUDA GPU, nvcc and
# compute-sanitizer (no network needed, nothing is installed; works with the torch / triton found
# there, e.g. torch 2.11 + triton 3.6):
#   1. env         versions of the GPU, driver, CUDA, python, torch, triton, transformers
#   2. build       the C++ CPU and CUDA extensions in place (EADAPRUNE_REQUIRE_CUDA=1)
#   3. gpu-tests   the GPU tests: Triton and CUDA backends against the reference (N=576, D 1024 / 4096,
#                  B 1 / 64, three dtypes), exact low rank at energy 1, CUDA-graph capture, sync-debug
#                  mode, the TF32-setting independence, ragged input
#   4. bench       bench/bench_triton.py: fused kernel vs cuda backend vs torch.svd_lowrank vs
#                  torch.linalg.svdvals, B 1 / 64, D 1024 / 4096, bf16 / fp32
#   5. sanitize-*  the CUDA backend's small-shape test under compute-sanitizer memcheck, racecheck
#                  and synccheck
# Every step has its own time limit (together under 8 minutes), writes OUT_DIR/<step>.log and a row
# of OUT_DIR/summary.md; the benchmark table lands in OUT_DIR too. A failed or timed-out step does
# not stop the later ones. Exit status: 0 when every step passed (or was skipped by a dry run), 1
# otherwise, 2 for bad arguments.
#
# --dry-run, or no CUDA device: runs step 1 and checks that every file the steps use exists; the GPU
# steps are listed as skipped with the command they would run (tests/test_gpu_check.py runs this on
# CPU CI). Environment: PYTHON (default python3), MAX_JOBS (default: all cores).
set -uo pipefail

usage() {
  echo "usage: tools/gpu_check.sh OUT_DIR [--dry-run]" >&2
  echo "  runs the GPU build, tests, benchmark and compute-sanitizer checks; logs and tables go to OUT_DIR" >&2
  exit "${1:-2}"
}

out=""
dry_run=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage 0 ;;
    --dry-run) dry_run=1 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; usage ;;
    *)
      if [ -n "$out" ]; then echo "gpu_check: expected one OUT_DIR, got '$out' and '$arg'" >&2; usage; fi
      out=$arg ;;
  esac
done
[ -n "$out" ] || { echo "gpu_check: OUT_DIR is missing" >&2; usage; }
if [ -e "$out" ] && [ ! -d "$out" ]; then
  echo "gpu_check: OUT_DIR '$out' exists and is not a directory" >&2
  exit 2
fi
mkdir -p "$out" || { echo "gpu_check: cannot create OUT_DIR '$out'" >&2; exit 2; }
out=$(cd "$out" && pwd)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
python=${PYTHON:-python3}
jobs=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}

# The files the steps use: a dry run fails when one of them is missing (renamed tests, moved scripts).
GPU_TESTS=(tests/test_triton_backend.py tests/test_cuda_backend.py tests/test_cross_backend.py tests/test_ragged.py
           tests/test_native_ragged.py)
BENCH=bench/bench_triton.py
SANITIZER_TEST=tests/test_cuda_backend.py
SANITIZER_CASE=test_small_shapes_for_the_sanitizer

summary="$out/summary.md"
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
} > "$summary"
failed=0

row() { echo "| $1 | $2 | $3 | $4 |" >> "$summary"; echo "gpu_check: $1: $2 ($3 s)"; }

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, logging to OUT_DIR/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  if [ "$dry_run" = 1 ]; then
    local shown
    shown=$(printf '%q ' "$@")
    row "$name" "skipped (dry run): \`${shown% }\`" 0 "-"
    return 0
  fi
  local start end rc
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  end=$(date +%s)
  if [ "$rc" = 0 ]; then
    row "$name" "passed" $((end - start)) "$name.log"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    row "$name" "TIMED OUT after ${limit} s" $((end - start)) "$name.log"
    failed=1
  else
    row "$name" "FAILED (exit $rc)" $((end - start)) "$name.log"
    failed=1
  fi
}

# 1. environment (also in a dry run)
{
  echo "repository: $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  echo "date: $(date -u)"
  "$python" - <<'PY'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "triton", "transformers", "numpy", "pytest"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:  # report, do not fail: the steps say what they need
        print(name, "not importable:", exc)
try:
    import torch
    print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
except Exception as exc:
    print("torch.cuda:", exc)
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -2
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -2
} > "$out/env.log" 2>&1
row env "recorded" 0 "env.log"

missing=()
for path in "${GPU_TESTS[@]}" "$BENCH" "$SANITIZER_TEST" setup.py; do
  [ -e "$path" ] || missing+=("$path")
done
if ! grep -q "def $SANITIZER_CASE" "$SANITIZER_TEST" 2>/dev/null; then
  missing+=("$SANITIZER_TEST::$SANITIZER_CASE")
fi
if [ ${#missing[@]} -gt 0 ]; then
  row files "MISSING: ${missing[*]}" 0 "-"
  failed=1
else
  row files "all present" 0 "-"
fi

if [ "$dry_run" = 0 ] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $python: dry run, the GPU steps are skipped"
  dry_run=1
fi

# 2-5. the GPU steps; limits sum to 480 s
step build 180 env EADAPRUNE_REQUIRE_CUDA=1 MAX_JOBS="$jobs" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
  "$python" setup.py build_ext --inplace
step gpu-tests 150 "$python" -m pytest -q -rs -p no:cacheprovider "${GPU_TESTS[@]}" -k "gpu or cuda" \
  --junitxml="$out/gpu-tests.xml"
step bench 60 "$python" "$BENCH" --batches 1 64 --dims 1024 4096 --out "$out"
for tool in memcheck racecheck synccheck; do
  step "sanitize-$tool" 30 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    "$python" -m pytest -q -x -p no:cacheprovider "$SANITIZER_TEST" -k "$SANITIZER_CASE"
done

if [ "$dry_run" = 1 ]; then
  echo >> "$summary"
  echo "Dry run: no GPU step ran." >> "$summary"
fi
echo "gpu_check: summary in $summary"
exit "$failed"
