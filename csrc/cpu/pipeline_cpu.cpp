// The native CPU backend of eadaprune_kernels: the pipeline of backends/reference.py for CPU tensors.
//
// Per call (B images of N tokens x D features; l = min(sketch_size, N, D)):
//  1. prepare (parallel over images): non-finite scan, power-of-two scale s with max|x|/s in [1, 2),
//     mean token, raw and centred energies in float64, and one working copy X_c / s in float32
//     (float64 for float64 inputs). The copy is needed anyway (dtype conversion and scaling), so the
//     centring is folded into it: each element is centred in float64 and rounded once, which avoids
//     the float32 cancellation of X Omega - 1 (mu^T Omega) when the mean token dominates.
//  2. Y = X_c Omega, then power_iters times W = orth(X_c^T Q), Q = orth(X_c W); the big products
//     are ATen batched GEMMs (BLAS), all images at once.
//  3. orth is CholeskyQR with a float64 Gram and a float64 shifted Cholesky (ours, small_linalg.h):
//     the Gram of float32 data accumulated in float64 is accurate to ~l eps64 ||Y||^2, so R is
//     accurate up to cond(Y) ~ 1/eps32 (where float32 noise in Y dominates anyway); the shift
//     (~1e-13 trace) keeps the factorisation alive for rank-deficient Y. One pass leaves
//     ||Q^T Q - I|| ~ eps32 cond(Y), enough for the intermediate bases (only their span matters);
//     the last Q gets a second pass (CholeskyQR2: the second Gram is well conditioned), so Q is
//     orthonormal to float32 precision and sigma(Q^T X_c) is the projected spectrum.
//  4. B^T = X_c^T Q (D x l); the l x l Gram B B^T in float64; its eigen-decomposition by pivoted
//     Cholesky + one-sided Jacobi (small_linalg.h); sigma = sqrt(lambda).
//  5. threshold, leverage scores from U = Q W_B (only when no scores are given), top-budget selection
//     (ties to the lower index) and gather into the padded outputs (parallel over images).
//
// Ragged input (packed tokens [T, D], cu_seqlens [B + 1]; csrc/common/ragged.h): cu_seqlens is read
// and checked on the host, and each run of consecutive equal-size images goes through the pipeline
// above as a [k, N, D] view of its rows (its own l_i, max_i, min_i, the first l_i sketch columns), so
// no padding enters any spectrum. Runs bigger than a fair share of the work use the threads inside;
// the others are spread over the threads, largest first (run_segments).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "../common/numerics.h"
#include "../common/philox.h"
#include "../common/pipeline.h"
#include "../common/precision_guard.h"
#include "../common/ragged.h"
#include "small_linalg.h"

namespace eadaprune {
namespace cpu {
namespace {

struct ImageStats {
  double scale = 1.0;   // power of two
  double energy = 0.0;  // ||X_c / scale||_F^2
  bool flat = true;
  bool bad = false;     // non-finite tokens or scores: computed as zeros, reported saturated / NaN
};

at::Tensor make_sketch(int64_t d, int64_t l, uint64_t seed) {
  at::Tensor omega = at::empty({d, l}, at::kFloat);
  float* o = omega.data_ptr<float>();
  at::parallel_for(0, d * l, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t i = k / l, j = k % l;
      o[k] = philox_randn(seed, static_cast<uint32_t>(j * d + i));
    }
  });
  return omega;
}

// Three passes over the image. Every reduction is kept per column (index j) and summed at the end,
// so the inner loops carry no dependency from one element to the next and the compiler vectorises
// them; the sums are still float64.
template <typename in_t, typename work_t>
void prepare_image(const in_t* src, work_t* dst, int64_t n, int64_t d, bool center, bool bad_scores,
                   ImageStats& st, std::vector<double>& mean, std::vector<double>& acc) {
  const int64_t count = n * d;
  // pass 1: max |x| and the non-finite scan (v * 0 is NaN exactly when v is NaN or +-inf)
  std::vector<double>& colmax = mean;
  colmax.assign(d, 0.0);
  acc.assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const in_t* row = src + i * d;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(row[j]);
      colmax[j] = std::max(colmax[j], std::abs(v));
      acc[j] += v * 0.0;
    }
  }
  double amax = 0.0, poison = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    amax = std::max(amax, colmax[j]);
    poison += acc[j];
  }
  st.bad = !(poison == 0.0) || bad_scores;
  if (st.bad) {
    std::fill(dst, dst + count, work_t(0));
    st = ImageStats{1.0, 0.0, true, true};
    return;
  }
  st.scale = amax > 0.0 ? std::ldexp(1.0, std::ilogb(amax)) : 1.0;
  const double inv = 1.0 / st.scale;  // exact: a power of two
  // pass 2: column sums (the mean token) and the raw energy, of the scaled image
  mean.assign(d, 0.0);
  acc.assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const in_t* row = src + i * d;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(row[j]) * inv;
      mean[j] += v;
      acc[j] += v * v;
    }
  }
  double raw = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    raw += acc[j];
    mean[j] = center ? mean[j] / static_cast<double>(n) : 0.0;
  }
  // pass 3: the centred working copy and the exact centred energy
  acc.assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const in_t* row = src + i * d;
    work_t* out = dst + i * d;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(row[j]) * inv - mean[j];
      out[j] = static_cast<work_t>(v);
      acc[j] += v * v;
    }
  }
  double energy = 0.0;
  for (int64_t j = 0; j < d; ++j) energy += acc[j];
  st.energy = energy;
  st.flat = energy <= kFlatRtol * raw;
  if (st.flat) std::fill(dst, dst + count, work_t(0));  // reported as zero spectrum, zero leverage
}

std::vector<uint8_t> nonfinite_scores(const c10::optional<at::Tensor>& scores, int64_t batch) {
  std::vector<uint8_t> bad(batch, 0);
  if (!scores.has_value()) return bad;
  const at::Tensor s = scores->to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  const int64_t n = s.size(1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i) bad[b] |= !std::isfinite(p[b * n + i]);
  return bad;
}

// The scaled (centred) working copy [B, N, D] and the per-image statistics.
at::Tensor prepare(const at::Tensor& x, const std::vector<uint8_t>& bad_scores, bool center,
                   std::vector<ImageStats>& stats) {
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const at::ScalarType work = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor xs = at::empty({batch, n, d}, x.options().dtype(work));
  stats.assign(batch, ImageStats{});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "eadaprune_prepare", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> mean, acc;
      for (int64_t b = begin; b < end; ++b) {
        if (work == at::kDouble) {
          prepare_image(src + b * n * d, xs.data_ptr<double>() + b * n * d, n, d, center, bad_scores[b],
                        stats[b], mean, acc);
        } else {
          prepare_image(src + b * n * d, xs.data_ptr<float>() + b * n * d, n, d, center, bad_scores[b],
                        stats[b], mean, acc);
        }
      }
    });
  });
  return xs;
}

// CholeskyQR with `passes` passes (see the file comment): Y [B, M, l] -> Q with the same span.
// Q = Y R^{-1} is one batched GEMM with the explicit triangular inverse (formed in float64): BLAS
// trsm on [M, l] right-hand sides is several times slower here, and the inverse of a triangular
// factor is as accurate as the solve for this purpose (error ~ eps * cond(R), the same order as
// the float32 rounding of Y R^{-1} itself; the second pass of the final Q removes it).
at::Tensor orthonormalize(at::Tensor y, int passes) {
  const int64_t batch = y.size(0), l = y.size(2);
  for (int pass = 0; pass < passes; ++pass) {
    const at::Tensor y64 = y.to(at::kDouble);
    at::Tensor gram = at::bmm(y64.transpose(1, 2), y64).contiguous();  // [B, l, l]
    at::Tensor inverse = at::empty_like(gram);
    double* g = gram.data_ptr<double>();
    double* inv = inverse.data_ptr<double>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        shifted_cholesky_upper(g + b * l * l, l);
        upper_triangular_inverse(g + b * l * l, inv + b * l * l, l);
      }
    });
    y = at::bmm(y, inverse.to(y.scalar_type()));
  }
  return y;
}

struct Spectrum {
  std::vector<ImageStats> stats;
  at::Tensor lambda;   // [B, l] float64, eigenvalues of B B^T in the scaled units, descending
  at::Tensor vectors;  // [B, l, l] float64 eigenvectors (columns), or undefined
  at::Tensor q;        // [B, N, l] the final orthonormal basis
};

Spectrum spectrum(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, const Config& cfg,
                  const c10::optional<at::Tensor>& sketch_matrix, bool want_vectors) {
  const int64_t batch = tokens.size(0), d = tokens.size(2), l = cfg.sketch_size;
  Spectrum out;
  const at::Tensor xs = prepare(tokens.contiguous(), nonfinite_scores(scores, batch), cfg.center, out.stats);
  const at::Tensor omega = sketch_matrix.has_value() ? sketch_matrix->to(xs.scalar_type()).contiguous()
                                                     : make_sketch(d, l, cfg.seed).to(xs.scalar_type());
  const at::Tensor xt = xs.transpose(1, 2);
  at::Tensor y = at::matmul(xs, omega);  // [B, N, l]
  for (int64_t it = 0; it < cfg.power_iters; ++it) {
    const at::Tensor q = orthonormalize(y, 1);
    const at::Tensor w = orthonormalize(at::bmm(xt, q), 1);  // [B, D, l]
    y = at::bmm(xs, w);
  }
  out.q = orthonormalize(y, 2);
  const at::Tensor z = at::bmm(xt, out.q).to(at::kDouble);  // B^T [B, D, l]
  at::Tensor gram = at::bmm(z.transpose(1, 2), z).contiguous();  // B B^T [B, l, l]
  out.lambda = at::empty({batch, l}, gram.options());
  if (want_vectors) out.vectors = at::empty({batch, l, l}, gram.options());
  double* g = gram.data_ptr<double>();
  double* lam = out.lambda.data_ptr<double>();
  double* vec = want_vectors ? out.vectors.data_ptr<double>() : nullptr;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      gram_eigh(g + b * l * l, l, lam + b * l, vec == nullptr ? nullptr : vec + b * l * l);
  });
  return out;
}

struct Budgets {
  std::vector<int64_t> k_star, budget;
  std::vector<uint8_t> saturated;
  at::Tensor sigma, energy;  // reported [B, l] / [B] float32
};

Budgets budgets_from_spectrum(const Spectrum& sp, const Config& cfg) {
  const int64_t batch = sp.lambda.size(0), l = sp.lambda.size(1);
  Budgets out;
  out.k_star.resize(batch);
  out.budget.resize(batch);
  out.saturated.resize(batch);
  out.sigma = at::empty({batch, l}, at::kFloat);
  out.energy = at::empty({batch}, at::kFloat);
  const double* lam = sp.lambda.data_ptr<double>();
  float* sig = out.sigma.data_ptr<float>();
  float* en = out.energy.data_ptr<float>();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t b = 0; b < batch; ++b) {
    const ImageStats& st = sp.stats[b];
    const double target = (cfg.energy - kEnergySlack) * st.energy;
    double cumulative = 0.0;
    int64_t first = 0;
    for (int64_t j = 0; j < l && first == 0; ++j) {
      cumulative += lam[b * l + j];
      if (cumulative >= target) first = j + 1;
    }
    const bool saturated = first == 0 && !st.flat;
    int64_t k = saturated ? cfg.max_tokens : first;
    if (st.flat) k = cfg.min_tokens;
    out.k_star[b] = k;
    out.budget[b] = st.bad ? cfg.max_tokens : std::min(std::max(k, cfg.min_tokens), cfg.max_tokens);
    out.saturated[b] = saturated || st.bad;
    for (int64_t j = 0; j < l; ++j) {
      const double s = st.flat ? 0.0 : std::sqrt(lam[b * l + j]) * st.scale;
      sig[b * l + j] = st.bad ? nan : static_cast<float>(s);
    }
    en[b] = st.bad ? nan : static_cast<float>(st.flat ? 0.0 : st.energy * st.scale * st.scale);
  }
  return out;
}

at::Tensor to_tensor_int32(const std::vector<int64_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kInt);
  std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
  return t;
}

at::Tensor to_tensor_bool(const std::vector<uint8_t>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kBool);
  bool* p = t.data_ptr<bool>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = v[i] != 0;
  return t;
}

// Selection scores [B, N] float64: the given scores, or the rank-r leverage sum_{j<r} U_ij^2 with
// U = Q W_B and r = min(k*, l); zero for flat and non-finite images.
at::Tensor selection_scores(const Spectrum& sp, const Budgets& bud, const c10::optional<at::Tensor>& scores,
                            int64_t n) {
  const int64_t batch = static_cast<int64_t>(sp.stats.size());
  at::Tensor sel;
  if (scores.has_value()) {
    sel = scores->to(at::kDouble).contiguous().clone();
  } else {
    const int64_t l = sp.q.size(2);
    const at::Tensor u = at::bmm(sp.q, sp.vectors.to(sp.q.scalar_type())).to(at::kDouble).contiguous();
    sel = at::empty({batch, n}, at::kDouble);
    const double* up = u.data_ptr<double>();
    double* out = sel.data_ptr<double>();
    at::parallel_for(0, batch * n, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / n;
        const int64_t r = std::min(bud.k_star[b], l);
        const double* row = up + k * l;
        double acc = 0.0;
        for (int64_t j = 0; j < r; ++j) acc += row[j] * row[j];
        out[k] = sp.stats[b].flat ? 0.0 : acc;
      }
    });
  }
  double* s = sel.data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b)
    if (sp.stats[b].bad) std::fill(s + b * n, s + (b + 1) * n, 0.0);
  return sel;
}

// "a ranks before b": higher score first (NaN highest, as torch.sort), ties to the lower index.
struct RanksBefore {
  const double* s;
  bool operator()(int64_t a, int64_t b) const {
    const double x = s[a], y = s[b];
    const bool nx = std::isnan(x), ny = std::isnan(y);
    if (nx || ny) return nx && ny ? a < b : nx;
    return x > y || (x == y && a < b);
  }
};

// Runs every segment of a ragged call once. A run whose work exceeds a fair share of the total
// (total / threads) cannot be balanced by image-level parallelism: it runs alone, using the threads
// inside (batched BLAS, parallel loops over its images). The others are handed out largest first
// (LPT) to a pool of threads, each running its runs single-threaded (ATen's nested parallel regions
// run inline); this keeps many small images from each paying for their own thread fan-out.
void run_segments(const std::vector<ragged::Segment>& segments, int64_t d, int64_t sketch_size,
                  const ragged::SegmentTask& run) {
  const int64_t threads = at::get_num_threads();
  if (segments.size() <= 1 || threads <= 1 || at::in_parallel_region()) {
    for (const auto& s : segments) run(s);
    return;
  }
  std::vector<double> work(segments.size());
  double total = 0.0;
  for (size_t i = 0; i < segments.size(); ++i) total += work[i] = ragged::segment_work(segments[i], d, sketch_size);
  std::vector<size_t> pool;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (work[i] * static_cast<double>(threads) > total) {
      run(segments[i]);
    } else {
      pool.push_back(i);
    }
  }
  if (pool.empty()) return;
  std::stable_sort(pool.begin(), pool.end(), [&](size_t a, size_t b) { return work[a] > work[b]; });
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(threads, static_cast<int64_t>(pool.size()));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w)
      for (size_t i = next++; i < pool.size(); i = next++) run(segments[pool[i]]);
  });
}

// The dense pipeline on checked tokens [B, N, D] with a checked configuration (see the file comment):
// budgets, and with `select` the selection and the gather. `budgets` (shares of a fixed batch total)
// replace the computed ones, each clamped to [0, M]; k* (the leverage rank) stays the image's own.
Fields dense(const at::Tensor& tokens, const c10::optional<at::Tensor>& scores, const Config& cfg,
             const c10::optional<at::Tensor>& sketch_matrix, const c10::optional<at::Tensor>& budgets, bool select) {
  const int64_t batch = tokens.size(0), n = tokens.size(1), d = tokens.size(2), m = cfg.max_tokens;
  if (batch == 0) return ragged::make_outputs(tokens, 0, cfg, select);
  const c10::optional<at::Tensor> sel_scores = select ? scores : c10::nullopt;
  const Spectrum sp = spectrum(tokens, sel_scores, cfg, sketch_matrix, /*want_vectors=*/select && !scores.has_value());
  Budgets bud = budgets_from_spectrum(sp, cfg);
  if (!select) return {to_tensor_int32(bud.budget), bud.sigma, bud.energy, to_tensor_bool(bud.saturated)};
  if (budgets.has_value()) {
    const at::Tensor given = budgets->to(at::kLong).contiguous();
    const int64_t* g = given.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) bud.budget[b] = std::min(std::max(g[b], int64_t{0}), m);
  }
  const at::Tensor sel = selection_scores(sp, bud, sel_scores, n);

  const at::Tensor x = tokens.contiguous();
  at::Tensor kept = at::empty({batch, m, d}, x.options());
  at::Tensor indices = at::empty({batch, m}, at::kLong);
  at::Tensor mask = at::empty({batch, m}, at::kBool);
  const size_t row_bytes = static_cast<size_t>(d) * x.element_size();
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(kept.data_ptr());
  int64_t* idx_out = indices.data_ptr<int64_t>();
  bool* mask_out = mask.data_ptr<bool>();
  const double* s = sel.data_ptr<double>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(n);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t budget = bud.budget[b];
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + budget, order.end(), RanksBefore{s + b * n});
      std::sort(order.begin(), order.begin() + budget);
      for (int64_t p = 0; p < m; ++p) {
        const bool keep = p < budget;
        idx_out[b * m + p] = keep ? order[p] : -1;
        mask_out[b * m + p] = keep;
        char* row = dst + (b * m + p) * row_bytes;
        if (keep) {
          std::memcpy(row, src + (b * n + order[p]) * row_bytes, row_bytes);
        } else {
          std::memset(row, 0, row_bytes);  // all-zero bytes are +0.0 in every float dtype
        }
      }
    }
  });
  return {kept, indices, to_tensor_int32(bud.budget), mask, bud.sigma, bud.energy, to_tensor_bool(bud.saturated)};
}

}  // namespace

at::Tensor gaussian_sketch(int64_t num_features, int64_t sketch_size, uint64_t seed) {
  check_sketch_size(num_features, sketch_size);
  return make_sketch(num_features, sketch_size, seed);
}

Fields run(const Request& r) {
  check_request(r, c10::DeviceType::CPU);
  c10::NoGradGuard no_grad;
  const Fp32MatmulGuard ieee_fp32_matmuls;  // independent of the caller's TF32 / bf16 settings
  if (!r.cu_seqlens.has_value()) return dense(r.tokens, r.scores, r.cfg, r.sketch, r.budgets, r.select);
  // Ragged: the values of cu_seqlens are host memory (no cost) and always checked. One [D, L] sketch
  // for the whole call: image i takes its first l_i columns, which are the sketch of [D, l_i]
  // (element (i, j) depends on j * D + i only), so nothing is generated per image.
  const std::vector<int64_t> bounds = image_bounds(*r.cu_seqlens, r.tokens.size(0));
  const int64_t d = r.tokens.size(1);
  const at::Tensor omega = r.sketch.has_value() ? *r.sketch : make_sketch(d, r.cfg.sketch_size, r.cfg.seed);
  // Grad mode, inference mode and the rest of the thread-local state go with each run to the worker
  // threads: the outputs made here are inference tensors under torch.inference_mode(), and a worker
  // outside that mode could not copy into them.
  const at::ThreadLocalState caller_state;
  const auto schedule = [&](const std::vector<ragged::Segment>& segments, const ragged::SegmentTask& task) {
    run_segments(segments, d, r.cfg.sketch_size, [&](const ragged::Segment& s) {
      const at::ThreadLocalStateGuard same_state_as_the_caller(caller_state);
      task(s);
    });
  };
  return ragged::run(r, bounds, omega, dense, schedule);
}

}  // namespace cpu
}  // namespace eadaprune
