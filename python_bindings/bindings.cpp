// pybind11 bindings of the native backends: built twice by setup.py, once as eadaprune_kernels._C
// (CPU) and, with EADAPRUNE_WITH_CUDA defined, as eadaprune_kernels._C_cuda.
//
// Python objects are converted here with the type checks of eadaprune_kernels/_validation.py (same
// wording, TypeError for a wrong type); the value checks live in csrc/common/checks.h (ValueError),
// so the extension functions are safe to call directly.
#include <torch/extension.h>
#include <torch/csrc/autograd/python_variable.h>

#include <climits>
#include <string>

#ifdef EADAPRUNE_WITH_CUDA
#include "../csrc/cuda/pipeline_cuda.h"
namespace impl = eadaprune::cuda;
#else
#include "../csrc/cpu/pipeline_cpu.h"
namespace impl = eadaprune::cpu;
#endif

namespace py = pybind11;

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

std::string py_repr(py::handle h) { return py::repr(h); }

bool is_instance_of(py::handle h, const char* module, const char* cls) {
  return py::isinstance(h, py::module_::import(module).attr(cls));
}

at::Tensor tensor_arg(const char* name, py::handle h, const char* expected) {
  TORCH_CHECK_TYPE(THPVariable_Check(h.ptr()), name, ": expected ", expected, ", got ", type_name(h));
  return THPVariable_Unpack(h.ptr());
}

c10::optional<at::Tensor> optional_tensor_arg(const char* name, py::handle h, const char* expected) {
  if (h.is_none()) return c10::nullopt;
  return tensor_arg(name, h, expected);
}

// _validation._int_arg's type rule: an Integral that is not a bool. Values beyond int64 are
// rejected here; the range checks of each argument are in checks.h.
int64_t int_arg(const char* name, py::handle h, const char* range = nullptr) {
  TORCH_CHECK_TYPE(!PyBool_Check(h.ptr()) && is_instance_of(h, "numbers", "Integral"), name,
                   ": expected an int, got ", type_name(h), " ", py_repr(h));
  py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
  if (!value) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow < 0) return LLONG_MIN;  // fails the lower-bound check with the argument's message
  TORCH_CHECK_VALUE(overflow == 0, name, ": expected an int ", range != nullptr ? range : "below 2**63", ", got ",
                    py_repr(h));
  return static_cast<int64_t>(v);
}

c10::optional<int64_t> optional_int_arg(const char* name, py::handle h) {
  if (h.is_none()) return c10::nullopt;
  return int_arg(name, h);
}

double energy_arg(py::handle h) {
  TORCH_CHECK_TYPE(!PyBool_Check(h.ptr()) && is_instance_of(h, "numbers", "Real"),
                   "energy: expected a float in (0, 1], got ", type_name(h), " ", py_repr(h));
  return py::float_(py::reinterpret_borrow<py::object>(h)).cast<double>();
}

bool bool_arg(const char* name, py::handle h) {
  TORCH_CHECK_TYPE(PyBool_Check(h.ptr()), name, ": expected a bool, got ", type_name(h), " ", py_repr(h));
  return h.ptr() == Py_True;
}

constexpr const char* kTokens = "a torch.Tensor [B, N, D]";
constexpr const char* kScores = "a torch.Tensor or None";
constexpr const char* kSketch = "a torch.Tensor [D, l] or None";
constexpr const char* kBudgets = "a torch.Tensor [B] or None";
constexpr const char* kSeedRange = "in [0, 2**63 - 1]";

// The scalar arguments shared by every pipeline entry point, checked in the order of the Python API.
struct Scalars {
  double energy;
  bool center;
  int64_t sketch_size, power_iters, min_tokens;
  c10::optional<int64_t> max_tokens;
  int64_t seed;
};

Scalars scalar_args(py::handle energy, py::handle center, py::handle sketch_size, py::handle power_iters,
                    py::handle min_tokens, py::handle max_tokens, py::handle seed) {
  Scalars a;
  a.energy = energy_arg(energy);
  a.center = bool_arg("center", center);
  a.sketch_size = int_arg("sketch_size", sketch_size);
  a.power_iters = int_arg("power_iters", power_iters);
  a.min_tokens = int_arg("min_tokens", min_tokens);
  a.max_tokens = optional_int_arg("max_tokens", max_tokens);
  a.seed = int_arg("seed", seed, kSeedRange);
  return a;
}

py::tuple adaptive_prune(py::handle tokens, py::handle scores, py::handle energy, py::handle center,
                         py::handle sketch_size, py::handle power_iters, py::handle min_tokens,
                         py::handle max_tokens, py::handle seed, py::handle sketch_matrix, py::handle budgets) {
  const at::Tensor t = tensor_arg("tokens", tokens, kTokens);
  const auto s = optional_tensor_arg("scores", scores, kScores);
  const Scalars a = scalar_args(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed);
  const auto om = optional_tensor_arg("sketch_matrix", sketch_matrix, kSketch);
  const auto bu = optional_tensor_arg("budgets", budgets, kBudgets);
  impl::PruneOutputs out;
  {
    py::gil_scoped_release no_gil;
    out = impl::adaptive_prune(t, s, a.energy, a.center, a.sketch_size, a.power_iters, a.min_tokens,
                               a.max_tokens, a.seed, om, bu);
  }
  return py::cast(out);
}

py::tuple spectral_budget(py::handle tokens, py::handle energy, py::handle center, py::handle sketch_size,
                          py::handle power_iters, py::handle min_tokens, py::handle max_tokens, py::handle seed,
                          py::handle sketch_matrix) {
  const at::Tensor t = tensor_arg("tokens", tokens, kTokens);
  const Scalars a = scalar_args(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed);
  const auto om = optional_tensor_arg("sketch_matrix", sketch_matrix, kSketch);
  impl::BudgetOutputs out;
  {
    py::gil_scoped_release no_gil;
    out = impl::spectral_budget(t, a.energy, a.center, a.sketch_size, a.power_iters, a.min_tokens, a.max_tokens,
                                a.seed, om);
  }
  return py::cast(out);
}

constexpr const char* kPackedTokens = "packed tokens as a torch.Tensor [T, D] with cu_seqlens";
constexpr const char* kCuSeqlens = "a torch.Tensor [B + 1] of int32 or int64";
constexpr const char* kPackedScores = "a torch.Tensor [T] (packed like tokens) or None";
constexpr const char* kRaggedSketch = "a torch.Tensor [D, min(sketch_size, D)] or None";

py::tuple adaptive_prune_ragged(py::handle tokens, py::handle cu_seqlens, py::handle scores, py::handle energy,
                                py::handle center, py::handle sketch_size, py::handle power_iters,
                                py::handle min_tokens, py::handle max_tokens, py::handle seed,
                                py::handle sketch_matrix, py::handle budgets) {
  const at::Tensor t = tensor_arg("tokens", tokens, kPackedTokens);
  const at::Tensor cu = tensor_arg("cu_seqlens", cu_seqlens, kCuSeqlens);
  const auto s = optional_tensor_arg("scores", scores, kPackedScores);
  const Scalars a = scalar_args(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed);
  const auto om = optional_tensor_arg("sketch_matrix", sketch_matrix, kRaggedSketch);
  const auto bu = optional_tensor_arg("budgets", budgets, kBudgets);
  impl::PruneOutputs out;
  {
    py::gil_scoped_release no_gil;
    out = impl::adaptive_prune_ragged(t, cu, s, a.energy, a.center, a.sketch_size, a.power_iters,
                                      a.min_tokens, a.max_tokens, a.seed, om, bu);
  }
  return py::cast(out);
}

py::tuple spectral_budget_ragged(py::handle tokens, py::handle cu_seqlens, py::handle energy, py::handle center,
                                 py::handle sketch_size, py::handle power_iters, py::handle min_tokens,
                                 py::handle max_tokens, py::handle seed, py::handle sketch_matrix) {
  const at::Tensor t = tensor_arg("tokens", tokens, kPackedTokens);
  const at::Tensor cu = tensor_arg("cu_seqlens", cu_seqlens, kCuSeqlens);
  const Scalars a = scalar_args(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed);
  const auto om = optional_tensor_arg("sketch_matrix", sketch_matrix, kRaggedSketch);
  impl::BudgetOutputs out;
  {
    py::gil_scoped_release no_gil;
    out = impl::spectral_budget_ragged(t, cu, a.energy, a.center, a.sketch_size, a.power_iters, a.min_tokens,
                                       a.max_tokens, a.seed, om);
  }
  return py::cast(out);
}

at::Tensor gaussian_sketch(py::handle num_features, py::handle sketch_size, py::handle seed) {
  const int64_t d = int_arg("num_features", num_features);
  const int64_t l = int_arg("sketch_size", sketch_size);
  const int64_t sd = int_arg("seed", seed, kSeedRange);
  py::gil_scoped_release no_gil;
  return impl::gaussian_sketch(d, l, sd);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native E-AdaPrune pipeline (see eadaprune_kernels/reference.py for the semantics)";
  m.def("adaptive_prune", &adaptive_prune, py::arg("tokens"), py::arg("scores"), py::arg("energy"),
        py::arg("center"), py::arg("sketch_size"), py::arg("power_iters"), py::arg("min_tokens"),
        py::arg("max_tokens"), py::arg("seed"), py::arg("sketch_matrix"), py::arg("budgets") = py::none(),
        "adaptive_prune(tokens [B, N, D], scores [B, N] or None, ..., budgets [B] or None) -> (tokens, indices, "
        "lengths, mask, "
        "singular_values, total_energy, saturated)");
  m.def("spectral_budget", &spectral_budget, py::arg("tokens"), py::arg("energy"), py::arg("center"),
        py::arg("sketch_size"), py::arg("power_iters"), py::arg("min_tokens"), py::arg("max_tokens"),
        py::arg("seed"), py::arg("sketch_matrix"),
        "spectral_budget(tokens [B, N, D], ...) -> (budgets, singular_values, total_energy, saturated)");
  m.def("adaptive_prune_ragged", &adaptive_prune_ragged, py::arg("tokens"), py::arg("cu_seqlens"), py::arg("scores"),
        py::arg("energy"), py::arg("center"), py::arg("sketch_size"), py::arg("power_iters"), py::arg("min_tokens"),
        py::arg("max_tokens"), py::arg("seed"), py::arg("sketch_matrix"), py::arg("budgets") = py::none(),
        "adaptive_prune_ragged(tokens [T, D], cu_seqlens [B + 1], scores [T] or None, ..., budgets [B] or None) -> "
        "(tokens [B, M, D], indices [B, M] (relative to each image), lengths, mask, singular_values [B, L], "
        "total_energy, saturated)");
  m.def("spectral_budget_ragged", &spectral_budget_ragged, py::arg("tokens"), py::arg("cu_seqlens"),
        py::arg("energy"), py::arg("center"), py::arg("sketch_size"), py::arg("power_iters"), py::arg("min_tokens"),
        py::arg("max_tokens"), py::arg("seed"), py::arg("sketch_matrix"),
        "spectral_budget_ragged(tokens [T, D], cu_seqlens [B + 1], ...) -> (budgets, singular_values [B, L], "
        "total_energy, saturated)");
  m.def("gaussian_sketch", &gaussian_sketch, py::arg("num_features"), py::arg("sketch_size"), py::arg("seed"),
        "Omega [D, l] float32 (on the current device for the CUDA module): element (i, j) = tl.randn(seed, j*D + i)");
}
