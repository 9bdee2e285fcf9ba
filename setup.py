"""Build script for eadaprune_kernels.

Install with ``pip install --no-build-isolation -e .`` so the build sees the torch already installed
in the environment (an isolated build would download another torch).

Native backends (torch.utils.cpp_extension, ninja when it is on PATH):

* ``eadaprune_kernels._C``       the C++ CPU pipeline (csrc/cpu, python_bindings), always built.
* ``eadaprune_kernels._C_cuda``  the CUDA pipeline (csrc/cuda), built when torch has CUDA and nvcc is
  found; TORCH_CUDA_ARCH_LIST defaults to "9.0" (H100/H200) when no GPU is visible.

Environment switches:

* ``EADAPRUNE_SKIP_CUDA=1``     never build the CUDA extension.
* ``EADAPRUNE_REQUIRE_CUDA=1``  fail instead of skipping when the CUDA extension cannot be built
  (tools/check_cuda_build.sh sets it).
* ``EADAPRUNE_DEBUG=1``         -O0 -g host code, -g -lineinfo device code.
"""

import os
import sys

from setuptools import find_packages, setup

EXTRAS = {
    # Triton kernels; on CPU they run under TRITON_INTERPRET=1, which needs numpy.
    "triton": ["triton>=3.6,<3.9", "numpy<2.4"],
    # Real sample photographs and the picture for the demo (scikit-image bundles a few; Pillow draws).
    "demo": ["scikit-image>=0.22", "pillow>=9", "numpy<2.4"],
    # The Hugging Face LLaVA / LLaVA-NeXT adapter (needs forward(mm_encoder_outputs=...), 5.18+).
    "hf": ["transformers>=5.18,<6"],
    # Benchmarks: pytest-benchmark microbenchmarks, plots, scikit-learn's randomized_svd as a peer,
    # scikit-image for the accuracy benchmark's real photographs.
    "bench": ["pytest-benchmark>=4", "matplotlib>=3.7", "scikit-learn>=1.3", "scikit-image>=0.22", "numpy<2.4"],
}
EXTRAS["test"] = sorted(set(
    ["pytest>=8", "hypothesis>=6.100"] + EXTRAS["triton"] + EXTRAS["demo"] + EXTRAS["hf"] + EXTRAS["bench"]
))


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "False")


def _log(message: str) -> None:
    print(f"eadaprune_kernels setup: {message}", file=sys.stderr)


def _native_extensions():
    """(ext_modules, cmdclass) for the native backends."""
    import torch
    from torch.utils import cpp_extension

    debug = _flag("EADAPRUNE_DEBUG")
    # csrc/common/precision_guard.h picks the float32-precision API of the torch it is built against.
    torch_minor = int(torch.__version__.split(".")[1]) if torch.__version__.startswith("2.") else 99
    version_macros = [("EADAPRUNE_TORCH_MINOR", str(torch_minor))]
    host_opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: at::parallel_for is inlined from ATen's OpenMP headers into our code.
    cxx_flags = host_opt + ["-fopenmp"]
    extensions = [
        cpp_extension.CppExtension(
            "eadaprune_kernels._C",
            sources=["python_bindings/bindings.cpp", "csrc/cpu/pipeline_cpu.cpp"],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
            define_macros=version_macros,
        )
    ]

    reason = None
    if _flag("EADAPRUNE_SKIP_CUDA"):
        reason = "EADAPRUNE_SKIP_CUDA is set"
    elif torch.version.cuda is None:
        reason = f"the installed torch {torch.__version__} is a CPU-only build"
    elif cpp_extension.CUDA_HOME is None or not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        reason = "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if reason is None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            _log("no GPU visible: TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100/H200)")
        nvcc_flags = (["-O0", "-g", "-G", "-lineinfo"] if debug else ["-O3", "-lineinfo"])
        extensions.append(
            cpp_extension.CUDAExtension(
                "eadaprune_kernels._C_cuda",
                sources=["python_bindings/bindings_cuda.cpp", "csrc/cuda/pipeline_cuda.cu"],
                extra_compile_args={"cxx": host_opt, "nvcc": nvcc_flags},
                define_macros=version_macros,
            )
        )
        _log(f"building the CUDA extension (TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})")
    elif _flag("EADAPRUNE_REQUIRE_CUDA"):
        raise RuntimeError(f"EADAPRUNE_REQUIRE_CUDA is set but the CUDA extension cannot be built: {reason}")
    else:
        _log(f"skipping the CUDA extension (eadaprune_kernels._C_cuda): {reason}")
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return extensions, cmdclass


# torch takes CUDA_HOME from the nvcc on PATH; an nvcc wrapper in /usr/local/bin would make it
# /usr/local, where libcudart is not. Prefer the toolkit directory when it is the standard one.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch  # noqa: F401
except ImportError:
    _log("torch is not importable: install torch first and build with `pip install --no-build-isolation -e .`")
    raise

ext_modules, cmdclass = _native_extensions()

setup(
    name="eadaprune_kernels",
    version="0.1.0",
    description="Spectrum-adaptive visual-token pruning (E-AdaPrune) kernels for vision-language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["eadaprune_kernels", "eadaprune_kernels.*"]),
    install_requires=["torch>=2.4"],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["eadaprune=eadaprune_kernels.cli:main"],
        # vLLM loads these in each of its processes: one generate call may then carry LLaVA /
        # LLaVA-NeXT image embeddings of different lengths (eadaprune_kernels/integrations/vllm/plugin.py).
        "vllm.general_plugins": ["eadaprune_ragged_image_embeds = eadaprune_kernels.integrations.vllm.plugin:register"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
