// The native CPU backend: the whole adaptive_prune / spectral_budget pipeline for CPU tensors.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace eadaprune {
namespace cpu {

// (tokens [B, M, D] input dtype, indices [B, M] int64, lengths [B] int32, mask [B, M] bool,
//  singular_values [B, l] float32, total_energy [B] float32, saturated [B] bool)
using PruneOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (budgets [B] int32, singular_values [B, l] float32, total_energy [B] float32, saturated [B] bool)
using BudgetOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

PruneOutputs adaptive_prune(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, double energy,
                            bool center, int64_t sketch_size, int64_t power_iters, int64_t min_tokens,
                            c10::optional<int64_t> max_tokens, int64_t seed,
                            const c10::optional<at::Tensor>& sketch_matrix,
                            const c10::optional<at::Tensor>& budgets);

BudgetOutputs spectral_budget(const at::Tensor& tokens, double energy, bool center, int64_t sketch_size,
                              int64_t power_iters, int64_t min_tokens, c10::optional<int64_t> max_tokens,
                              int64_t seed, const c10::optional<at::Tensor>& sketch_matrix);

// Ragged input: packed tokens [T, D] with cu_seqlens [B + 1] (int32/int64, image b = rows
// cu_seqlens[b]:cu_seqlens[b + 1]), scores [T] or none, budgets [B] or none. Same semantics and field
// shapes as reference.adaptive_prune_ragged / spectral_budget_ragged: sketch_size resolves to
// L = min(sketch_size, D), max_tokens to M (default L); image i uses l_i = min(L, N_i),
// max_i = min(M, N_i), min_i = min(min_tokens, max_i) and the first l_i columns of sketch_matrix [D, L].
// Outputs: tokens [B, M, D], indices [B, M] relative to each image's start (-1 past the budget),
// singular_values [B, L] (0 past l_i).
// The values of cu_seqlens are read (host memory, no cost) and checked.
PruneOutputs adaptive_prune_ragged(const at::Tensor& tokens, const at::Tensor& cu_seqlens,
                                   const c10::optional<at::Tensor>& scores, double energy, bool center,
                                   int64_t sketch_size, int64_t power_iters, int64_t min_tokens,
                                   c10::optional<int64_t> max_tokens, int64_t seed,
                                   const c10::optional<at::Tensor>& sketch_matrix,
                                   const c10::optional<at::Tensor>& budgets);

BudgetOutputs spectral_budget_ragged(const at::Tensor& tokens, const at::Tensor& cu_seqlens, double energy,
                                     bool center, int64_t sketch_size, int64_t power_iters, int64_t min_tokens,
                                     c10::optional<int64_t> max_tokens, int64_t seed,
                                     const c10::optional<at::Tensor>& sketch_matrix);

// Omega [D, l] float32 on the CPU: element (i, j) = tl.randn(seed, j * D + i).
at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, int64_t seed);

}  // namespace cpu
}  // namespace eadaprune
