// Argument checks at the C++ boundary, shared by the CPU and CUDA extensions.
//
// The wording follows eadaprune_kernels/_validation.py (argument name first, then what was expected
// and what was given); TORCH_CHECK_TYPE raises TypeError and TORCH_CHECK_VALUE ValueError in Python,
// the same types the Python checks raise. Only metadata is read: nothing synchronises with a device.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace eadaprune {

// Offsets of the generated sketch are int32.
constexpr int64_t kMaxSketchElements = 2147483647LL;

// The resolved per-call configuration (PipelineConfig without the tensors).
struct Config {
  double energy;
  bool center;
  int64_t sketch_size;  // resolved l = min(sketch_size, N, D)
  int64_t power_iters;
  int64_t min_tokens;
  int64_t max_tokens;
  uint64_t seed;
};

inline std::string describe(const at::Tensor& t) {
  std::ostringstream os;
  os << "tensor of shape (";
  for (int64_t i = 0; i < t.dim(); ++i) os << (i ? ", " : "") << t.size(i) << (t.dim() == 1 ? "," : "");
  os << "), dtype " << t.scalar_type() << ", device " << t.device();
  return os.str();
}

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

inline void check_tokens(const at::Tensor& tokens, c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(is_float_dtype(tokens.scalar_type()),
                   "tokens: expected dtype float16, bfloat16, float32 or float64, got ", tokens.scalar_type());
  TORCH_CHECK_VALUE(tokens.dim() == 3, "tokens: expected rank 3 [B, N, D], got ", describe(tokens));
  TORCH_CHECK_VALUE(tokens.size(1) >= 1 && tokens.size(2) >= 1,
                    "tokens: expected N >= 1 tokens of D >= 1 features, got ", describe(tokens));
  TORCH_CHECK_VALUE(tokens.device().type() == device_type, "tokens: expected a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " tensor, got ", describe(tokens));
}

inline void check_scores(const c10::optional<at::Tensor>& scores, const at::Tensor& tokens) {
  if (!scores.has_value()) return;
  const at::Tensor& s = *scores;
  TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "scores: expected a floating dtype, got ", s.scalar_type());
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == tokens.size(0) && s.size(1) == tokens.size(1),
                    "scores: expected shape (", tokens.size(0), ", ", tokens.size(1),
                    ") (tokens without D), got ", describe(s));
  TORCH_CHECK_VALUE(s.device() == tokens.device(), "scores: expected device ", tokens.device(),
                    " (that of tokens), got ", s.device());
}

// Optional budgets that replace the computed ones (adaptive_prune(..., total_budget=T)): [B] integers on
// the device of tokens, each in [min_tokens, max_tokens] (values are checked only for CPU tensors, where
// reading them costs no synchronisation; the Python layer produces them with allocate_budgets).
inline void check_budgets(const c10::optional<at::Tensor>& budgets, const at::Tensor& tokens, int64_t min_tokens,
                          int64_t max_tokens) {
  if (!budgets.has_value()) return;
  const at::Tensor& b = *budgets;
  TORCH_CHECK_TYPE(b.scalar_type() == at::kInt || b.scalar_type() == at::kLong,
                   "budgets: expected dtype int32 or int64, got ", b.scalar_type());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == tokens.size(0), "budgets: expected shape (", tokens.size(0),
                    ",) (one per image), got ", describe(b));
  TORCH_CHECK_VALUE(b.device() == tokens.device(), "budgets: expected device ", tokens.device(),
                    " (that of tokens), got ", b.device());
  if (b.device().is_cpu() && b.numel() > 0) {
    const at::Tensor v = b.to(at::kLong);
    const int64_t lo = v.min().item<int64_t>(), hi = v.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= min_tokens && hi <= max_tokens, "budgets: expected values in [", min_tokens, ", ",
                      max_tokens, "], got values in [", lo, ", ", hi, "]");
  }
}

// The range checks of the scalar arguments, shared by make_config and make_ragged_config.
inline void check_scalars(double energy, int64_t sketch_size, int64_t power_iters, int64_t min_tokens,
                          int64_t seed) {
  TORCH_CHECK_VALUE(energy > 0.0 && energy <= 1.0, "energy: expected a float in (0, 1], got ", energy);
  TORCH_CHECK_VALUE(sketch_size >= 1, "sketch_size: expected an int >= 1, got ", sketch_size);
  TORCH_CHECK_VALUE(power_iters >= 0, "power_iters: expected an int >= 0, got ", power_iters);
  TORCH_CHECK_VALUE(min_tokens >= 1, "min_tokens: expected an int >= 1, got ", min_tokens);
  TORCH_CHECK_VALUE(seed >= 0, "seed: expected an int in [0, 2**63 - 1], got ", seed);
}

// The checks that dense and ragged configurations share, after l and the resolved max_tokens m:
// min_tokens against m and the sketch (given: dtype, shape (D, l), device; generated: int32 offsets).
// ``sketch_shape`` completes the expected-shape message, e.g. ") = (D, min(sketch_size, N, D))".
inline Config finish_config(const at::Tensor& tokens, double energy, bool center, int64_t d, int64_t l,
                            int64_t power_iters, int64_t min_tokens, int64_t m, int64_t seed,
                            const c10::optional<at::Tensor>& sketch_matrix, const char* sketch_shape) {
  TORCH_CHECK_VALUE(min_tokens <= m, "min_tokens: expected at most max_tokens = ", m, ", got ", min_tokens);
  if (sketch_matrix.has_value()) {
    const at::Tensor& s = *sketch_matrix;
    TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "sketch_matrix: expected a floating dtype, got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == d && s.size(1) == l, "sketch_matrix: expected shape (", d,
                      ", ", l, sketch_shape, ", got ", describe(s));
    TORCH_CHECK_VALUE(s.device() == tokens.device(), "sketch_matrix: expected device ", tokens.device(),
                      " (that of tokens), got ", s.device());
  } else {
    TORCH_CHECK_VALUE(d * l <= kMaxSketchElements, "sketch_size: D * l must be below 2**31 for the generated ",
                      "sketch, got D=", d, ", l=", l, "; pass a smaller sketch_size or an explicit sketch_matrix");
  }
  return Config{energy, center, l, power_iters, min_tokens, m, static_cast<uint64_t>(seed)};
}

// Checks the scalars and the optional sketch against tokens (already checked) and resolves l and the
// default max_tokens, as make_config does.
inline Config make_config(const at::Tensor& tokens, double energy, bool center, int64_t sketch_size,
                          int64_t power_iters, int64_t min_tokens, c10::optional<int64_t> max_tokens,
                          int64_t seed, const c10::optional<at::Tensor>& sketch_matrix) {
  const int64_t n = tokens.size(1), d = tokens.size(2);
  check_scalars(energy, sketch_size, power_iters, min_tokens, seed);
  const int64_t l = std::min({sketch_size, n, d});
  int64_t m = l;
  if (max_tokens.has_value()) {
    m = *max_tokens;
    TORCH_CHECK_VALUE(m >= 1, "max_tokens: expected an int >= 1, got ", m);
    TORCH_CHECK_VALUE(m <= n, "max_tokens: expected at most N = ", n, " (tokens per image), got ", m);
  }
  return finish_config(tokens, energy, center, d, l, power_iters, min_tokens, m, seed, sketch_matrix,
                       ") = (D, min(sketch_size, N, D))");
}

// ---- ragged input: packed tokens [T, D] with cu_seqlens [B + 1] ------------------------------------
// The same checks and wording as _validation.check_ragged / check_bounds_values / check_ragged_scores.

inline void check_ragged(const at::Tensor& tokens, const at::Tensor& cu_seqlens, c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(is_float_dtype(tokens.scalar_type()),
                   "tokens: expected dtype float16, bfloat16, float32 or float64, got ", tokens.scalar_type());
  TORCH_CHECK_VALUE(tokens.dim() == 2, "tokens: expected packed tokens [T, D] (rank 2) with cu_seqlens, got ",
                    describe(tokens));
  TORCH_CHECK_VALUE(tokens.size(0) >= 1 && tokens.size(1) >= 1,
                    "tokens: expected T >= 1 tokens of D >= 1 features, got ", describe(tokens));
  TORCH_CHECK_VALUE(tokens.device().type() == device_type, "tokens: expected a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " tensor, got ", describe(tokens));
  TORCH_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong,
                   "cu_seqlens: expected dtype int32 or int64, got ", cu_seqlens.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2,
                    "cu_seqlens: expected a 1-D tensor [B + 1] with B >= 1 (image b is rows cu_seqlens[b]:"
                    "cu_seqlens[b + 1]), got ", describe(cu_seqlens));
  TORCH_CHECK_VALUE(cu_seqlens.device() == tokens.device(), "cu_seqlens: expected device ", tokens.device(),
                    " (that of tokens), got ", cu_seqlens.device());
}

// The value checks of cu_seqlens on host integers: starts at 0, ends at T, strictly increasing.
inline void check_bounds_values(const std::vector<int64_t>& bounds, int64_t total_tokens) {
  TORCH_CHECK_VALUE(bounds[0] == 0, "cu_seqlens: expected cu_seqlens[0] = 0, got ", bounds[0]);
  for (size_t b = 0; b + 1 < bounds.size(); ++b) {
    TORCH_CHECK_VALUE(bounds[b + 1] != bounds[b], "cu_seqlens: image ", b, " is empty (cu_seqlens[", b,
                      "] = cu_seqlens[", b + 1, "] = ", bounds[b], "); every image needs at least one token");
    TORCH_CHECK_VALUE(bounds[b + 1] > bounds[b], "cu_seqlens: expected strictly increasing values, got cu_seqlens[",
                      b, "] = ", bounds[b], " > cu_seqlens[", b + 1, "] = ", bounds[b + 1]);
  }
  TORCH_CHECK_VALUE(bounds.back() == total_tokens, "cu_seqlens: expected cu_seqlens[-1] = ", total_tokens,
                    " (the total token count T), got ", bounds.back());
}

// cu_seqlens as checked host integers. For a CPU tensor this reads host memory; for a GPU tensor it is
// a device-to-host copy, i.e. one host synchronisation (the caller documents it).
inline std::vector<int64_t> image_bounds(const at::Tensor& cu_seqlens, int64_t total_tokens) {
  const at::Tensor host = cu_seqlens.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = host.data_ptr<int64_t>();
  std::vector<int64_t> bounds(p, p + host.numel());
  check_bounds_values(bounds, total_tokens);
  return bounds;
}

inline void check_ragged_scores(const c10::optional<at::Tensor>& scores, const at::Tensor& tokens) {
  if (!scores.has_value()) return;
  const at::Tensor& s = *scores;
  TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "scores: expected a floating dtype, got ", s.scalar_type());
  TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == tokens.size(0), "scores: expected shape (", tokens.size(0),
                    ",) (packed like tokens), got ", describe(s));
  TORCH_CHECK_VALUE(s.device() == tokens.device(), "scores: expected device ", tokens.device(),
                    " (that of tokens), got ", s.device());
}

// The batch-wide widths of a ragged call: sketch_size = L = min(sketch_size, D), max_tokens = M (default
// L, not checked against any N_i); image i uses l_i = min(L, N_i), max_i = min(M, N_i),
// min_i = min(min_tokens, max_i) (see ragged_image_config).
inline Config make_ragged_config(const at::Tensor& tokens, double energy, bool center, int64_t sketch_size,
                                 int64_t power_iters, int64_t min_tokens, c10::optional<int64_t> max_tokens,
                                 int64_t seed, const c10::optional<at::Tensor>& sketch_matrix) {
  const int64_t d = tokens.size(1);
  check_scalars(energy, sketch_size, power_iters, min_tokens, seed);
  const int64_t l = std::min(sketch_size, d);
  int64_t m = l;
  if (max_tokens.has_value()) {
    m = *max_tokens;
    TORCH_CHECK_VALUE(m >= 1, "max_tokens: expected an int >= 1, got ", m);
  }
  return finish_config(tokens, energy, center, d, l, power_iters, min_tokens, m, seed, sketch_matrix,
                       ") = (D, min(sketch_size, D)) for ragged input");
}

// Image i's own configuration inside a ragged call of batch-wide widths cfg (reference.image_config).
inline Config ragged_image_config(const Config& cfg, int64_t n) {
  Config one = cfg;
  one.sketch_size = std::min(cfg.sketch_size, n);
  one.max_tokens = std::min(cfg.max_tokens, n);
  one.min_tokens = std::min(cfg.min_tokens, one.max_tokens);
  return one;
}

// Budgets replacing the computed ones in a ragged call: [B] integers on the tokens' device, image i's in
// [min_i, max_i] (values checked when they are CPU data, as check_budgets).
inline void check_ragged_budgets(const c10::optional<at::Tensor>& budgets, const at::Tensor& tokens,
                                 const std::vector<int64_t>& bounds, const Config& cfg) {
  if (!budgets.has_value()) return;
  const at::Tensor& b = *budgets;
  const int64_t batch = static_cast<int64_t>(bounds.size()) - 1;
  TORCH_CHECK_TYPE(b.scalar_type() == at::kInt || b.scalar_type() == at::kLong,
                   "budgets: expected dtype int32 or int64, got ", b.scalar_type());
  TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == batch, "budgets: expected shape (", batch,
                    ",) (one per image), got ", describe(b));
  TORCH_CHECK_VALUE(b.device() == tokens.device(), "budgets: expected device ", tokens.device(),
                    " (that of tokens), got ", b.device());
  if (!b.device().is_cpu()) return;
  const at::Tensor v = b.to(at::kLong).contiguous();
  const int64_t* p = v.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch; ++i) {
    const Config one = ragged_image_config(cfg, bounds[i + 1] - bounds[i]);
    TORCH_CHECK_VALUE(p[i] >= one.min_tokens && p[i] <= one.max_tokens, "budgets: expected image ", i,
                      "'s budget in [min_i, max_i] = [", one.min_tokens, ", ", one.max_tokens, "], got ", p[i]);
  }
}

}  // namespace eadaprune
