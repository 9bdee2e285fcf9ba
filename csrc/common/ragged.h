// Ragged batches for the native backends: packed tokens [T, D] with cu_seqlens [B + 1] (image b is
// rows cu_seqlens[b]:cu_seqlens[b + 1]), with the semantics of the reference backend's ragged path.
//
// A ragged call is defined as running each image alone with its own N_i (l_i = min(L, N_i), max_i =
// min(M, N_i), min_i = min(min_tokens, max_i), the first l_i columns of one [D, L] sketch). The driver
// here does exactly that with the backend's dense pipeline, on *runs* of consecutive images of equal
// N: such a run is a [k, N, D] view of the packed rows (no copy, no padding), and the dense pipeline
// treats its images independently, so each image's numbers are its own. The results are copied into
// the batch-wide outputs ([B, M, D], [B, L], ...) whose padding is written here (zeros, index -1, mask
// false). How the runs are scheduled (threads, streams) is up to the backend.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "pipeline.h"

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

// The outputs of `batch` images with their padding already written (D is the last size of tokens).
inline Fields make_outputs(const at::Tensor& tokens, int64_t batch, const Config& cfg, bool select) {
  const auto opts = tokens.options();
  const int64_t m = cfg.max_tokens, l = cfg.sketch_size;
  Fields budgets{at::zeros({batch}, opts.dtype(at::kInt)), at::zeros({batch, l}, opts.dtype(at::kFloat)),
                 at::zeros({batch}, opts.dtype(at::kFloat)), at::zeros({batch}, opts.dtype(at::kBool))};
  if (!select) return budgets;
  return {at::zeros({batch, m, tokens.size(-1)}, opts), at::full({batch, m}, -1, opts.dtype(at::kLong)), budgets[0],
          at::zeros({batch, m}, opts.dtype(at::kBool)), budgets[1], budgets[2], budgets[3]};
}

using SegmentTask = std::function<void(const Segment&)>;

// Runs a checked ragged request: `dense(tokens [k, N, D], scores [k, N] or none, image config,
// sketch [D, l_i], budgets [k] or none, select) -> Fields` on every run of equal-size images, handed
// to `schedule(runs, task)`; `omega` is the [D, L] sketch of the call (given or generated).
template <typename DenseRun, typename Schedule>
Fields run(const Request& r, const std::vector<int64_t>& bounds, const at::Tensor& omega, const DenseRun& dense,
           const Schedule& schedule) {
  const at::Tensor tokens = r.tokens.contiguous();
  const c10::optional<at::Tensor> scores =
      r.scores.has_value() ? c10::optional<at::Tensor>(r.scores->contiguous()) : c10::nullopt;
  const int64_t d = tokens.size(1);
  Fields out = make_outputs(tokens, static_cast<int64_t>(bounds.size()) - 1, r.cfg, r.select);
  const SegmentTask task = [&](const Segment& s) {
    const Config one = image_config(r.cfg, s.n);
    const at::Tensor x = tokens.narrow(0, s.row, s.count * s.n).view({s.count, s.n, d});
    const c10::optional<at::Tensor> sc =
        scores.has_value() ? c10::optional<at::Tensor>(scores->narrow(0, s.row, s.count * s.n).view({s.count, s.n}))
                           : c10::nullopt;
    const c10::optional<at::Tensor> bu =
        r.budgets.has_value() ? c10::optional<at::Tensor>(r.budgets->narrow(0, s.first, s.count)) : c10::nullopt;
    const Fields f = dense(x, sc, one, c10::optional<at::Tensor>(omega.narrow(1, 0, one.sketch_size)), bu, r.select);
    for (size_t i = 0; i < f.size(); ++i) {
      at::Tensor dst = out[i].narrow(0, s.first, s.count);
      if (f[i].dim() >= 2) dst = dst.narrow(1, 0, f[i].size(1));  // the first max_i slots / l_i values
      dst.copy_(f[i]);
    }
  };
  schedule(equal_size_runs(bounds), task);
  return out;
}

}  // namespace ragged
}  // namespace eadaprune
