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

// Checks the scalars and the optional sketch against tokens (already checked) and resolves l and the
// default max_tokens, as make_config does.
inline Config make_config(const at::Tensor& tokens, double energy, bool center, int64_t sketch_size,
                          int64_t power_iters, int64_t min_tokens, c10::optional<int64_t> max_tokens,
                          int64_t seed, const c10::optional<at::Tensor>& sketch_matrix) {
  const int64_t n = tokens.size(1), d = tokens.size(2);
  TORCH_CHECK_VALUE(energy > 0.0 && energy <= 1.0, "energy: expected a float in (0, 1], got ", energy);
  TORCH_CHECK_VALUE(sketch_size >= 1, "sketch_size: expected an int >= 1, got ", sketch_size);
  TORCH_CHECK_VALUE(power_iters >= 0, "power_iters: expected an int >= 0, got ", power_iters);
  TORCH_CHECK_VALUE(min_tokens >= 1, "min_tokens: expected an int >= 1, got ", min_tokens);
  TORCH_CHECK_VALUE(seed >= 0, "seed: expected an int in [0, 2**63 - 1], got ", seed);
  const int64_t l = std::min({sketch_size, n, d});
  int64_t m = l;
  if (max_tokens.has_value()) {
    m = *max_tokens;
    TORCH_CHECK_VALUE(m >= 1, "max_tokens: expected an int >= 1, got ", m);
    TORCH_CHECK_VALUE(m <= n, "max_tokens: expected at most N = ", n, " (tokens per image), got ", m);
  }
  TORCH_CHECK_VALUE(min_tokens <= m, "min_tokens: expected at most max_tokens = ", m, ", got ", min_tokens);
  if (sketch_matrix.has_value()) {
    const at::Tensor& s = *sketch_matrix;
    TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "sketch_matrix: expected a floating dtype, got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == d && s.size(1) == l, "sketch_matrix: expected shape (", d,
                      ", ", l, ") = (D, min(sketch_size, N, D)), got ", describe(s));
    TORCH_CHECK_VALUE(s.device() == tokens.device(), "sketch_matrix: expected device ", tokens.device(),
                      " (that of tokens), got ", s.device());
  } else {
    TORCH_CHECK_VALUE(d * l <= kMaxSketchElements, "sketch_size: D * l must be below 2**31 for the generated ",
                      "sketch, got D=", d, ", l=", l, "; pass a smaller sketch_size or an explicit sketch_matrix");
  }
  return Config{energy, center, l, power_iters, min_tokens, m, static_cast<uint64_t>(seed)};
}

}  // namespace eadaprune
