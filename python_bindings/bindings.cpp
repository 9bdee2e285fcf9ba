// pybind11 bindings of the native backends: built twice by setup.py, once as eadaprune_kernels._C
// (CPU) and, with EADAPRUNE_WITH_CUDA defined, as eadaprune_kernels._C_cuda.
//
// One pipeline entry point, run(), over the Request of csrc/common/pipeline.h, and gaussian_sketch().
// The Python layer (eadaprune_kernels/backends/native.py) passes checked tensors and a resolved
// configuration; for a direct caller the bindings check the Python types (TypeError naming the
// argument) and run() checks what protects memory (csrc/common/checks.h).
#include <torch/extension.h>
#include <torch/csrc/autograd/python_variable.h>

#include <climits>
#include <string>

#include "../csrc/common/pipeline.h"

#ifdef EADAPRUNE_WITH_CUDA
namespace impl = eadaprune::cuda;
#else
namespace impl = eadaprune::cpu;
#endif

namespace py = pybind11;

namespace {

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

at::Tensor tensor_arg(const char* name, py::handle h, const char* expected) {
  TORCH_CHECK_TYPE(THPVariable_Check(h.ptr()), name, ": expected ", expected, ", got ", type_name(h));
  return THPVariable_Unpack(h.ptr());
}

c10::optional<at::Tensor> optional_tensor_arg(const char* name, py::handle h, const char* expected) {
  if (h.is_none()) return c10::nullopt;
  return tensor_arg(name, h, expected);
}

// An Integral that is not a bool, within int64 (contract._int_arg's type rule).
int64_t int_arg(const char* name, py::handle h) {
  TORCH_CHECK_TYPE(!PyBool_Check(h.ptr()) && py::isinstance(h, py::module_::import("numbers").attr("Integral")), name,
                   ": expected an int, got ", type_name(h), " ", std::string(py::repr(h)));
  py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
  if (!value) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  TORCH_CHECK_VALUE(overflow == 0, name, ": expected an int in [-2**63, 2**63 - 1], got ", std::string(py::repr(h)));
  return static_cast<int64_t>(v);
}

bool bool_arg(const char* name, py::handle h) {
  TORCH_CHECK_TYPE(PyBool_Check(h.ptr()), name, ": expected a bool, got ", type_name(h), " ", std::string(py::repr(h)));
  return h.ptr() == Py_True;
}

double float_arg(const char* name, py::handle h) {
  TORCH_CHECK_TYPE(!PyBool_Check(h.ptr()) && py::isinstance(h, py::module_::import("numbers").attr("Real")), name,
                   ": expected a float, got ", type_name(h), " ", std::string(py::repr(h)));
  return py::float_(py::reinterpret_borrow<py::object>(h)).cast<double>();
}

py::list run(py::handle tokens, py::handle cu_seqlens, py::handle scores, py::handle sketch_matrix, py::handle budgets,
             py::handle energy, py::handle center, py::handle sketch_size, py::handle power_iters,
             py::handle min_tokens, py::handle max_tokens, py::handle seed, py::handle select) {
  eadaprune::Request r;
  r.tokens = tensor_arg("tokens", tokens, "a torch.Tensor [B, N, D], or [T, D] with cu_seqlens");
  r.cu_seqlens = optional_tensor_arg("cu_seqlens", cu_seqlens, "a torch.Tensor [B + 1] of int32 or int64 or None");
  r.scores = optional_tensor_arg("scores", scores, "a torch.Tensor or None");
  r.sketch = optional_tensor_arg("sketch_matrix", sketch_matrix, "a torch.Tensor [D, l] or None");
  r.budgets = optional_tensor_arg("budgets", budgets, "a torch.Tensor [B] or None");
  r.cfg.energy = float_arg("energy", energy);
  r.cfg.center = bool_arg("center", center);
  r.cfg.sketch_size = int_arg("sketch_size", sketch_size);
  r.cfg.power_iters = int_arg("power_iters", power_iters);
  r.cfg.min_tokens = int_arg("min_tokens", min_tokens);
  r.cfg.max_tokens = int_arg("max_tokens", max_tokens);
  r.cfg.seed = static_cast<uint64_t>(int_arg("seed", seed));
  r.select = bool_arg("select", select);
  eadaprune::Fields out;
  {
    py::gil_scoped_release no_gil;
    out = impl::run(r);
  }
  return py::cast(out);
}

at::Tensor gaussian_sketch(py::handle num_features, py::handle sketch_size, py::handle seed) {
  const int64_t d = int_arg("num_features", num_features);
  const int64_t l = int_arg("sketch_size", sketch_size);
  const int64_t sd = int_arg("seed", seed);
  TORCH_CHECK_VALUE(sd >= 0, "seed: expected an int in [0, 2**63 - 1], got ", sd);
  py::gil_scoped_release no_gil;
  return impl::gaussian_sketch(d, l, static_cast<uint64_t>(sd));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native E-AdaPrune pipeline (see eadaprune_kernels/backends/reference.py for the semantics)";
  m.def("run", &run, py::arg("tokens"), py::arg("cu_seqlens"), py::arg("scores"), py::arg("sketch_matrix"),
        py::arg("budgets"), py::arg("energy"), py::arg("center"), py::arg("sketch_size"), py::arg("power_iters"),
        py::arg("min_tokens"), py::arg("max_tokens"), py::arg("seed"), py::arg("select"),
        "run(tokens [B, N, D] (cu_seqlens None) or [T, D] (cu_seqlens [B + 1]), cu_seqlens, scores, "
        "sketch_matrix, budgets, energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, select) "
        "-> select: [tokens, indices, lengths, mask, singular_values, total_energy, saturated], else "
        "[budgets, singular_values, total_energy, saturated]. sketch_size and max_tokens are the RESOLVED "
        "l = min(sketch_size, N, D) (ragged: L = min(sketch_size, D)) and M (contract.make_config); only "
        "what protects memory is checked here.");
  m.def("gaussian_sketch", &gaussian_sketch, py::arg("num_features"), py::arg("sketch_size"), py::arg("seed"),
        "Omega [D, l] float32 (on the current device for the CUDA module): element (i, j) = tl.randn(seed, j*D + i)");
}
