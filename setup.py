"""Build script for eadaprune_kernels.

The package is pure Python today; native backends (csrc/, python_bindings/) are added here as
their issues land. Install with ``pip install --no-build-isolation -e .`` so the build sees the
torch already installed in the environment (an isolated build would download another torch).
"""

from setuptools import find_packages, setup

EXTRAS = {
    # Triton kernels; on CPU they run under TRITON_INTERPRET=1, which needs numpy.
    "triton": ["triton>=3.6,<3.9", "numpy<2.4"],
    # Real sample photographs for the demo (scikit-image bundles a few).
    "demo": ["scikit-image>=0.22", "numpy<2.4"],
    "test": ["pytest>=8", "hypothesis>=6.100", "triton>=3.6,<3.9", "numpy<2.4", "scikit-image>=0.22"],
}

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
    entry_points={"console_scripts": ["eadaprune=eadaprune_kernels.cli:main"]},
)
