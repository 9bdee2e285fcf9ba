// Fp32MatmulGuard: the fp32 matrix products of one pipeline call run in IEEE fp32, whatever the
// process-wide settings the caller made (torch.set_float32_matmul_precision("high" / "medium"),
// torch.backends.cuda.matmul.allow_tf32 / fp32_precision, torch.backends.mkldnn.matmul.fp32_precision).
//
// Vision-language model code often turns those on. Without the guard, cuBLAS would run the
// pipeline's fp32 GEMMs in TF32 (operands truncated to 10 mantissa bits) and oneDNN on the CPU in
// bf16 (seen on this project's development CPU: the `cpu` backend's singular values moved by 1.8e-3
// of sigma_1 under "medium"), and budgets would depend on a setting unrelated to the call.
//
// How: at::NoTF32Guard (thread-local) turns cuBLAS TF32 off for the calling thread; oneDNN's and
// cuBLAS's fp32 matmul precisions are process-wide entries of at::Context, set to IEEE while at least
// one guarded call runs and restored when the last one ends (a counter under a mutex, so concurrent
// and nested calls are safe). While a guarded call runs, fp32 matmuls of OTHER threads also run in
// IEEE fp32 (more accurate, possibly slower): ATen has no thread-local switch for oneDNN.
#pragma once

#include <ATen/Context.h>

#include <mutex>

namespace eadaprune {

// setup.py defines EADAPRUNE_TORCH_MINOR (the minor version of the torch 2.x built against): the
// per-backend float32 precisions (at::Float32Backend / Float32Precision) exist from torch 2.9 on;
// older releases have the single legacy float32_matmul_precision, which then plays their role.
#if !defined(EADAPRUNE_TORCH_MINOR) || EADAPRUNE_TORCH_MINOR >= 9
#define EADAPRUNE_PER_BACKEND_FP32_PRECISION 1
#else
#define EADAPRUNE_PER_BACKEND_FP32_PRECISION 0
#endif

class Fp32MatmulGuard {
 public:
  Fp32MatmulGuard() {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (state().active++ == 0) state().save_and_force_ieee();
  }
  ~Fp32MatmulGuard() {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (--state().active == 0) state().restore();
  }
  Fp32MatmulGuard(const Fp32MatmulGuard&) = delete;
  Fp32MatmulGuard& operator=(const Fp32MatmulGuard&) = delete;

 private:
  struct State {
    std::mutex mutex;
    int active = 0;
#if EADAPRUNE_PER_BACKEND_FP32_PRECISION
    at::Float32Precision saved_mkldnn = at::Float32Precision::NONE;
    at::Float32Precision saved_cuda = at::Float32Precision::NONE;
    void save_and_force_ieee() {
      auto& ctx = at::globalContext();
      saved_mkldnn = ctx.float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
      saved_cuda = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
      ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::IEEE);
    }
    void restore() {
      auto& ctx = at::globalContext();
      ctx.setFloat32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL, saved_mkldnn);
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, saved_cuda);
    }
#else
    at::Float32MatmulPrecision saved = at::Float32MatmulPrecision::HIGHEST;
    void save_and_force_ieee() {
      saved = at::globalContext().float32MatmulPrecision();
      at::globalContext().setFloat32MatmulPrecision(at::Float32MatmulPrecision::HIGHEST);
    }
    void restore() { at::globalContext().setFloat32MatmulPrecision(saved); }
#endif
  };
  static State& state() {
    static State s;
    return s;
  }
  at::NoTF32Guard no_tf32_;
};

}  // namespace eadaprune
