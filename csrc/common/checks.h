// The checks at the C++ boundary: what a direct caller of an extension needs so that no memory is
// read or written out of bounds (dtypes, ranks, shapes, devices; l and M against the shapes; the
// values of cu_seqlens, which drive the slicing). The arguments' semantics (energy in (0, 1],
// min_tokens >= 1, seed range, ...) are checked once, in Python (eadaprune_kernels/contract.py and
// inputs.py), before any call; a direct caller passes a resolved, valid Config (pipeline.h).
//
// Wording as the Python checks: the argument first, then what was expected and what was given;
// TORCH_CHECK_TYPE raises TypeError and TORCH_CHECK_VALUE ValueError in Python.
#pragma once

#include <ATen/ATen.h>

#include <sstream>
#include <string>
#include <vector>

#include "numerics.h"
#include "pipeline.h"

namespace eadaprune {

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

inline bool is_index_dtype(at::ScalarType s) { return s == at::kInt || s == at::kLong; }

inline void check_same_device(const char* name, const at::Tensor& t, const at::Tensor& tokens) {
  TORCH_CHECK_VALUE(t.device() == tokens.device(), name, ": expected device ", tokens.device(),
                    " (that of tokens), got ", t.device());
}

inline void check_request(const Request& r, c10::DeviceType device_type) {
  const at::Tensor& x = r.tokens;
  const bool ragged = r.cu_seqlens.has_value();
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), "tokens: expected dtype float16, bfloat16, float32 or float64, got ",
                   x.scalar_type());
  if (ragged) {
    TORCH_CHECK_VALUE(x.dim() == 2, "tokens: expected packed tokens [T, D] (rank 2) with cu_seqlens, got ", describe(x));
    TORCH_CHECK_VALUE(x.size(0) >= 1 && x.size(1) >= 1, "tokens: expected T >= 1 tokens of D >= 1 features, got ",
                      describe(x));
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, "tokens: expected rank 3 [B, N, D], got ", describe(x));
    TORCH_CHECK_VALUE(x.size(1) >= 1 && x.size(2) >= 1, "tokens: expected N >= 1 tokens of D >= 1 features, got ",
                      describe(x));
  }
  TORCH_CHECK_VALUE(x.device().type() == device_type, "tokens: expected a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " tensor, got ", describe(x));
  const int64_t d = x.size(-1);
  int64_t batch = x.size(0);
  if (ragged) {
    const at::Tensor& cu = *r.cu_seqlens;
    TORCH_CHECK_TYPE(is_index_dtype(cu.scalar_type()), "cu_seqlens: expected dtype int32 or int64, got ",
                     cu.scalar_type());
    TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 2,
                      "cu_seqlens: expected a 1-D tensor [B + 1] with B >= 1 (image b is rows cu_seqlens[b]:"
                      "cu_seqlens[b + 1]), got ", describe(cu));
    check_same_device("cu_seqlens", cu, x);
    batch = cu.size(0) - 1;
  }
  if (r.scores.has_value()) {
    const at::Tensor& s = *r.scores;
    TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "scores: expected a floating dtype, got ", s.scalar_type());
    if (ragged) {
      TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == x.size(0), "scores: expected shape (", x.size(0),
                        ",) (packed like tokens), got ", describe(s));
    } else {
      TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == x.size(0) && s.size(1) == x.size(1), "scores: expected shape (",
                        x.size(0), ", ", x.size(1), ") (tokens without D), got ", describe(s));
    }
    check_same_device("scores", s, x);
  }
  const int64_t l = r.cfg.sketch_size, top = ragged ? d : std::min(x.size(1), d);
  TORCH_CHECK_VALUE(l >= 1 && l <= top, "sketch_size: expected the resolved l = ",
                    ragged ? "min(sketch_size, D)" : "min(sketch_size, N, D)", " in [1, ", top, "], got ", l);
  TORCH_CHECK_VALUE(r.cfg.max_tokens >= 1, "max_tokens: expected an int >= 1, got ", r.cfg.max_tokens);
  if (!ragged) {
    TORCH_CHECK_VALUE(r.cfg.max_tokens <= x.size(1), "max_tokens: expected at most N = ", x.size(1),
                      " (tokens per image), got ", r.cfg.max_tokens);
  }
  if (r.sketch.has_value()) {
    const at::Tensor& s = *r.sketch;
    TORCH_CHECK_TYPE(is_float_dtype(s.scalar_type()), "sketch_matrix: expected a floating dtype, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == d && s.size(1) == l, "sketch_matrix: expected shape (", d, ", ",
                      l, ") = ", ragged ? "(D, min(sketch_size, D)) for ragged input" : "(D, min(sketch_size, N, D))",
                      ", got ", describe(s));
    check_same_device("sketch_matrix", s, x);
  }
  if (r.budgets.has_value()) {
    const at::Tensor& b = *r.budgets;
    TORCH_CHECK_TYPE(is_index_dtype(b.scalar_type()), "budgets: expected dtype int32 or int64, got ", b.scalar_type());
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == batch, "budgets: expected shape (", batch,
                      ",) (one per image), got ", describe(b));
    check_same_device("budgets", b, x);
  }
}

// The arguments of gaussian_sketch(num_features, sketch_size, seed): the offsets j * D + i are int32.
inline void check_sketch_size(int64_t num_features, int64_t sketch_size) {
  TORCH_CHECK_VALUE(num_features >= 1, "num_features: expected a positive int, got ", num_features);
  TORCH_CHECK_VALUE(sketch_size >= 1, "sketch_size: expected a positive int, got ", sketch_size);
  TORCH_CHECK_VALUE(num_features <= kMaxSketchElements / sketch_size,
                    "num_features * sketch_size: expected at most 2**31 - 1 elements (int32 offsets), got ",
                    num_features, " * ", sketch_size);
}

// The value rule of cu_seqlens on host integers (inputs.check_bounds_values): starts at 0, ends at T,
// strictly increasing.
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

}  // namespace eadaprune
