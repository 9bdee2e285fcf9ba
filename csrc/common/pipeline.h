// The one interface of the native backends (csrc/cpu and csrc/cuda): a request in, the fields out.
//
// A Request carries dense tokens [B, N, D] (no cu_seqlens) or packed tokens [T, D] with cu_seqlens
// [B + 1] (image b = rows cu_seqlens[b]:cu_seqlens[b + 1]), and a Config already resolved and checked
// by the Python layer (eadaprune_kernels/contract.py): sketch_size is l = min(sketch_size, N, D)
// (ragged: L = min(sketch_size, D)), max_tokens is M. run() checks what protects memory
// (checks.h: dtypes, ranks, shapes, devices, l and M against the shapes, cu_seqlens values) and trusts
// the rest; internal calls (the ragged driver running the dense pipeline per run of images) take the
// checked Config and check nothing again.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace eadaprune {

// The resolved per-call configuration (contract.PipelineConfig without the sketch tensor).
struct Config {
  double energy;
  bool center;
  int64_t sketch_size;  // l (dense) or the batch-wide L (ragged)
  int64_t power_iters;
  int64_t min_tokens;
  int64_t max_tokens;  // M
  uint64_t seed;
};

// Image i's own configuration inside a ragged call of batch-wide widths cfg (contract.image_config):
// l_i = min(L, N_i), max_i = min(M, N_i), min_i = min(min_tokens, max_i).
inline Config image_config(const Config& cfg, int64_t n) {
  Config one = cfg;
  one.sketch_size = std::min(cfg.sketch_size, n);
  one.max_tokens = std::min(cfg.max_tokens, n);
  one.min_tokens = std::min(cfg.min_tokens, one.max_tokens);
  return one;
}

struct Request {
  at::Tensor tokens;                     // [B, N, D] or packed [T, D]; float16 / bfloat16 / float32 / float64
  c10::optional<at::Tensor> cu_seqlens;  // [B + 1] int32 / int64 for packed tokens
  c10::optional<at::Tensor> scores;      // [B, N] / [T] floating, or none (leverage selection)
  c10::optional<at::Tensor> sketch;      // [D, l] / [D, L] floating, or none (the generated Philox sketch)
  c10::optional<at::Tensor> budgets;     // [B] int32 / int64 replacing the computed budgets (clamped to
                                         // [0, M], ragged [0, max_i], on the device), or none
  Config cfg;
  bool select;  // budgets, selection and gather; false: budgets only
};

// select: tokens [B, M, D] (input dtype), indices [B, M] int64 (relative to each image's start for
//         packed input, -1 in padding), lengths [B] int32, mask [B, M] bool, singular_values [B, l]
//         float32 (0 past l_i), total_energy [B] float32, saturated [B] bool;
// else:   budgets [B] int32, singular_values, total_energy, saturated.
using Fields = std::vector<at::Tensor>;

namespace cpu {
Fields run(const Request& request);
// Omega [D, l] float32: element (i, j) = tl.randn(seed, j * D + i) (sketch.py).
at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, uint64_t seed);
}  // namespace cpu

namespace cuda {
Fields run(const Request& request);
// Omega [D, l] float32 on the current CUDA device.
at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, uint64_t seed);
}  // namespace cuda

}  // namespace eadaprune
