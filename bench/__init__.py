"""Speed and accuracy benchmarks for eadaprune_kernels (see bench/README.md)."""
