// Ragged batches for the native backends: packed tokens [T, D] with cu_seqlens [B + 1] (image b is
// rows cu_seqlens[b]:cu_seqlens[b + 1]), with the semantics of reference.adaptive_prune_ragged.
//
// A ragged call is defined as running each image alone with its own N_i (l_i = min(L, N_i), max_i =
// min(M, N_i), min_i = min(min_tokens, max_i), the first l_i columns of one [D, L] sketch). The
// drivers here do exactly that with the backend's dense pipeline, on *runs* of consecutive images of
// equal N: such a run is a [k, N, D] view of the packed rows (no copy, no padding), and the dense
// pipeline treats its images independently, so each image's numbers are its own. The results are
// copied into the batch-wide outputs ([B, M, D], [B, L], ...) whose padding is written here (zeros,
// index -1, mask false). How the runs are scheduled (threads, streams) is up to the backend.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "checks.h"

namespace eadaprune {
namespace ragged {

// Images [first, first + count), all of n tokens, packed at rows [row, row + count * n).
struct Segment {
  int64_t first, count, row, n;
};

// The maximal runs of consecutive images of equal N (bounds already checked).
inline std::vector<Segment> equal_size_runs(const std::vector<int64_t>& bounds) {
  std::vector<Segment> runs;
  const int64_t batch = static_cast<int64_t>(bounds.size()) - 1;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = bounds[b + 1] - bounds[b];
    if (!runs.empty() && runs.back().n == n) {
      ++runs.back().count;
    } else {
      runs.push_back(Segment{b, 1, bounds[b], n});
    }
  }
  return runs;
}

// Relative cost of a run (its GEMMs are ~ count * N * D * l flops per product), for scheduling.
inline double segment_work(const Segment& s, int64_t d, int64_t sketch_size) {
  return static_cast<double>(s.count) * static_cast<double>(s.n) * static_cast<double>(d) *
         static_cast<double>(std::min(sketch_size, s.n) + 1);
}

// Everything a run needs, shared by all runs of a call.
struct Inputs {
  at::Tensor tokens;                  // [T, D], contiguous
  c10::optional<at::Tensor> scores;   // [T] or none
  at::Tensor omega;                   // [D, L]: the given sketch_matrix or the generated sketch
  c10::optional<at::Tensor> budgets;  // [B] or none
  Config cfg;                         // the batch-wide widths L = cfg.sketch_size, M = cfg.max_tokens
};

using PruneOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BudgetOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The batch-wide outputs with their padding already written (tokens [T, D] or [B, N, D]: D is the last size).
inline PruneOutputs make_prune_outputs(const at::Tensor& tokens, int64_t batch, const Config& cfg) {
  const auto opts = tokens.options();
  return {at::zeros({batch, cfg.max_tokens, tokens.size(-1)}, opts), at::full({batch, cfg.max_tokens}, -1, opts.dtype(at::kLong)),
          at::zeros({batch}, opts.dtype(at::kInt)), at::zeros({batch, cfg.max_tokens}, opts.dtype(at::kBool)),
          at::zeros({batch, cfg.sketch_size}, opts.dtype(at::kFloat)), at::zeros({batch}, opts.dtype(at::kFloat)),
          at::zeros({batch}, opts.dtype(at::kBool))};
}

inline BudgetOutputs make_budget_outputs(const at::Tensor& tokens, int64_t batch, const Config& cfg) {
  const auto opts = tokens.options();
  return {at::zeros({batch}, opts.dtype(at::kInt)), at::zeros({batch, cfg.sketch_size}, opts.dtype(at::kFloat)),
          at::zeros({batch}, opts.dtype(at::kFloat)), at::zeros({batch}, opts.dtype(at::kBool))};
}

inline at::Tensor segment_tokens(const Inputs& in, const Segment& s) {
  return in.tokens.narrow(0, s.row, s.count * s.n).view({s.count, s.n, in.tokens.size(1)});
}

inline c10::optional<at::Tensor> segment_scores(const Inputs& in, const Segment& s) {
  if (!in.scores.has_value()) return c10::nullopt;
  return in.scores->narrow(0, s.row, s.count * s.n).view({s.count, s.n});
}

// One run through the dense adaptive_prune of the backend (`dense` has its signature), written into
// the rows [first, first + count) of `out` (first max_i slots, first l_i singular values).
template <typename DensePrune>
void prune_segment(const Inputs& in, const Segment& s, const DensePrune& dense, const PruneOutputs& out) {
  const Config one = ragged_image_config(in.cfg, s.n);
  const c10::optional<at::Tensor> budgets =
      in.budgets.has_value() ? c10::optional<at::Tensor>(in.budgets->narrow(0, s.first, s.count)) : c10::nullopt;
  const c10::optional<at::Tensor> omega(in.omega.narrow(1, 0, one.sketch_size));
  const auto r = dense(segment_tokens(in, s), segment_scores(in, s), one.energy, one.center, one.sketch_size,
                       one.power_iters, one.min_tokens, c10::optional<int64_t>(one.max_tokens),
                       static_cast<int64_t>(one.seed), omega, budgets);
  const int64_t top = one.max_tokens, l = one.sketch_size;
  std::get<0>(out).narrow(0, s.first, s.count).narrow(1, 0, top).copy_(std::get<0>(r));
  std::get<1>(out).narrow(0, s.first, s.count).narrow(1, 0, top).copy_(std::get<1>(r));
  std::get<2>(out).narrow(0, s.first, s.count).copy_(std::get<2>(r));
  std::get<3>(out).narrow(0, s.first, s.count).narrow(1, 0, top).copy_(std::get<3>(r));
  std::get<4>(out).narrow(0, s.first, s.count).narrow(1, 0, l).copy_(std::get<4>(r));
  std::get<5>(out).narrow(0, s.first, s.count).copy_(std::get<5>(r));
  std::get<6>(out).narrow(0, s.first, s.count).copy_(std::get<6>(r));
}

// One run through the dense spectral_budget of the backend.
template <typename DenseBudget>
void budget_segment(const Inputs& in, const Segment& s, const DenseBudget& dense, const BudgetOutputs& out) {
  const Config one = ragged_image_config(in.cfg, s.n);
  const c10::optional<at::Tensor> omega(in.omega.narrow(1, 0, one.sketch_size));
  const auto r = dense(segment_tokens(in, s), one.energy, one.center, one.sketch_size, one.power_iters,
                       one.min_tokens, c10::optional<int64_t>(one.max_tokens), static_cast<int64_t>(one.seed), omega);
  std::get<0>(out).narrow(0, s.first, s.count).copy_(std::get<0>(r));
  std::get<1>(out).narrow(0, s.first, s.count).narrow(1, 0, one.sketch_size).copy_(std::get<1>(r));
  std::get<2>(out).narrow(0, s.first, s.count).copy_(std::get<2>(r));
  std::get<3>(out).narrow(0, s.first, s.count).copy_(std::get<3>(r));
}

}  // namespace ragged
}  // namespace eadaprune
