// The native CUDA backend: the adaptive_prune / spectral_budget pipeline for CUDA tensors, with no
// host synchronisation (everything is enqueued on the current stream of the tokens' device).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace eadaprune {
namespace cuda {

// Same tuples as the CPU backend (csrc/cpu/pipeline_cpu.h).
using PruneOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BudgetOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

PruneOutputs adaptive_prune(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, double energy,
                            bool center, int64_t sketch_size, int64_t power_iters, int64_t min_tokens,
                            c10::optional<int64_t> max_tokens, int64_t seed,
                            const c10::optional<at::Tensor>& sketch_matrix,
                            const c10::optional<at::Tensor>& budgets);

BudgetOutputs spectral_budget(const at::Tensor& tokens, double energy, bool center, int64_t sketch_size,
                              int64_t power_iters, int64_t min_tokens, c10::optional<int64_t> max_tokens,
                              int64_t seed, const c10::optional<at::Tensor>& sketch_matrix);

// Omega [D, l] float32 on the current CUDA device.
at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, int64_t seed);

}  // namespace cuda
}  // namespace eadaprune
