#!/usr/bin/env bash
# Compile-and-link check of the CUDA extension (eadaprune_kernels._C_cuda) on a machine without a GPU.
#
# The CPU torch wheel cannot link a CUDA extension (no libc10_cuda / libtorch_cuda), so this builds
# against the CUDA torch wheel in a SEPARATE virtual environment (never the project's own venv).
#
# Usage: tools/check_cuda_build.sh [VENV_DIR]
#   VENV_DIR  where the CUDA-torch venv lives; created if missing, reused if it already has torch
#             (default: a fresh temporary directory, removed at exit).
# Env:      CUDA_TORCH_VERSION (default 2.14.1), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS.
# Exit status is non-zero, with the compiler's output, when anything fails.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_version=${CUDA_TORCH_VERSION:-2.14.1}
python=${PYTHON:-python3}

cleanup=()
trap 'for d in "${cleanup[@]:-}"; do [ -n "$d" ] && rm -rf "$d"; done' EXIT

if [ $# -ge 1 ]; then
  venv=$1
else
  venv=$(mktemp -d -t eadaprune-cuda-venv.XXXXXX)
  cleanup+=("$venv")
fi

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda  # the toolkit (lib64/libcudart), not a wrapper nvcc's prefix
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  echo "check_cuda_build: FAILED: nvcc not found (set CUDA_HOME or put nvcc on PATH)" >&2
  exit 1
fi

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating venv $venv"
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$torch_version' and torch.version.cuda else 1)" 2>/dev/null; then
  bash "$repo/tools/require_free_space.sh" "$venv" 8 "the CUDA torch wheel (~5.5 GB installed, plus the download)"
  echo "== installing torch==$torch_version (CUDA build) + ninja + setuptools into $venv"
  "$venv/bin/pip" install --quiet "torch==$torch_version" ninja "setuptools>=64" wheel
fi
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
installed=$(date +%s)

# Build from a temporary copy of the tracked + untracked (not ignored) sources, so that nothing of
# the CUDA build lands in the working tree (its build/ or a stray .so next to the CPU one).
work=$(mktemp -d -t eadaprune-cuda-build.XXXXXX)
cleanup+=("$work")
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 -I{} cp --parents {} "$work")

echo "== building the CUDA extension (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}, CUDA_HOME=${CUDA_HOME:-from nvcc on PATH})"
(
  cd "$work"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export EADAPRUNE_REQUIRE_CUDA=1  # setup.py fails instead of skipping CUDA
  export MAX_JOBS=${MAX_JOBS:-2}
  "$venv/bin/python" setup.py build_ext --build-lib "$work/out" --build-temp "$work/tmp"
) || { echo "check_cuda_build: FAILED: the CUDA extension did not compile/link" >&2; exit 1; }

so=$(find "$work/out" -name '_C_cuda*.so' | head -1)
if [ -z "$so" ]; then
  echo "check_cuda_build: FAILED: no _C_cuda*.so was produced" >&2
  exit 1
fi
# Every symbol must resolve against torch's CUDA libraries: load it (no GPU is needed to dlopen).
"$venv/bin/python" - "$so" <<'PY'
import importlib.util, sys
import torch  # loads libtorch_cuda / libc10_cuda first
spec = importlib.util.spec_from_file_location("eadaprune_kernels._C_cuda", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("loaded", sys.argv[1], "functions:", sorted(n for n in dir(module) if not n.startswith("_")))
PY
end=$(date +%s)
echo "check_cuda_build: OK (venv/install $((installed - start)) s, build+load $((end - installed)) s)"
